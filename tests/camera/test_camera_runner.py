"""The camera role loop: count windows, signed violations with evidence, metrics, snapshots."""

from __future__ import annotations

import base64
import threading
from typing import Any

import cv2
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.camera.config import CameraConfig, CountsConfig, DwellZoneConfig, EvidenceConfig, LineConfig
from agent.camera.detector import YoloxDetector
from agent.camera.evidence import EvidenceBuilder
from agent.camera.runner import CameraRunner
from agent.camera.scenegen import person_sprite, road_background, stop_and_go_scene
from agent.camera.sink import MemorySink
from agent.camera.snapshot import SnapshotTaker, register_with
from fleet.evidence import verify_evidence
from hw.camera import Frame, ReconnectingSource
from hw.camera_synth import SyntheticSource

LINE = LineConfig(id="c", points=((260, 0), (260, 240)), direction_names={"right_to_left": "eastbound"})
ZONE = DwellZoneConfig(
    id="no_stop", polygon=[(120, 130), (200, 130), (200, 200), (120, 200)], max_dwell_s=2.5
)


def _config() -> CameraConfig:
    return CameraConfig(
        camera_id="cam-test",
        lines=[LINE],
        zones=[ZONE],
        counts=CountsConfig(window_s=5),
        evidence=EvidenceConfig(ocr=False, inline_max_bytes=20_000),
        metrics_interval_s=0.001,
    )


def test_runner_emits_windows_violation_and_metrics(detector: YoloxDetector) -> None:
    scene = stop_and_go_scene(stop_s=4.0)
    sim = SyntheticSource(
        scene.render, frames=scene.frames, fps=scene.fps, fail_after=37, start_wall=1_000_000.0
    )
    source = ReconnectingSource(lambda: sim, sleep=lambda _d: None)
    key = Ed25519PrivateKey.generate()
    sink = MemorySink(device="cam-hn-test-0001", key=key, kid="cam-hn-test-0001")
    config = _config()
    runner = CameraRunner(
        config,
        source,
        sink,
        detector=detector,
        evidence=EvidenceBuilder(config.evidence, config.camera_id, None, detector),
    )
    summary = runner.run(threading.Event())
    assert summary.frames == scene.frames and summary.violations == 1 and summary.evidence_published == 1

    windows = sink.of_kind("traffic.count")
    assert [w["window_start"][-10:] for w in windows[:2]] == ["46:40.000Z", "46:45.000Z"]
    assert all(not w["partial"] for w in windows[:-1]) and windows[-1]["partial"]
    eastbound = sum(w["lines"]["c"]["directions"]["right_to_left"]["total"] for w in windows)
    assert eastbound == scene.true_crossings(*LINE.points)["right_to_left"] == 2
    assert windows[0]["lines"]["c"]["directions"]["right_to_left"]["name"] == "eastbound"
    assert all(w["camera"] == "cam-test" and w["window_s"] <= 5 for w in windows)

    (violation,) = [e for e in sink.envelopes if e["kind"] == "traffic.violation"]
    assert violation["data"]["rule"] == "illegal_stopping" and violation["data"]["plate"] is None
    assert verify_evidence(violation, lambda _sha: None, key.public_key()).images, "all images inline"
    assert all(sign for kind, _d, sign in sink.events if kind == "traffic.violation"), "asked to be signed"

    states = [p["camera"]["state"] for p in sink.peripherals]
    assert states[:3] == ["open", "reconnecting", "open"] and states[-1] == "closed"
    metrics = sink.metrics[-1]
    for name in (
        "camera_fps",
        "camera_inference_ms_p50",
        "camera_dropped_frames",
        "camera_detector_calls",
        "camera_quality",
        "camera_source_state",
        "camera_reconnects",
    ):
        assert name in metrics, name
    assert metrics["camera_reconnects"] == scene.frames // 37
    assert metrics["camera_detector_calls"] < scene.frames


def test_counts_survive_an_agent_that_is_briefly_away() -> None:
    from agent.camera.errors import SinkError

    class FlakySink(MemorySink):
        def __init__(self) -> None:
            super().__init__()
            self.down = 3

        def emit(self, kind: str, data: dict[str, Any], *, sign: bool = False) -> dict[str, Any]:
            if self.down > 0:
                self.down -= 1
                raise SinkError(
                    "agent did not accept a traffic.count event: the cityedge agent is not running"
                )
            return super().emit(kind, data, sign=sign)

    scene = stop_and_go_scene(stop_s=1.0)
    sim = SyntheticSource(scene.render, frames=scene.frames, fps=scene.fps, start_wall=0.0)
    config = _config().model_copy(update={"zones": [], "counts": CountsConfig(window_s=1)})
    sink = FlakySink()
    runner = CameraRunner(
        config,
        ReconnectingSource(lambda: sim),
        sink,
        detector=None,
        evidence=EvidenceBuilder(config.evidence, "c"),
    )
    runner.run(threading.Event())
    windows = sink.of_kind("traffic.count")
    starts = [w["window_start"] for w in windows]
    assert starts == sorted(starts) and len(starts) == len(set(starts))
    assert len(windows) == 11, "windows 0..9 complete and 10 partial, each delivered once, in order"
    assert windows[-1]["partial"] and not any(w["partial"] for w in windows[:-1])


def test_snapshot_blurs_people_and_plates(detector: YoloxDetector) -> None:
    image = road_background(480, 320, [100.0, 220.0])
    person = person_sprite().scaled(200).image
    image[60 : 60 + person.shape[0], 300 : 300 + person.shape[1]] = person
    taker = SnapshotTaker(detector, 0.45)
    with pytest.raises(RuntimeError, match="no camera frame yet"):
        taker.handler({})
    taker.update(Frame(image=image, seq=9, t=0.0, wall=0.0))
    result = taker.handler({})
    shot = cv2.imdecode(np.frombuffer(base64.b64decode(result["data"]), np.uint8), cv2.IMREAD_COLOR)
    assert shot is not None, "the snapshot does not decode"
    region = (slice(60, 60 + person.shape[0]), slice(300, 300 + person.shape[1]))
    assert shot[region].astype(float).var() < 0.35 * image[region].astype(float).var()
    assert result["frame_seq"] == 9 and result["width"] == 480
    assert register_with(object(), taker, threading.Event()) is None, "no relay in the agent: not served"
