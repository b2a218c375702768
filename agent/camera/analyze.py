"""Offline analysis of a clip: counts per line, direction and class, violations, quality, speed.

Used by ``cityedge camera analyze``; the same pipeline as on the device, without the agent.
The result holds no plate text and no images.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.camera.config import CameraConfig
from agent.camera.counts import summarise
from agent.camera.cvlib import cv2 as _cv2
from agent.camera.detector import Detector
from agent.camera.pipeline import FrameResult, Pipeline
from agent.camera.rules import Crossing, Violation
from agent.camera.signal import SignalPhase, build_signal
from hw.camera import FrameSource

DIRECTION_CONVENTION = (
    "left/right are the sides of each line as seen from its first point A looking towards its second "
    "point B on the screen (x right, y down); left_to_right = moved from the left side to the right "
    "side. A horizontal line drawn left-to-right has the top of the image on its left, so traffic "
    "moving down the image is left_to_right."
)


class Annotator:
    """Writes an MP4 with lines, tracks (id, class, confirmed) and running counts."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int]) -> None:
        cv2 = _cv2()

        self._cv2: Any = cv2
        self.writer: Any = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not self.writer.isOpened():
            raise OSError(f"cannot write video {path}")

    def write(self, result: FrameResult, config: CameraConfig, counts: dict[str, dict[str, int]]) -> None:
        cv2 = self._cv2
        image: npt.NDArray[np.uint8] = result.frame.image.copy()
        for line in config.lines:
            (ax, ay), (bx, by) = line.points
            cv2.line(image, (int(ax), int(ay)), (int(bx), int(by)), (255, 0, 255), 2)
            cv2.putText(
                image,
                f"A {line.id}",
                (int(ax) + 3, int(ay) + 14),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.45,
                (255, 0, 255),
                1,
            )
            cv2.putText(
                image, "B", (int(bx) - 12, int(by) - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 0, 255), 1
            )
        for track in result.tracks:
            x1, y1, x2, y2 = (int(v) for v in track.box)
            colour = (0, 200, 0) if track.confirmed else (0, 200, 255)
            cv2.rectangle(image, (x1, y1), (x2, y2), colour, 2)
            cv2.putText(
                image,
                f"{track.id} {track.label}",
                (x1, max(12, y1 - 3)),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.45,
                colour,
                1,
            )
        y = 18
        for line_id, per_dir in counts.items():
            text = f"{line_id}: L>R {per_dir.get('left_to_right', 0)}  R>L {per_dir.get('right_to_left', 0)}"
            cv2.putText(image, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
            y += 18
        self.writer.write(image)

    def close(self) -> None:
        self.writer.release()


def _event(v: Violation) -> dict[str, Any]:
    return {
        "rule": v.rule,
        "rule_id": v.rule_id,
        "t": round(v.t, 3),
        "frame_seq": v.seq,
        "track_id": v.track.id,
        "class": v.track.label,
        "box": [round(x, 1) for x in v.box],
        "details": v.details,
    }


def analyze(
    source: FrameSource,
    config: CameraConfig,
    detector: Detector | None,
    *,
    annotate: Path | None = None,
    video_fps: float | None = None,
    signals: dict[str, SignalPhase] | None = None,
    max_frames: int | None = None,
) -> dict[str, Any]:
    """Run the pipeline over every frame of an opened ``source``; the summary as a JSON-able dict."""
    signals = signals if signals is not None else {k: build_signal(v) for k, v in config.signals.items()}
    pipeline: Pipeline | None = None
    annotator: Annotator | None = None
    crossings: list[Crossing] = []
    violations: list[Violation] = []
    running: dict[str, dict[str, int]] = {line.id: {} for line in config.lines}
    started = time.perf_counter()
    last_t = 0.0
    try:
        while True:
            frame = source.read()
            if frame is None:
                break
            if pipeline is None:
                pipeline = Pipeline(config, frame.size, detector, signals)
                if annotate is not None:
                    annotator = Annotator(annotate, video_fps or 10.0, frame.size)
            result = pipeline.process(frame)
            last_t = frame.t
            crossings += result.crossings
            violations += result.violations
            for c in result.crossings:
                running[c.line_id][c.direction] = running[c.line_id].get(c.direction, 0) + 1
            if annotator is not None:
                annotator.write(result, config, running)
            if max_frames is not None and pipeline.stats.frames >= max_frames:
                break
    finally:
        if annotator is not None:
            annotator.close()
        if pipeline is not None:
            pipeline.close()
    elapsed = time.perf_counter() - started
    frames = pipeline.stats.frames if pipeline is not None else 0
    metrics = pipeline.metrics() if pipeline is not None else {}
    return {
        "frames": frames,
        "duration_s": round(last_t + (1.0 / video_fps if video_fps else 0.0), 3) if frames else 0.0,
        "video_fps": video_fps,
        "fps": round(frames / elapsed, 2) if elapsed > 0 else None,
        "detector_calls": pipeline.stats.detector_calls if pipeline is not None else 0,
        "inference_ms_p50": metrics.get("camera_inference_ms_p50"),
        "quality": None if pipeline is None or (q := pipeline.quality()) is None else round(q, 3),
        "tracks": (pipeline.stats.tracks_finished + len(pipeline.tracker.live_established()))
        if pipeline
        else 0,
        "direction_convention": DIRECTION_CONVENTION,
        "lines": summarise(config.lines, crossings),
        "events": [_event(v) for v in violations],
    }
