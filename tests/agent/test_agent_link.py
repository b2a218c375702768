"""The MQTT link in-process: mutual TLS, clear TLS errors, re-sending after a broker restart."""

from __future__ import annotations

import datetime as dt
import ipaddress
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import Probe
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.config import MqttSection, OutboxSection
from agent.link import Link
from agent.outbox import Outbox
from agent.sender import OutboxSender
from fleet.broker import BrokerConfig, MosquittoBroker, TlsListener, free_port
from protocol.models import EventEnvelope, decode

DEVICE = "cam-link-0001"


def _cert(
    subject: str, path: Path, issuer: tuple[ec.EllipticCurvePrivateKey, x509.Name] | None = None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Name]:
    """Write PATH.crt/.key: self-signed CA when ``issuer`` is None, else a leaf signed by it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[1] if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if subject == "localhost":
        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(issuer[0] if issuer else key, hashes.SHA256())
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return key, name


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[MosquittoBroker, Path]]:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = _cert("test city CA", pki / "ca")
    _cert("localhost", pki / "server", ca)
    _cert(DEVICE, pki / "device", ca)
    _cert("other CA", pki / "other")
    tls = TlsListener(0, pki / "ca.crt", pki / "server.crt", pki / "server.key")
    broker = MosquittoBroker(tmp_path / "broker", BrokerConfig(tls=tls, plain_listener=False)).start()
    try:
        yield broker, pki
    finally:
        broker.stop()


def make_link(settings: dict[str, Any], on_ack: Any = None) -> Link:
    mqtt = MqttSection.model_validate({"backoff_min_s": 0.2, "backoff_max_s": 0.5, **settings})
    return Link(mqtt, DEVICE, {"role": "camera"}, lambda _t, _p: None, on_ack or (lambda *_a: None))


def wait(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_mutual_tls_connects(tls_broker: tuple[MosquittoBroker, Path]) -> None:
    broker, pki = tls_broker
    tls = {"ca": str(pki / "ca.crt"), "cert": str(pki / "device.crt"), "key": str(pki / "device.key")}
    link = make_link({"broker": broker.tls_url.replace("127.0.0.1", "localhost"), "tls": tls})
    link.start()
    try:
        wait(lambda: link.connected)
    finally:
        link.stop()


def test_wrong_ca_is_reported_as_a_tls_problem(tls_broker: tuple[MosquittoBroker, Path]) -> None:
    broker, pki = tls_broker
    tls = {"ca": str(pki / "other.crt"), "cert": str(pki / "device.crt"), "key": str(pki / "device.key")}
    link = make_link({"broker": broker.tls_url.replace("127.0.0.1", "localhost"), "tls": tls})
    link.start()
    try:
        wait(lambda: link.attempts >= 2)
        assert not link.connected
        assert link.last_error is not None and link.last_error.startswith("TLS")
    finally:
        link.stop()


def test_unacked_events_are_sent_again_after_a_broker_restart(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    probe = Probe(broker, DEVICE, persistent=True)
    outbox = Outbox(tmp_path / "outbox.db", DEVICE, OutboxSection(fsync="normal"), None)
    holder: list[OutboxSender] = []
    link = make_link({"broker": broker.url, "inflight_window": 20}, lambda *a: holder[0].on_ack(*a))
    sender = OutboxSender(outbox, link, window=20)
    holder.append(sender)
    sender.start()
    link.start()
    ids: list[str] = []
    stop = threading.Event()

    def emit() -> None:
        for i in range(400):
            ids.append(outbox.enqueue("camera.count", {"i": i}).id)
            if stop.is_set():
                return

    emitter = threading.Thread(target=emit)
    try:
        wait(lambda: link.connected)
        emitter.start()
        wait(lambda: sender.acked >= 50)
        broker.restart()  # graceful: the probe's queued messages survive
        emitter.join(30)
        wait(lambda: outbox.depth == 0, timeout=60)
        wait(
            lambda: {decode(EventEnvelope, p).id for p, _r in probe.on("events/camera.count")} >= set(ids), 60
        )
        assert link.connects >= 2 and len(ids) == 400
    finally:
        stop.set()
        link.stop()
        sender.stop()
        outbox.close()
        probe.close()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("mqtt://no-such-host.invalid:1883", "cannot resolve host name 'no-such-host.invalid' (DNS"),
        ("mqtt://127.0.0.1:{free}", "connection refused by 127.0.0.1:"),
    ],
)
def test_unreachable_brokers_are_explained(url: str, reason: str) -> None:
    link = make_link({"broker": url.format(free=free_port())})
    link.start()
    try:
        wait(lambda: link.attempts >= 2)
        assert link.last_error is not None and link.last_error.startswith(reason)
        assert link.is_alive() and not link.connected
    finally:
        link.stop()


def test_not_authorised_is_explained(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker", BrokerConfig(allow_anonymous=False)).start()
    link = make_link({"broker": broker.url})
    link.start()
    try:
        wait(lambda: link.attempts >= 2)
        assert link.last_error is not None
        assert link.last_error.startswith("broker refused the connection: Not authorized")
        assert "ACL" in link.last_error
    finally:
        link.stop()
        broker.stop()
