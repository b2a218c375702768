"""Evidence reaches the fleet only inside the signed event, and is verified there at arrival.

A real camera pipeline, the real agent and a real mosquitto bring a violation to a fleet worker
that checks it against the device's certificate in the city PKI inventory. Crafted events from
a device without a certificate, a revoked device, or signed with another device's key are
refused and counted as ``bad_evidence``; nothing of them is stored.
"""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from agent.camera.config import CameraConfig, CountsConfig, DwellZoneConfig, EvidenceConfig, LineConfig
from agent.camera.evidence import EvidenceBuilder
from agent.camera.runner import CameraRunner
from agent.camera.scenegen import stop_and_go_scene
from agent.camera.sink import AgentSink
from fleet.broker import MosquittoBroker
from fleet.config import FleetConfig
from fleet.evidence import EvidenceStore, evidence_dir, evidence_router, evidence_router_for, verify_evidence
from fleet.pki import CityPKI
from fleet.service import FleetService
from hw.camera import ReconnectingSource
from hw.camera_synth import SyntheticSource
from hw.keystore import FileKeyStore
from protocol.signing import sign
from protocol.timefmt import format_ts, now_ts
from protocol.topics import Topics

REPO = Path(__file__).resolve().parents[2]
TOPICS = Topics()
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 20 + b"\xff\xd9"
FleetFactory = Callable[..., FleetService]


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def pki(tmp_path: Path) -> CityPKI:
    return CityPKI.init(tmp_path / "pki")


def enrol(pki: CityPKI, device: str, key_path: Path) -> tuple[Ed25519PrivateKey, int]:
    """The device's key (made as on the device) and the serial of its certificate."""
    store = FileKeyStore.create(key_path)
    cert = x509.load_pem_x509_certificate(pki.sign_device_csr(store.csr(device), device))
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key, cert.serial_number


@pytest.fixture
def make_fleet(broker: MosquittoBroker, pki: CityPKI, tmp_path: Path) -> Iterator[FleetFactory]:
    started: list[FleetService] = []

    def make(**overrides: Any) -> FleetService:
        settings: dict[str, Any] = {
            "broker_url": broker.url,
            "db_url": f"sqlite:///{tmp_path / 'fleet.db'}",
            "data_dir": tmp_path / "fleet",
            "pki_dir": pki.directory,
            "worker_id": f"fleet-evidence-{len(started)}",
            "retained_sync_s": 0,
            "batch_interval_s": 0.02,
        }
        settings.update(overrides)
        service = FleetService(FleetConfig(**settings))
        started.append(service.start())
        return service

    yield make
    for service in started:
        service.stop()


class Device:
    """A plain MQTT client publishing hand-made events on one device's topics."""

    def __init__(self, broker: MosquittoBroker, device: str) -> None:
        self.device = device
        self.seq = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv5)
        self.client.connect(broker.config.host, broker.config.port)
        self.client.loop_start()

    def violation(self, image: bytes = JPEG, **data: Any) -> dict[str, Any]:
        self.seq += 1
        entry = {
            "role": "scene",
            "sha256": hashlib.sha256(image).hexdigest(),
            "content_type": "image/jpeg",
            "bytes": len(image),
            "store": "inline",
            "data": base64.b64encode(image).decode("ascii"),
        }
        body = {"camera": "cam-1", "rule": "red_light", "plate": None, "images": [entry], **data}
        return {
            "id": uuid.uuid4().hex,
            "seq": self.seq,
            "ts": now_ts(),
            "device": self.device,
            "kind": "traffic.violation",
            "data": body,
        }

    def send(self, envelope: dict[str, Any]) -> dict[str, Any]:
        info = self.client.publish(TOPICS.event(self.device, envelope["kind"]), json.dumps(envelope), qos=1)
        info.wait_for_publish(5)
        return envelope

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def bad_evidence(fleet: FleetService) -> int:
    rows = fleet.store.ingest_errors()
    return sum(int(r["count"]) for r in rows if r["reason"] == "bad_evidence")


def stored(fleet: FleetService, envelope: dict[str, Any]) -> bool:
    return any(e["id"] == envelope["id"] for e in fleet.store.events(envelope["device"], limit=100))


def test_refused_at_arrival_unknown_revoked_or_signed_by_another_device(
    broker: MosquittoBroker, pki: CityPKI, make_fleet: FleetFactory, tmp_path: Path
) -> None:
    fleet = make_fleet(writer_process=False)
    good_key, _ = enrol(pki, "cam-hn-ev-0001", tmp_path / "good.pem")
    other_key, _ = enrol(pki, "cam-hn-ev-0002", tmp_path / "other.pem")
    doomed_key, _ = enrol(pki, "cam-hn-ev-0003", tmp_path / "doomed.pem")
    good, doomed = Device(broker, "cam-hn-ev-0001"), Device(broker, "cam-hn-ev-0003")
    stranger = Device(broker, "cam-hn-ev-0009")
    try:
        # The device revoked below was accepted until then.
        first = doomed.send(sign(doomed.violation(), doomed_key, "cam-hn-ev-0003"))
        wait_for(lambda: stored(fleet, first), what="the valid event")
        pki.revoke("cam-hn-ev-0003", "stolen")

        unknown = stranger.send(sign(stranger.violation(), Ed25519PrivateKey.generate(), "cam-hn-ev-0009"))
        revoked = doomed.send(sign(doomed.violation(), doomed_key, "cam-hn-ev-0003"))
        forged = good.send(sign(good.violation(), other_key, "cam-hn-ev-0001"))
        as_other = good.send(sign(good.violation(), other_key, "cam-hn-ev-0002"))
        altered = sign(good.violation(), good_key, "cam-hn-ev-0001")
        altered["data"]["images"][0]["data"] = base64.b64encode(JPEG[:-1]).decode("ascii")
        good.send(altered)
        valid = good.send(sign(good.violation(image=JPEG + b"valid"), good_key, "cam-hn-ev-0001"))

        wait_for(lambda: stored(fleet, valid), what="the valid event")
        wait_for(lambda: bad_evidence(fleet) == 5, what="five refusals counted")
        for envelope in (unknown, revoked, forged, as_other, altered):
            assert not stored(fleet, envelope) and fleet.store.evidence(envelope["id"]) is None
        counted = fleet.stats.snapshot()["rejected"]
        assert {"reason": "bad_evidence", "family": "events", "count": 5} in counted
        (row,) = [r for r in fleet.store.ingest_errors() if r["reason"] == "bad_evidence"]
        assert row["family"] == "events" and row["last_topic"].endswith("/events/traffic.violation")
        evidence = EvidenceStore(evidence_dir(tmp_path / "fleet"))
        assert evidence.get(hashlib.sha256(JPEG[:-1]).hexdigest()) is None
        record = fleet.store.evidence(valid["id"])
        assert record is not None and record["device"] == "cam-hn-ev-0001"
        assert evidence.get(hashlib.sha256(JPEG + b"valid").hexdigest()) == JPEG + b"valid"
    finally:
        for device in (good, doomed, stranger):
            device.close()


def test_refusals_are_logged_with_their_topic(
    broker: MosquittoBroker, pki: CityPKI, make_fleet: FleetFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = make_fleet(writer_process=False)
    device = Device(broker, "cam-hn-ev-0042")
    try:
        with caplog.at_level("WARNING", logger="fleet.inbound"):
            device.send(sign(device.violation(), Ed25519PrivateKey.generate(), "cam-hn-ev-0042"))
            wait_for(lambda: bad_evidence(fleet) == 1, what="the refusal")
        line = next(r.getMessage() for r in caplog.records if "bad_evidence" in r.getMessage())
        assert TOPICS.event("cam-hn-ev-0042", "traffic.violation") in line
        assert "no certificate from the city PKI" in line
    finally:
        device.close()


def test_a_fleet_without_a_pki_refuses_evidence_it_cannot_check(
    broker: MosquittoBroker, make_fleet: FleetFactory, tmp_path: Path
) -> None:
    fleet = make_fleet(writer_process=False, pki_dir=None)
    device = Device(broker, "cam-hn-ev-0005")
    try:
        envelope = device.send(sign(device.violation(), Ed25519PrivateKey.generate(), "cam-hn-ev-0005"))
        wait_for(lambda: bad_evidence(fleet) == 1, what="the refusal")
        assert not stored(fleet, envelope)
    finally:
        device.close()


def test_there_is_no_http_upload_any_more(tmp_path: Path) -> None:
    router = evidence_router(EvidenceStore(tmp_path / "evidence"))
    methods = {m for route in router.routes for m in getattr(route, "methods", ())}
    assert methods == {"GET"}, "evidence arrives over MQTT only; the HTTP API only serves it"


# --- end to end: camera -> agent -> mosquitto -> fleet ------------------------------------------


@pytest.fixture
def camera_agent(broker: MosquittoBroker, pki: CityPKI, tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """The real agent of an enrolled camera: its key certified by the city PKI."""
    device = "cam-hn-e2e-0001"
    data_dir = tmp_path / "agent"
    data_dir.mkdir()
    _key, serial = enrol(pki, device, data_dir / "device_key.pem")
    config = {
        "data_dir": str(data_dir),
        "device": {"id": device, "role": "camera"},
        "mqtt": {"broker": broker.url, "backoff_min_s": 0.2, "backoff_max_s": 1.0, "keepalive_s": 5},
        "telemetry": {"interval_s": 5},
    }
    path = tmp_path / "agent.toml"
    path.write_text(tomli_w.dumps(config))
    with open(tmp_path / "agent.stderr", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(path)],
            cwd=REPO,
            stderr=err,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: (data_dir / "agent.sock").exists() or proc.poll() is not None, what="the agent to start"
        )
        assert proc.poll() is None, (tmp_path / "agent.stderr").read_text()
        yield data_dir, serial
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_violation_from_the_real_camera_and_agent_is_verified_and_stored_at_arrival(
    camera_agent: tuple[Path, int], make_fleet: FleetFactory, tmp_path: Path
) -> None:
    data_dir, serial = camera_agent
    fleet = make_fleet(writer_process=True)  # what `fleet serve` runs by default
    scene = stop_and_go_scene(stop_s=4.0)
    config = CameraConfig(
        camera_id="cam-1",
        lines=[LineConfig(id="c", points=((260, 0), (260, 240)))],
        zones=[
            DwellZoneConfig(
                id="no_stop", polygon=[(120, 130), (200, 130), (200, 200), (120, 200)], max_dwell_s=2.5
            )
        ],
        counts=CountsConfig(window_s=5),
        evidence=EvidenceConfig(ocr=False, inline_max_bytes=12_000),
        metrics_interval_s=0.5,
    )
    sim = SyntheticSource(scene.render, frames=scene.frames, fps=scene.fps)
    runner = CameraRunner(
        config,
        ReconnectingSource(lambda: sim),
        AgentSink(data_dir),
        detector=None,
        evidence=EvidenceBuilder(config.evidence, config.camera_id),
    )
    assert runner.run(threading.Event()).evidence_published == 1

    (row,) = wait_for(
        lambda: fleet.store.events("cam-hn-e2e-0001", kind="traffic.violation"), what="the violation"
    )
    record = fleet.store.evidence(row["id"])
    assert record is not None, "verified at arrival"
    assert record["cert_serial"] == format(serial, "x") and record["kind"] == "traffic.violation"
    assert {i["role"] for i in record["images"]} == {"scene", "vehicle"}
    store = EvidenceStore(evidence_dir(tmp_path / "fleet"))
    for image in record["images"]:
        blob = store.get(image["sha256"])
        assert blob is not None and hashlib.sha256(blob).hexdigest() == image["sha256"]
        assert len(blob) == image["bytes"]
    images = row["data"]["images"]
    assert all("data" not in i and i["store"] == "inline" for i in images), "bytes live in the store only"

    envelope = {
        "id": row["id"],
        "seq": row["seq"],
        "ts": format_ts(row["ts"]),
        "device": row["device"],
        "kind": row["kind"],
        "data": row["data"],
        "sig": row["sig"],
    }
    key = serialization.load_pem_private_key((data_dir / "device_key.pem").read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    assert len(verify_evidence(envelope, store.get, key.public_key()).images) == 2, "still verifiable"
    assert bad_evidence(fleet) == 0


def test_plate_text_is_read_only_through_the_audited_evidence_route(
    broker: MosquittoBroker, pki: CityPKI, make_fleet: FleetFactory, tmp_path: Path
) -> None:
    """The events API leaves the plate out (devices:read is not personal data); the full event is
    for evidence-officers, and each view is on the audit trail before it is answered."""
    from fastapi.testclient import TestClient

    from fleet.api import create_app
    from fleet.auth import trail
    from fleet.auth.tokens import issue

    fleet = make_fleet(writer_process=False)
    key, _ = enrol(pki, "cam-hn-pl-0001", tmp_path / "plate.pem")
    camera = Device(broker, "cam-hn-pl-0001")
    try:
        plate = {"text": "29A-123.45", "score": 0.93}
        sent = camera.send(sign(camera.violation(plate=plate), key, "cam-hn-pl-0001"))
        wait_for(lambda: stored(fleet, sent), what="the violation")
    finally:
        camera.close()
    app = create_app(fleet, extra_routers=[evidence_router_for(fleet)])
    tokens = {
        role: issue(fleet.store.writer, name=f"plate-{role}", role=role, expires=timedelta(hours=1))[0]
        for role in ("viewer", "evidence-officer")
    }

    def get(path: str, role: str) -> Any:
        return client.get(path, headers={"Authorization": f"Bearer {tokens[role]}"})

    with TestClient(app) as client:
        listed = get("/api/devices/cam-hn-pl-0001/events", "viewer").json()
        (event,) = [e for e in listed if e["id"] == sent["id"]]
        assert event["data"]["plate"] == {"redacted": True, "read_with": f"/api/evidence/events/{sent['id']}"}
        assert "29A-123.45" not in json.dumps(get("/api/events", "viewer").json())
        before = len(trail.read(fleet.store.writer, None))
        assert get(f"/api/evidence/events/{sent['id']}", "viewer").status_code == 403
        full = get(f"/api/evidence/events/{sent['id']}", "evidence-officer")
        assert full.status_code == 200 and full.json()["data"]["plate"] == plate
        entries = trail.read(fleet.store.writer, None)[before:]
        assert [(e["role"], e["outcome"].split(":")[0]) for e in entries] == [
            ("viewer", "denied"),
            ("evidence-officer", "allowed"),
        ]
