"""Security fixtures (shared by the security workers: append new fixtures, do not rewrite).

PKI / broker fixtures:
- ``city_pki``: a fresh ``fleet.pki.CityPKI`` in a temp dir.
- ``secure_broker``: a real mosquitto with the city mTLS config of ``fleet.brokerconf`` (device
  listener + internal fleet listener, dynamic-security access list, CRL), its PKI, and helpers to
  make device / service identities (granted on the running broker through ``$CONTROL``, as the
  enrolment API does) and connected paho clients (``SecureBroker``).
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fleet.broker import BrokerConfig, MosquittoBroker
from fleet.brokerconf import BrokerSecurity, local_broker_config, pki_access_list, refresh_local_broker
from fleet.claims import ClaimStore
from fleet.dynsec import BrokerEndpoint, Changes, DynsecAdmin
from fleet.enroll import EnrollService, enroll_router, keyring_trust
from fleet.keys_cli import init_keys
from fleet.pki import CityPKI
from fleet.pki_store import IssuedCert
from hw.keystore import FileKeyStore, KeyAlgorithm


@dataclass(frozen=True)
class Identity:
    """Files of one mTLS identity (device or service)."""

    name: str
    cert: Path
    key: Path


class ConnectRefused(Exception):
    """The broker refused (or TLS failed) a test connection."""


@dataclass
class Inbox:
    """Messages a test client received, with a condition to wait on."""

    messages: list[mqtt.MQTTMessage] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def add(self, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()

    def wait_for(self, topic: str, payload: bytes, timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(
                lambda: any(m.topic == topic and m.payload == payload for m in self.messages), timeout
            )

    def payloads(self) -> list[tuple[str, bytes]]:
        with self.cond:
            return [(m.topic, bytes(m.payload)) for m in self.messages]


class SecureBroker:
    """A running mosquitto configured like the city broker, with its PKI."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pki = CityPKI.init(root / "pki")
        self._clients: list[mqtt.Client] = []
        self.fleet = self.service("fleet-ingest")  # before the access list is generated
        self.admin = self.service("fleet-admin")  # manages the access list ($CONTROL)
        self.security = BrokerSecurity(device_port=0, fleet_port=0)
        self.config: BrokerConfig = local_broker_config(self.pki, root / "files", self.security)
        self.broker = MosquittoBroker(root / "broker", self.config)

    @property
    def ca(self) -> Path:
        return self.root / "files" / "ca.pem"

    @property
    def device_port(self) -> int:
        assert self.config.tls is not None
        return self.config.tls.port

    @property
    def fleet_port(self) -> int:
        return self.config.extra_tls[0].port

    @property
    def admin_endpoint(self) -> BrokerEndpoint:
        return BrokerEndpoint("127.0.0.1", self.fleet_port, self.ca, self.admin.cert, self.admin.key)

    def grant(self, device_id: str) -> Changes:
        """Give ``device_id`` its subtree on the running broker (``BrokerAccess.grant_device``)."""
        desired = pki_access_list(self.pki, self.security, extra_devices=[device_id])
        with DynsecAdmin(self.admin_endpoint) as admin:
            return admin.converge(desired, only=[device_id])

    def device(self, device_id: str, algorithm: KeyAlgorithm = "p256") -> Identity:
        """A device certificate, granted on the running broker first (what enrolment does)."""
        folder = self.root / "ids" / device_id
        store = FileKeyStore.create(folder / "key.pem", algorithm=algorithm)
        if self.broker.proc is not None:
            self.grant(device_id)
        (folder / "cert.pem").write_bytes(self.pki.sign_device_csr(store.csr(device_id), device_id))
        return Identity(device_id, folder / "cert.pem", folder / "key.pem")

    @staticmethod
    def identity(name: str, cert: Path, key: Path) -> Identity:
        """An identity from existing files (e.g. a certificate made by another PKI)."""
        return Identity(name, cert, key)

    def service(self, name: str) -> Identity:
        folder = self.root / "ids" / name
        folder.mkdir(parents=True, exist_ok=True)
        key, cert = self.pki.issue_service_identity(name)
        (folder / "key.pem").write_bytes(key)
        (folder / "cert.pem").write_bytes(cert)
        return Identity(name, folder / "cert.pem", folder / "key.pem")

    def refresh(self) -> Changes:
        """New CRL (file + SIGHUP) and access list (file + ``$CONTROL``) from the PKI: what
        `cityedge fleet revoke --kick` does. Revoked identities are deleted, which disconnects them."""
        refresh_local_broker(self.pki, self.config, self.security)
        self.broker.reload()
        with DynsecAdmin(self.admin_endpoint) as admin:
            return admin.converge(pki_access_list(self.pki, self.security))

    def client(
        self,
        identity: Identity | None,
        *,
        fleet: bool = False,
        client_id: str | None = None,
        inbox: Inbox | None = None,
        ca: Path | None = None,
        timeout: float = 5.0,
        persistent: bool = False,
    ) -> mqtt.Client:
        """A connected MQTT v5 client (loop running); ConnectRefused when it cannot connect.
        ``persistent``: clean start off and a session that outlives the connection (as agents)."""
        cid = client_id or (identity.name if identity else "anonymous")
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        client.tls_set(
            ca_certs=str(ca or self.ca),
            certfile=str(identity.cert) if identity else None,
            keyfile=str(identity.key) if identity else None,
        )
        done = threading.Event()
        result: list[ReasonCode] = []

        def on_connect(c: mqtt.Client, u: object, flags: object, rc: ReasonCode, props: object) -> None:
            result.append(rc)
            done.set()

        def on_disconnect(c: mqtt.Client, u: object, flags: object, rc: ReasonCode, props: object) -> None:
            done.set()  # TLS refusals surface as a disconnect before any CONNACK

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        if inbox is not None:
            client.on_message = lambda c, u, m: inbox.add(m)
        try:
            port = self.fleet_port if fleet else self.device_port
            if persistent:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = 3600
                client.connect("127.0.0.1", port, keepalive=30, clean_start=False, properties=props)
            else:
                client.connect("127.0.0.1", port, keepalive=30)
        except (ssl.SSLError, OSError) as exc:
            raise ConnectRefused(f"TLS/connect failed: {exc}") from exc
        client.loop_start()
        ok = done.wait(timeout) and bool(result) and not result[0].is_failure
        if not ok:
            client.loop_stop()
            client.disconnect()
            raise ConnectRefused(f"no successful CONNACK: {result}")
        self._clients.append(client)
        return client

    @staticmethod
    def subscribe(
        client: mqtt.Client, topics: list[str], qos: int = 1, timeout: float = 5.0
    ) -> list[ReasonCode]:
        """Subscribe, wait for the SUBACK and return its reason codes (one per filter)."""
        acked = threading.Event()
        codes: list[ReasonCode] = []

        def on_subscribe(c: mqtt.Client, u: object, mid: int, rcs: list[ReasonCode], props: object) -> None:
            codes.extend(rcs)
            acked.set()

        client.on_subscribe = on_subscribe
        client.subscribe([(t, qos) for t in topics])
        assert acked.wait(timeout), f"no SUBACK for {topics}"
        return codes

    @staticmethod
    def publish(
        client: mqtt.Client, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish and (QoS 1) wait until the broker acknowledged, accepted or not."""
        info = client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(5)
        assert info.is_published(), f"no PUBACK for {topic}"

    def close(self) -> None:
        for client in self._clients:
            client.disconnect()
            client.loop_stop()
        self.broker.stop()


@pytest.fixture
def city_pki(tmp_path: Path) -> CityPKI:
    return CityPKI.init(tmp_path / "pki")


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[SecureBroker]:
    """A started city-configured mosquitto (mTLS device + fleet listeners, ACL, CRL)."""
    sb = SecureBroker(tmp_path)
    sb.broker.start()
    try:
        yield sb
    finally:
        sb.close()


@pytest.fixture
def inbox_factory() -> type[Inbox]:
    """``inbox_factory()`` makes an ``Inbox`` to pass as ``SecureBroker.client(..., inbox=...)``."""
    return Inbox


@pytest.fixture
def conn_refused() -> type[Exception]:
    """The exception ``SecureBroker.client`` raises when the broker refuses a connection."""
    return ConnectRefused


# --- enrolment (claim tokens, enrolment API over HTTPS): appended by the commands/enrolment worker ---


@dataclass
class EnrollFleet:
    """The enrolment API of a fleet, served over HTTPS by uvicorn in a thread."""

    url: str
    ca: Path
    pki: CityPKI
    claims: ClaimStore
    fleet_dir: Path
    root_key: Path

    def claim(self, role: str = "kiosk", site: str = "hn-btl", **kwargs: Any) -> str:
        token = self.claims.create(role, site, **kwargs).token
        assert token is not None
        return token


@pytest.fixture
def make_enroll_fleet(tmp_path: Path) -> Iterator[Callable[..., EnrollFleet]]:
    """``make_enroll_fleet(pki, broker_url, on_revoked=None, on_enrolling=None)`` starts an HTTPS
    enrolment API (``on_enrolling``: e.g. ``secure_broker.grant``, as production wires it)."""
    import uvicorn
    from fastapi import FastAPI

    from fleet.broker import free_port

    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def make(
        pki: CityPKI,
        broker_url: str,
        on_revoked: Callable[[list[IssuedCert]], None] | None = None,
        on_enrolling: Callable[[str], object] | None = None,
    ) -> EnrollFleet:
        root = tmp_path / f"enroll-fleet-{len(servers)}"
        root.mkdir(parents=True)
        init_keys(root / "fleet", root / "offline" / "root.pem")
        claims = ClaimStore.open(root / "fleet" / "claims.db")
        service = EnrollService(
            pki,
            claims,
            keyring_trust(root / "fleet"),
            broker_url,
            on_revoked=on_revoked,
            on_enrolling=on_enrolling,
        )
        app = FastAPI()
        app.include_router(enroll_router(service))
        key, cert = pki.issue_server_cert(["localhost", "127.0.0.1"])
        (root / "https.key").write_bytes(key)
        (root / "https.crt").write_bytes(cert)
        (root / "ca.pem").write_bytes(pki.trust_bundle_pem())
        port = free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            ssl_keyfile=str(root / "https.key"),
            ssl_certfile=str(root / "https.crt"),
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="enroll-fleet", daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "enrolment API did not start"
            time.sleep(0.02)
        servers.append((server, thread))
        return EnrollFleet(
            f"https://127.0.0.1:{port}",
            root / "ca.pem",
            pki,
            claims,
            root / "fleet",
            root / "offline" / "root.pem",
        )

    yield make
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def pki_in_the_past() -> Callable[[CityPKI, int], CityPKI]:
    """``pki_in_the_past(pki, days)``: the same PKI whose clock runs ``days`` behind (to make
    expired certificates or stale CRLs), independent of ``protocol.clock.BUILD_TIME``."""
    from datetime import datetime, timedelta, timezone

    from protocol.timefmt import utc_now

    def make(pki: CityPKI, days: int) -> CityPKI:
        return CityPKI.load(
            pki.directory,
            clock=lambda: utc_now() - timedelta(days=days),
            build_time=datetime(2020, 1, 1, tzinfo=timezone.utc),
        )

    return make
