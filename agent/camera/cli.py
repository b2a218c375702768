"""``cityedge camera analyze|run``: offline clip analysis and the camera role process."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

import typer

from agent.camera.errors import CameraRoleError

log = logging.getLogger(__name__)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _analyze(
    source: Path = typer.Option(..., "--source", help="Video file to analyse."),
    config: Path | None = typer.Option(None, "--config", help="Camera TOML (lines, zones, rules, detector)."),
    line: list[str] = typer.Option(
        None, "--line", help="Counting line X1,Y1,X2,Y2 in source pixels (repeatable)."
    ),
    annotate: Path | None = typer.Option(None, "--annotate", help="Write an annotated MP4 here."),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
    no_detector: bool = typer.Option(False, "--no-detector", help="Motion blobs only (no ONNX model)."),
    threads: int | None = typer.Option(None, "--threads", help="Detector CPU threads."),
    max_frames: int | None = typer.Option(None, "--max-frames", help="Stop after this many frames."),
) -> None:
    """Count traffic and find violations in a clip (counts per line, direction and class)."""
    from agent.camera.analyze import analyze
    from agent.camera.config import load_config, parse_line_arg
    from agent.camera.sources import build_detector
    from hw.camera import CameraError
    from hw.camera_cv import VideoFileSource

    try:
        cfg = load_config(config)
        extra = [parse_line_arg(text, len(cfg.lines) + i + 1) for i, text in enumerate(line or [])]
        detector_cfg = cfg.detector.model_copy(
            update={
                "enabled": cfg.detector.enabled and not no_detector,
                **({"threads": threads} if threads else {}),
            }
        )
        cfg = cfg.model_copy(update={"lines": [*cfg.lines, *extra], "detector": detector_cfg})
        clip = VideoFileSource(source)
        clip.open()
        try:
            detector = build_detector(cfg.detector)
            result = analyze(
                clip, cfg, detector, annotate=annotate, video_fps=clip.fps, max_frames=max_frames
            )
        finally:
            clip.close()
    except (CameraRoleError, CameraError, OSError) as exc:
        raise _fail(str(exc)) from exc
    result = {"source": str(source), **result}
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(
        f"{result['frames']} frames, {result['fps']} fps, detector calls {result['detector_calls']}, "
        f"quality {result['quality']}"
    )
    for line_id, data in result["lines"].items():
        for d in data["directions"].values():
            typer.echo(f"  {line_id} {d['name']:<14} {d['total']:>4}  {d['classes']}")
    for e in result["events"]:
        typer.echo(f"  event {e['rule']} {e['rule_id']} t={e['t']}s track {e['track_id']} ({e['class']})")


def _run(
    config: Path | None = typer.Option(None, "--config", help="Camera TOML."),
    data_dir: Path = typer.Option(
        Path("var/agent"), "--data-dir", help="The agent's data dir (its local API socket)."
    ),
    source: str | None = typer.Option(
        None,
        "--source",
        help="Override the source: file, rtsp://, v4l2:/dev/videoN, gst:..., picamera2, synthetic[:NAME].",
    ),
    evidence_url: str | None = typer.Option(
        None,
        "--evidence-url",
        hidden=True,
        help="Ignored (evidence travels inside the signed event through the agent).",
    ),
    max_frames: int | None = typer.Option(
        None, "--max-frames", help="Stop after this many frames (tests, demo)."
    ),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning, error."),
) -> None:
    """Run the camera role: frames in, counts/violations/metrics out through the agent."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from hw.camera import CameraError

    try:
        runner, client = _build_runner(config, data_dir, source, evidence_url)
    except (CameraRoleError, CameraError, OSError) as exc:
        raise _fail(str(exc)) from exc
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    from agent.camera.snapshot import register_with

    register_with(client, runner.snapshots, stop)
    try:
        summary = runner.run(stop, max_frames=max_frames)
    except (CameraRoleError, CameraError) as exc:
        raise _fail(str(exc), 1) from exc
    typer.echo(
        json.dumps(
            {
                "frames": summary.frames,
                "windows_sent": summary.windows_sent,
                "violations": summary.violations,
                "evidence_published": summary.evidence_published,
            }
        )
    )


def _build_runner(
    config: Path | None, data_dir: Path, source: str | None, evidence_url: str | None
) -> tuple[Any, Any]:
    from agent.camera.config import CameraConfig, config_from_dict, load_config
    from agent.camera.evidence import EvidenceBuilder
    from agent.camera.plates import RapidOcrPlateReader
    from agent.camera.runner import CameraRunner
    from agent.camera.signal import build_signal
    from agent.camera.sink import AgentSink
    from agent.camera.sources import LIVE_KINDS, apply_source_arg, build_detector, supervised
    from models.registry import Registry

    cfg = load_config(config)
    sink = AgentSink(data_dir)
    # The agent returns the camera section of the desired config: its keys that name camera config
    # fields are merged over the file; others (e.g. signal_phase) are for signal groups of kind agent.
    overlay = {k: v for k, v in _desired(sink).items() if k in CameraConfig.model_fields}
    if overlay:
        cfg = config_from_dict(_merge(cfg.model_dump(mode="json"), overlay), origin="desired config 'camera'")
    cfg = cfg.model_copy(update={"source": apply_source_arg(cfg.source, source)})
    detector = build_detector(cfg.detector)
    reader = None
    if cfg.evidence.ocr:
        try:
            reader = RapidOcrPlateReader(
                Registry.load(models_dir=cfg.detector.models_dir), min_score=cfg.evidence.ocr_min_score
            )
        except CameraRoleError as exc:
            log.warning("camera: %s; violations will carry no plate text", exc)
    if evidence_url or cfg.evidence.upload_url:
        log.warning(
            "camera: --evidence-url / evidence.upload_url are ignored: evidence images travel inside "
            "the signed traffic.violation event through the agent (remove the setting)"
        )
    signals = {
        name: build_signal(s, _desired_getter(sink), lambda: dict(sink.client.call("signal_phase")))
        for name, s in cfg.signals.items()
    }
    runner = CameraRunner(
        cfg,
        supervised(cfg.source),
        sink,
        detector=detector,
        evidence=EvidenceBuilder(cfg.evidence, cfg.camera_id, reader, detector),
        signals=signals,
        live=cfg.source.kind in LIVE_KINDS or cfg.source.realtime,
    )
    return runner, sink.client


def _desired(sink: Any) -> dict[str, Any]:
    try:
        return dict(sink.desired_config())
    except Exception as exc:  # agent not reachable yet: run with the file config
        log.warning("camera: cannot read desired config from the agent (%s); using the file config", exc)
        return {}


def _desired_getter(sink: Any) -> Any:
    return lambda: dict(sink.desired_config())


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Roadside camera: analyse clips offline, run the camera role.", no_args_is_help=True
    )
    group.command("analyze")(_analyze)
    group.command("run")(_run)
    app.add_typer(group, name="camera")
