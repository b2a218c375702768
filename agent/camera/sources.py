"""Build frame sources and detectors from the camera configuration."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agent.camera.config import DetectorConfig, SourceConfig
from agent.camera.detector import Detector, YoloxDetector
from agent.camera.errors import DetectorError
from hw.camera import Backoff, FrameSource, ReconnectingSource, SourceOpenError, SourceSpec, parse_source_spec

LIVE_KINDS = ("v4l2", "gstreamer", "rtsp", "picamera2")


def apply_source_arg(config: SourceConfig, spec_text: str | None) -> SourceConfig:
    """The configured source, replaced by a ``--source`` string when one is given."""
    if not spec_text:
        return config
    spec = parse_source_spec(spec_text)
    return config.model_copy(update={"kind": spec.kind, "target": spec.target})


def source_factory(config: SourceConfig) -> Callable[[], FrameSource]:
    """A function that builds a fresh (unopened) source each time it is called."""
    kind, target = config.kind, config.target

    def build() -> FrameSource:
        if kind == "file":
            from hw.camera_cv import VideoFileSource

            if not target:
                raise SourceOpenError("source kind 'file' needs a target path")
            return VideoFileSource(Path(target), loop=config.loop, realtime=config.realtime)
        if kind in ("v4l2", "gstreamer", "rtsp"):
            from hw.camera_cv import OpenCVStreamSource

            return OpenCVStreamSource(
                SourceSpec(kind, target), width=config.width, height=config.height, fps=config.fps
            )
        if kind == "picamera2":
            from hw.camera_pi import Picamera2Source

            return Picamera2Source(
                int(target or 0),
                width=config.width or 1280,
                height=config.height or 720,
                fps=config.fps or 15.0,
            )
        from agent.camera.scenegen import named_scene
        from hw.camera_synth import SyntheticSource

        try:
            scene = named_scene(target)
        except ValueError as exc:
            raise SourceOpenError(str(exc)) from exc
        frames = None if config.loop else scene.frames
        render = scene.render if frames is not None else (lambda i: scene.render(i % scene.frames))
        return SyntheticSource(
            render,
            frames=frames,
            fps=scene.fps,
            realtime=config.realtime,
            name=f"synthetic:{target or 'traffic'}",
        )

    return build


def supervised(config: SourceConfig, *, max_attempts: int | None = None) -> ReconnectingSource:
    """The source wrapped in a supervisor that reopens it with capped backoff.

    A video file that cannot be opened will not appear by waiting: it fails at once.
    """
    if config.kind == "file" and max_attempts is None:
        max_attempts = 1
    return ReconnectingSource(
        source_factory(config),
        backoff=Backoff(initial_s=config.reconnect_initial_s, max_s=config.reconnect_max_s),
        max_attempts=max_attempts,
    )


def build_detector(config: DetectorConfig) -> Detector | None:
    """The configured detector, verified against the model registry (None when disabled)."""
    if not config.enabled:
        return None
    from models.registry import ModelError, Registry

    try:
        registry = Registry.load(models_dir=config.models_dir)
        spec = registry.spec(config.model)
        path = registry.path_for(config.model)
    except ModelError as exc:
        raise DetectorError(str(exc)) from exc
    if spec.task != "detection":
        raise DetectorError(f"model {config.model!r} is a {spec.task} model, not a detector")
    return YoloxDetector(
        path,
        spec.input,
        spec.labels,
        providers=list(config.providers),
        threads=config.threads,
        score_threshold=config.score_threshold,
        nms_threshold=config.nms_threshold,
        input_size=config.input_size,
        cache_dir=config.trt_cache_dir,
    )
