"""Two `cityedge fleet serve` processes split one device stream over one PostgreSQL store.

The city broker as production configures it (``fleet.brokerconf``: mosquitto, mTLS device and
fleet listeners, dynamic-security access list), 200 device identities with their own
certificates, two workers configured through their environment (as a container is), sharing
``$share/fleet/...``. Every event is stored exactly once, both workers took a share, no device
can join the workers' group, and the periodic jobs run on one worker at a time and move to the
other when it stops.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from fleet_helpers import wait_for
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy import func, select, text

from fleet.auth.tokens import create_token
from fleet.broker import MosquittoBroker, free_port
from fleet.brokerconf import BrokerSecurity, local_broker_config
from fleet.db import events, gaps, make_engine
from fleet.leases import Leases
from fleet.pki import CityPKI
from hw.keystore import FileKeyStore
from protocol.timefmt import now_ts
from protocol.topics import Topics

CLI = str(Path(sys.executable).with_name("cityedge"))
T = Topics()
DEVICES = int(os.environ.get("CITYEDGE_TWO_WORKERS_DEVICES", "200"))  # larger for a one-off run
EVENTS_PER_DEVICE = int(os.environ.get("CITYEDGE_TWO_WORKERS_EVENTS", "10"))
pytestmark = [pytest.mark.postgres, pytest.mark.timeout(600)]


@dataclass(frozen=True)
class Identity:
    name: str
    cert: Path
    key: Path


@dataclass
class City:
    pki: CityPKI
    broker: MosquittoBroker
    files: Path
    fleet: Identity
    devices: list[Identity]
    thief: Identity  # a device that does not publish and tries to read what is not its own

    @property
    def device_port(self) -> int:
        assert self.broker.config.tls is not None
        return self.broker.config.tls.port

    @property
    def fleet_port(self) -> int:
        return self.broker.config.extra_tls[0].port

    def client(self, identity: Identity, *, fleet: bool = False, client_id: str | None = None) -> mqtt.Client:
        """A connected mTLS client (loop running) of ``identity``."""
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or identity.name, protocol=mqtt.MQTTv5
        )
        client.tls_set(
            ca_certs=str(self.files / "ca.pem"), certfile=str(identity.cert), keyfile=str(identity.key)
        )
        connected = threading.Event()
        client.on_connect = lambda c, u, f, rc, p: connected.set() if not rc.is_failure else None
        client.connect("127.0.0.1", self.fleet_port if fleet else self.device_port, keepalive=60)
        client.loop_start()
        assert connected.wait(30), f"{identity.name} could not connect"
        return client


def _device(pki: CityPKI, root: Path, device_id: str) -> Identity:
    folder = root / device_id
    store = FileKeyStore.create(folder / "key.pem", algorithm="p256")
    (folder / "cert.pem").write_bytes(pki.sign_device_csr(store.csr(device_id), device_id))
    return Identity(device_id, folder / "cert.pem", folder / "key.pem")


@pytest.fixture
def city(tmp_path: Path) -> Iterator[City]:
    """The city broker with 200 devices in its access list from the start (as after enrolment)."""
    pki = CityPKI.init(tmp_path / "pki")
    key, cert = pki.issue_service_identity("fleet-ingest")
    (tmp_path / "fleet-ingest").mkdir()
    fleet = Identity(
        "fleet-ingest", tmp_path / "fleet-ingest" / "cert.pem", tmp_path / "fleet-ingest" / "key.pem"
    )
    fleet.key.write_bytes(key)
    fleet.cert.write_bytes(cert)
    devices = [_device(pki, tmp_path / "ids", f"cam-hn-w{n % 10:02d}-{n:04d}") for n in range(DEVICES)]
    thief = _device(pki, tmp_path / "ids", "kiosk-hn-x-0001")
    files = tmp_path / "files"
    config = local_broker_config(pki, files, BrokerSecurity(device_port=0, fleet_port=0))
    broker = MosquittoBroker(tmp_path / "broker", config)
    broker.start()
    try:
        yield City(pki, broker, files, fleet, devices, thief)
    finally:
        broker.stop()


class Worker:
    """One `cityedge fleet serve` process configured through CITYEDGE_FLEET_* variables."""

    def __init__(self, city: City, db_url: str, worker_id: str, root: Path) -> None:
        self.id = worker_id
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}"
        self.log = root / f"{worker_id}.log"
        self.env = {
            **os.environ,
            "CITYEDGE_FLEET_BROKER": f"mqtts://127.0.0.1:{city.fleet_port}",
            "CITYEDGE_FLEET_DB": db_url,
            "CITYEDGE_FLEET_HTTP": f"127.0.0.1:{self.port}",
            "CITYEDGE_FLEET_SHARE": "true",
            "CITYEDGE_FLEET_GROUP": "fleet",
            "CITYEDGE_FLEET_WORKER_ID": worker_id,
            "CITYEDGE_FLEET_CA": str(city.files / "ca.pem"),
            "CITYEDGE_FLEET_CERT": str(city.fleet.cert),
            "CITYEDGE_FLEET_KEY": str(city.fleet.key),
            "CITYEDGE_FLEET_DATA_DIR": str(root / worker_id),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.headers: dict[str, str] = {}

    def start(self) -> Worker:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [CLI, "fleet", "serve"], stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        return self

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None and "address already in use" in self.log.read_text():
            # Another process on this machine took the free port first: take another one.
            self.port = free_port()
            self.api = f"http://127.0.0.1:{self.port}"
            self.env["CITYEDGE_FLEET_HTTP"] = f"127.0.0.1:{self.port}"
            self.log.write_text("")
            self.start()
            return False
        assert self.proc.poll() is None, self.log.read_text()
        try:
            return httpx.get(f"{self.api}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def ingest(self) -> dict[str, Any]:
        answer = httpx.get(f"{self.api}/api/stats", headers=self.headers, timeout=10)
        assert answer.status_code == 200, answer.text
        ingest: dict[str, Any] = answer.json()["ingest"]
        return ingest

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc is not None else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


@pytest.fixture
def workers(city: City, pg_cluster: Any, tmp_path: Path) -> Iterator[tuple[str, list[Worker]]]:
    url = pg_cluster.new_database()
    pair = [Worker(city, url, f"fleet-w{n}", tmp_path) for n in (1, 2)]
    try:
        for worker in pair:  # started together: the schema is created under an advisory lock
            worker.start()
        for worker in pair:
            wait_for(worker.healthy, timeout=120, what=f"{worker.id} up (log: {worker.log})")
        token = create_token(url, "viewer", "two-workers-test", "1h")
        for worker in pair:
            worker.headers = {"Authorization": f"Bearer {token}"}
        yield url, pair
    finally:
        for worker in pair:
            worker.stop()


def _publish_all(city: City, device: Identity) -> int:
    """Connect as ``device``, publish its events with QoS 1, return how many the broker acknowledged."""
    client = city.client(device)
    try:
        infos = []
        for seq in range(EVENTS_PER_DEVICE):
            body = {
                "id": str(uuid.uuid4()),
                "seq": seq,
                "ts": now_ts(),
                "device": device.name,
                "kind": "test.event",
                "data": {"n": seq},
            }
            infos.append(client.publish(T.event(device.name, "test.event"), json.dumps(body), qos=1))
        for info in infos:
            info.wait_for_publish(60)
        return sum(1 for info in infos if info.is_published())
    finally:
        client.disconnect()
        client.loop_stop()


def _subscribe(client: mqtt.Client, filters: list[str]) -> list[ReasonCode]:
    done = threading.Event()
    codes: list[ReasonCode] = []

    def on_subscribe(c: mqtt.Client, u: object, mid: int, rcs: list[ReasonCode], p: object) -> None:
        codes.extend(rcs)
        done.set()

    client.on_subscribe = on_subscribe
    client.subscribe([(f, 1) for f in filters])
    assert done.wait(30), "no SUBACK"
    return codes


def test_two_workers_split_the_stream_and_store_every_event_once(
    city: City, workers: tuple[str, list[Worker]]
) -> None:
    url, pair = workers
    thief_id = city.thief
    received: list[tuple[str, bytes]] = []
    arrived = threading.Condition()
    thief = city.client(thief_id)

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with arrived:
            received.append((msg.topic, bytes(msg.payload)))
            arrived.notify_all()

    thief.on_message = on_message
    group = [T.shared("fleet", f) for f in T.fleet_filters()]
    codes = _subscribe(thief, [*group, "$share/fleet/#", T.commands_req(thief_id.name)])
    assert all(int(c.value) >= 0x80 for c in codes[:-1]), f"a device joined the workers' group: {codes}"
    assert int(codes[-1].value) < 0x80, "the device may not even read its own commands"

    with ThreadPoolExecutor(max_workers=16) as pool:
        acked = sum(pool.map(lambda d: _publish_all(city, d), city.devices))
    total = DEVICES * EVENTS_PER_DEVICE
    assert acked == total, f"the broker acknowledged {acked} of {total} events"

    engine = make_engine(url)
    try:

        def stored() -> int:
            with engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(events)).scalar_one())

        wait_for(lambda: stored() >= total, timeout=180, what=f"{total} events stored")
        with engine.connect() as conn:
            rows, ids, devices = conn.execute(
                select(
                    func.count(),
                    func.count(func.distinct(events.c.id)),
                    func.count(func.distinct(events.c.device)),
                )
            ).one()
            open_gaps = conn.execute(
                select(func.count()).select_from(gaps).where(gaps.c.closed_at.is_(None))
            ).scalar_one()
            partitioned = conn.execute(
                text("SELECT relkind FROM pg_class WHERE relname = 'events'")
            ).scalar_one()
        assert (rows, ids, devices) == (total, total, DEVICES), "an event was lost or stored twice"
        assert open_gaps == 0, "events arriving out of order through two workers left gaps open"
        assert partitioned == "p"

        shares = [w.ingest() for w in pair]
        took = [s["received"].get("events", 0) for s in shares]
        assert all(n > 0 for n in took), f"one worker took no share: {took}"
        assert sum(took) == total, f"the workers received {took} events, {total} were sent"
        assert sum(s["events_new"] for s in shares) == total
        assert sum(s["events_duplicate"] for s in shares) == 0

        # Only the commands the fleet sends it ever reached the device that tried to join the group.
        sender = city.client(city.fleet, fleet=True, client_id="fleet-test-sender")
        sender.publish(T.commands_req(thief_id.name), b"sentinel", qos=1).wait_for_publish(30)
        with arrived:
            assert arrived.wait_for(lambda: (T.commands_req(thief_id.name), b"sentinel") in received, 30)
        assert received == [(T.commands_req(thief_id.name), b"sentinel")]
        sender.disconnect()
        thief.disconnect()

        # One worker runs the periodic jobs; when it stops, the other takes them over.
        leases = Leases(engine, "observer")
        holders = wait_for(lambda: leases.holders().get("maintenance"), timeout=60, what="maintenance lease")
        holder = next(w for w in pair if w.id == holders[0])
        other = next(w for w in pair if w is not holder)
        assert holder.stop() == 0
        wait_for(
            lambda: leases.holders()["maintenance"][0] == other.id,
            timeout=60,
            what=f"{other.id} taking the maintenance job over",
        )
        assert other.healthy()
    finally:
        engine.dispose()
