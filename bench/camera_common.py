"""Shared pieces of the camera benchmarks: frames to run on, the verified detector, a pipeline runner."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.camera.config import CameraConfig
from agent.camera.detector import YoloxDetector
from agent.camera.pipeline import Pipeline
from agent.camera.rules import Crossing
from hw.camera import Frame
from models.registry import Registry

CLIP = Path(__file__).resolve().parents[2] / "shared" / "traffic" / "car-detection.mp4"


def clip_frames(limit: int | None = None) -> tuple[list[Frame], str]:
    """The real clip's frames in memory (or a synthetic scene when the clip is absent)."""
    if CLIP.is_file():
        from hw.camera_cv import VideoFileSource

        source = VideoFileSource(CLIP, start_wall=0.0)
        source.open()
        frames: list[Frame] = []
        while (limit is None or len(frames) < limit) and (frame := source.read()) is not None:
            frames.append(frame)
        source.close()
        return frames, f"{CLIP.name} ({len(frames)} frames, 768x432)"
    from agent.camera.scenegen import traffic_scene

    scene = traffic_scene(1, duration_s=40.0, vehicles=24)
    count = min(limit or scene.frames, scene.frames)
    frames = [Frame(scene.render(i), i + 1, i / scene.fps, i / scene.fps) for i in range(count)]
    return frames, f"synthetic traffic ({count} frames, 320x240; clip not present)"


def detector(threads: int, path: Path | None = None) -> YoloxDetector:
    registry = Registry.load()
    spec = registry.spec("yolox_nano")
    return YoloxDetector(path or registry.path_for("yolox_nano"), spec.input, spec.labels, threads=threads)


def run_pipeline(
    config: CameraConfig, frames: list[Frame], det: YoloxDetector | None
) -> tuple[float, Pipeline, list[Crossing]]:
    """Seconds to push ``frames`` through a fresh pipeline; the pipeline and its crossings."""
    pipeline = Pipeline(config, frames[0].size, det)
    crossings: list[Crossing] = []
    started = time.perf_counter()
    for frame in frames:
        crossings += pipeline.process(frame).crossings
    return time.perf_counter() - started, pipeline, crossings


def environment() -> dict[str, Any]:
    import os

    import onnxruntime as ort

    return {"cpus": os.cpu_count(), "onnxruntime": ort.__version__, "load_1min": round(os.getloadavg()[0], 2)}


def letterboxed(frames: list[Frame], size: int = 416) -> list[np.ndarray[Any, np.dtype[np.float32]]]:
    from agent.camera.yolox import letterbox

    out = []
    for frame in frames:
        boxed, _ = letterbox(frame.image, size, size)
        out.append(np.ascontiguousarray(boxed.transpose(2, 0, 1)[None], dtype=np.float32))
    return out
