"""End to end with the real agent: camera → local API → signed outbox → real mosquitto → verification."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import tomli_w
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from agent.camera.config import CameraConfig, CountsConfig, DwellZoneConfig, EvidenceConfig, LineConfig
from agent.camera.evidence import EvidenceBuilder
from agent.camera.runner import CameraRunner
from agent.camera.scenegen import stop_and_go_scene
from agent.camera.sink import AgentSink
from fleet.broker import MosquittoBroker
from fleet.evidence import EvidenceError, verify_evidence
from hw.camera import ReconnectingSource
from hw.camera_synth import SyntheticSource

DEVICE = "cam-hn-test-0042"
REPO = Path(__file__).resolve().parents[2]
CITYEDGE = str(Path(sys.executable).parent / "cityedge")


@pytest.fixture
def agent(broker: MosquittoBroker, tmp_path: Path) -> Iterator[Path]:
    data_dir = tmp_path / "agent"
    config = {
        "data_dir": str(data_dir),
        "device": {"id": DEVICE, "role": "camera"},
        "mqtt": {"broker": broker.url, "backoff_min_s": 0.2, "backoff_max_s": 1.0, "keepalive_s": 5},
        "telemetry": {"interval_s": 0.5},
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
        deadline = time.monotonic() + 30
        while not (data_dir / "agent.sock").exists():
            assert proc.poll() is None, (tmp_path / "agent.stderr").read_text()
            assert time.monotonic() < deadline, "agent did not start"
            time.sleep(0.1)
        yield data_dir
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class City:
    """Records every message of the device, as the fleet would receive them."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="city-probe", protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_a: c.subscribe(f"city/v1/devices/{DEVICE}/#", qos=1)
        self.client.connect(broker.config.host, broker.config.port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic.rsplit(f"{DEVICE}/", 1)[1], json.loads(msg.payload)))

    def wait(self, family: str, predicate: Any = lambda _m: True, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for topic, body in self.messages:
                    if topic == family and predicate(body):
                        return body
            time.sleep(0.1)
        raise AssertionError(f"nothing on {family} within {timeout} s; got {[t for t, _ in self.messages]}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_violation_reaches_the_city_signed_and_verifiable(agent: Path, broker: MosquittoBroker) -> None:
    city = City(broker)
    try:
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
            metrics_interval_s=0.2,
        )
        sim = SyntheticSource(scene.render, frames=scene.frames, fps=scene.fps)
        runner = CameraRunner(
            config,
            ReconnectingSource(lambda: sim),
            AgentSink(agent),
            detector=None,
            evidence=EvidenceBuilder(config.evidence, config.camera_id),
        )
        summary = runner.run(threading.Event())
        assert summary.violations == 1 and summary.evidence_published == 1

        envelope = city.wait("events/traffic.violation")
        assert envelope["device"] == DEVICE and envelope["sig"]["kid"] == DEVICE
        key = serialization.load_pem_private_key((agent / "device_key.pem").read_bytes(), password=None)
        assert isinstance(key, Ed25519PrivateKey)
        assert all(i["store"] == "inline" for i in envelope["data"]["images"]), "images travel in the event"
        report = verify_evidence(envelope, lambda _sha: None, key.public_key())
        assert {i["role"] for i in report.images} == {"scene", "vehicle"}
        altered = json.loads(json.dumps(envelope))
        image = altered["data"]["images"][0]
        image["data"] = base64.b64encode(base64.b64decode(image["data"])[:-1]).decode()
        with pytest.raises(EvidenceError):
            verify_evidence(altered, lambda _sha: None, key.public_key())

        city.wait("events/traffic.count", lambda b: b["data"]["partial"])  # the last window, sent last
        with city.lock:
            counts = [b for t, b in city.messages if t == "events/traffic.count"]
        total = sum(b["data"]["lines"]["c"]["total"] for b in counts)
        assert total == sum(scene.true_crossings((260, 0), (260, 240)).values()) == 2
        telemetry = city.wait("telemetry", lambda b: "camera_fps" in b)
        assert (
            telemetry["camera_source_state"] in ("open", "ended", "closed") and "camera_quality" in telemetry
        )
    finally:
        city.close()


def test_camera_run_command_talks_to_the_agent(agent: Path, broker: MosquittoBroker, tmp_path: Path) -> None:
    city = City(broker)
    camera_toml = tmp_path / "camera.toml"
    camera_toml.write_text(
        'camera_id = "cam-cli"\n[counts]\nwindow_s = 2\n[evidence]\nocr = false\n'
        '[[lines]]\nid = "c"\npoints = [[260, 0], [260, 240]]\n'
    )
    try:
        done = subprocess.run(
            [
                CITYEDGE,
                "camera",
                "run",
                "--config",
                str(camera_toml),
                "--data-dir",
                str(agent),
                "--source",
                "synthetic:stop",
                "--max-frames",
                "80",
                "--log-level",
                "warning",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert summary["frames"] == 80 and summary["windows_sent"] >= 4
        window = city.wait("events/traffic.count", lambda b: b["data"]["camera"] == "cam-cli")
        assert window["data"]["window_s"] == 2 and "c" in window["data"]["lines"]
    finally:
        city.close()


def test_camera_run_with_a_missing_clip_fails_clearly(tmp_path: Path) -> None:
    light = tmp_path / "light.toml"
    light.write_text("[detector]\nenabled = false\n[evidence]\nocr = false\n")
    done = subprocess.run(
        [
            CITYEDGE,
            "camera",
            "run",
            "--config",
            str(light),
            "--data-dir",
            str(tmp_path),
            "--source",
            str(tmp_path / "missing.mp4"),
            "--max-frames",
            "5",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "missing.mp4 does not exist" in done.stderr
