"""Camera role configuration (TOML), validated with pydantic; unknown keys are refused.

Coordinates are source-image pixels, x to the right and y down. A counting line goes from its
first point A to its second point B; its *left* and *right* sides are as seen by someone standing
at A looking towards B on the screen. A vehicle moving from the left side to the right side is
counted as ``left_to_right``; the other way ``right_to_left``. Example: a horizontal line drawn
from the left edge to the right edge has the top of the image on its left, so traffic moving down
the image is ``left_to_right``. Each line can rename its two directions (``direction_names``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.camera.detector import VEHICLE_CLASSES, Provider
from agent.camera.errors import CameraConfigError
from models.registry import toml_loads

Point = tuple[float, float]
Direction = Literal["left_to_right", "right_to_left"]
Phase = Literal["red", "amber", "green", "unknown"]
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
COUNT_CLASSES = (*VEHICLE_CLASSES, "vehicle")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_id(value: str) -> str:
    if not ID_RE.match(value):
        raise ValueError("use 1-64 letters, digits, '_', '.', '-' (starting with a letter or digit)")
    return value


def _check_points(points: list[Point] | tuple[Point, ...]) -> None:
    for x, y in points:
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError("coordinates must be finite numbers")


def _check_classes(value: list[str] | None) -> list[str] | None:
    if value is not None:
        bad = [c for c in value if c not in COUNT_CLASSES]
        if bad:
            raise ValueError(f"unknown class(es) {bad}; use {list(COUNT_CLASSES)}")
    return value


class SourceConfig(_Section):
    kind: Literal["file", "v4l2", "gstreamer", "rtsp", "picamera2", "synthetic"] = Field(
        default="synthetic",
        description="Camera backend: file, v4l2, gstreamer, rtsp, picamera2 or synthetic.",
    )
    target: str = Field(
        default="",
        description="File path, /dev/videoN, GStreamer pipeline ending in appsink, URL, or scene name.",
    )
    width: int | None = Field(default=None, gt=0, description="Requested capture width (live cameras).")
    height: int | None = Field(default=None, gt=0, description="Requested capture height (live cameras).")
    fps: float | None = Field(default=None, gt=0, description="Requested capture frame rate (live cameras).")
    loop: bool = Field(default=False, description="Restart a video file at its end (demo).")
    realtime: bool = Field(default=False, description="Pace a file or synthetic source at its frame rate.")
    reconnect_initial_s: float = Field(
        default=0.5, gt=0, description="First reconnect delay after a failure."
    )
    reconnect_max_s: float = Field(default=30.0, gt=0, description="Cap of the reconnect backoff.")


class DetectorConfig(_Section):
    enabled: bool = Field(default=True, description="Run the object detector (off: motion blobs only).")
    model: str = Field(default="yolox_nano", description="Registry name of the detector model.")
    models_dir: Path | None = Field(
        default=None, description="Models folder (default CITYEDGE_MODELS_DIR / ../shared/models)."
    )
    providers: list[Provider] = Field(
        default_factory=lambda: list[Provider](["cpu"]),
        description="Execution providers in order of preference: tensorrt, cuda, openvino, cpu "
        "(CPU is always the fallback).",
    )
    threads: int = Field(default=2, ge=1, le=64, description="CPU threads for inference (intra-op).")
    input_size: int | None = Field(
        default=None,
        ge=64,
        le=1280,
        description="Square input size (multiple of 32); default from the registry.",
    )
    score_threshold: float = Field(default=0.3, ge=0.0, le=1.0, description="Minimum detection score kept.")
    nms_threshold: float = Field(
        default=0.45, gt=0.0, le=1.0, description="IoU above which same-class boxes are merged."
    )
    roi: Literal["full", "motion"] = Field(
        default="motion",
        description="'motion': run on the moving region only (more pixels for small objects).",
    )
    stride_while_moving: int = Field(
        default=2,
        ge=1,
        le=30,
        description="While something moves, run on every Nth frame (blobs carry the tracks in between).",
    )
    every_frame: bool = Field(
        default=False,
        description="Run on every frame even when nothing moves (benchmarks, very busy junctions).",
    )
    refresh_s: float = Field(
        default=2.0,
        ge=0.0,
        description="Run on the whole frame at least this often while anything is tracked.",
    )
    trt_cache_dir: Path | None = Field(default=None, description="TensorRT engine cache folder (Jetson).")

    @field_validator("input_size")
    @classmethod
    def _multiple_of_32(cls, value: int | None) -> int | None:
        if value is not None and value % 32:
            raise ValueError("input_size must be a multiple of 32 (YOLOX strides 8/16/32)")
        return value


class MotionConfig(_Section):
    enabled: bool = Field(default=True, description="Run the detector only when something moves.")
    width: int = Field(
        default=160, ge=32, le=1280, description="Width of the downscaled frame the motion gate analyses."
    )
    threshold: int = Field(
        default=22, ge=1, le=255, description="Grey-level change that counts as motion (per camera)."
    )
    low_light: bool = Field(
        default=True,
        description="Lower the threshold in proportion when the scene is darker than daylight (night).",
    )
    min_area: float = Field(
        default=0.0008, ge=0.0, le=1.0, description="Share of the frame that must change to call it motion."
    )
    min_blob_area: float = Field(
        default=0.0012,
        ge=0.0,
        le=1.0,
        description="Smallest moving blob kept as a vehicle candidate (share of frame).",
    )
    bg_alpha: float = Field(
        default=0.05, gt=0.0, le=1.0, description="Background learning rate where nothing moves."
    )
    blobs: bool = Field(
        default=True, description="Track moving blobs the detector does not label as generic 'vehicle'."
    )


class TrackerConfig(_Section):
    high_score: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Detections at or above this are matched first."
    )
    low_score: float = Field(default=0.1, ge=0.0, le=1.0, description="Detections below this are ignored.")
    new_track_score: float = Field(default=0.5, ge=0.0, le=1.0, description="Minimum score to start a track.")
    match_iou: float = Field(
        default=0.2, ge=0.0, le=1.0, description="Minimum IoU to match a high-score detection."
    )
    low_match_iou: float = Field(
        default=0.4, ge=0.0, le=1.0, description="Minimum IoU in the low-score stage."
    )
    min_hits: int = Field(
        default=3, ge=1, le=100, description="Consecutive hits before a track counts (birth)."
    )
    max_lost_frames: int = Field(
        default=12, ge=1, le=1000, description="Frames a lost track is kept (death)."
    )
    blob_score: float = Field(default=0.6, ge=0.0, le=1.0, description="Score given to moving blobs.")
    hold_stationary: bool = Field(
        default=True, description="Keep a track whose image patch has not changed (stopped vehicle)."
    )
    anchor: Literal["center", "bottom"] = Field(
        default="center", description="Track point used for lines and zones."
    )
    split_wide_blobs: bool = Field(
        default=True,
        description="Cut a moving blob wider than one vehicle across the travel direction (riders abreast).",
    )
    expected_size: list[tuple[float, float, float]] = Field(
        default_factory=list,
        description="Site survey [y, width, height] of one motorbike at image rows (default: learned).",
    )


class LineConfig(_Section):
    id: str = Field(description="Line id used in counts (letters, digits, _ . -).")
    points: tuple[Point, Point] = Field(
        description="A and B, source pixels; direction names are relative to A→B."
    )
    classes: list[str] | None = Field(
        default=None, description="Classes counted (default all vehicle classes)."
    )
    direction_names: dict[Direction, str] = Field(
        default_factory=dict,
        description="Optional names for left_to_right / right_to_left (e.g. northbound).",
    )
    hysteresis_px: float = Field(
        default=2.0, ge=0.0, description="Distance from the line before a side counts."
    )

    _id = field_validator("id")(_check_id)
    _classes = field_validator("classes")(_check_classes)

    @field_validator("points")
    @classmethod
    def _distinct(cls, value: tuple[Point, Point]) -> tuple[Point, Point]:
        _check_points(value)
        if math.dist(value[0], value[1]) < 1.0:
            raise ValueError("the two points of a line must be at least 1 pixel apart")
        return value


class _ZoneBase(_Section):
    id: str = Field(description="Rule id used in events.")
    polygon: list[Point] = Field(min_length=3, description="Zone corners in source pixels (3 or more).")
    classes: list[str] | None = Field(
        default=None, description="Classes the rule applies to (default all vehicles)."
    )

    _id = field_validator("id")(_check_id)
    _classes = field_validator("classes")(_check_classes)

    @field_validator("polygon")
    @classmethod
    def _finite(cls, value: list[Point]) -> list[Point]:
        _check_points(value)
        return value


class DwellZoneConfig(_ZoneBase):
    max_dwell_s: float = Field(gt=0, description="Stopping longer than this inside the zone is a violation.")
    stationary_speed_px_s: float = Field(
        default=12.0, ge=0, description="Below this speed a vehicle counts as stopped."
    )


class WrongWayConfig(_ZoneBase):
    allowed: Point = Field(description="Allowed direction of travel as a vector (dx, dy) in image pixels.")
    max_angle_deg: float = Field(
        default=110.0, gt=0, le=180, description="Heading further than this from 'allowed' is wrong-way."
    )
    min_travel_px: float = Field(
        default=25.0, gt=0, description="Distance travelled inside the zone before judging."
    )

    @field_validator("allowed")
    @classmethod
    def _nonzero(cls, value: Point) -> Point:
        _check_points([value])
        if math.hypot(*value) == 0:
            raise ValueError("the allowed direction vector must not be (0, 0)")
        return value


class RedLightConfig(_Section):
    id: str = Field(description="Rule id used in events.")
    line: str = Field(description="Id of the stop line (one of [[lines]]).")
    direction: Direction = Field(description="Crossing direction that enters the junction.")
    signal: str = Field(description="Id of the signal group ([signals.ID]) controlling this stop line.")
    grace_s: float = Field(default=0.0, ge=0, description="Crossings this soon after red starts are allowed.")
    classes: list[str] | None = Field(default=None, description="Classes the rule applies to.")

    _id = field_validator("id")(_check_id)
    _classes = field_validator("classes")(_check_classes)


class LaneUseConfig(_ZoneBase):
    """A lane (polygon) that some vehicle classes may not use, e.g. motorbikes in a car lane."""

    forbidden: list[str] = Field(description="Classes not allowed in this lane (e.g. ['motorcycle']).")
    min_time_s: float = Field(
        default=1.0, ge=0, description="Time a vehicle must spend inside the lane before it is judged."
    )
    min_travel_px: float = Field(
        default=20.0,
        ge=0,
        description="Distance travelled inside the lane (a vehicle crossing it to turn is not using it).",
    )

    _forbidden = field_validator("forbidden")(_check_classes)


class StopLineConfig(_Section):
    """Stopping beyond the stop line while the signal is red."""

    id: str = Field(description="Rule id used in events.")
    line: str = Field(description="Id of the stop line (one of [[lines]]).")
    direction: Direction = Field(description="Crossing direction that enters the junction.")
    signal: str = Field(description="Id of the signal group ([signals.ID]) controlling this stop line.")
    min_beyond_px: float = Field(
        default=8.0, ge=0, description="How far past the line the reference point must stand."
    )
    min_stop_s: float = Field(default=1.0, ge=0, description="How long it must stand there while red.")
    stationary_speed_px_s: float = Field(
        default=12.0, ge=0, description="Below this speed a vehicle counts as stopped."
    )
    classes: list[str] | None = Field(default=None, description="Classes the rule applies to.")

    _id = field_validator("id")(_check_id)
    _classes = field_validator("classes")(_check_classes)


class SpeedConfig(_Section):
    """Speed from the time between two lines a surveyed distance apart."""

    id: str = Field(description="Rule id used in events.")
    entry: str = Field(description="Id of the first line crossed (one of [[lines]]).")
    exit: str = Field(description="Id of the second line crossed.")
    direction: Direction = Field(description="Crossing direction on both lines.")
    distance_m: float = Field(gt=0, description="Distance between the two lines on the road, in metres.")
    limit_kmh: float = Field(gt=0, description="Speed limit; faster is a violation.")
    tolerance_kmh: float = Field(
        default=3.0, ge=0, description="Margin above the limit before a violation (measurement error)."
    )
    max_gap_s: float = Field(default=30.0, gt=0, description="Longest time between the lines still paired.")
    classes: list[str] | None = Field(default=None, description="Classes the rule applies to.")

    _id = field_validator("id")(_check_id)
    _classes = field_validator("classes")(_check_classes)


class SignalConfig(_Section):
    kind: Literal["fixed", "schedule", "agent", "board"] = Field(
        description=(
            "fixed: constant phase; schedule: fixed-time plan; agent: value pushed in desired config; "
            "board: the cabinet I/O board's signal input, read through the agent (docs/iobus.md)."
        )
    )
    phase: Phase = Field(default="unknown", description="Phase for kind=fixed.")
    cycle_s: float = Field(default=90.0, gt=0, description="Schedule: cycle length.")
    green_s: float = Field(default=40.0, ge=0, description="Schedule: green time from the cycle start.")
    amber_s: float = Field(
        default=3.0, ge=0, description="Schedule: amber time after green; red for the rest."
    )
    offset_s: float = Field(
        default=0.0, description="Schedule: cycle start offset (seconds after the Unix epoch, mod cycle)."
    )
    key: str = Field(
        default="signal_phase", description="Agent: key in the camera's desired config holding the phase."
    )

    @model_validator(mode="after")
    def _plan(self) -> SignalConfig:
        if self.kind == "schedule" and self.green_s + self.amber_s > self.cycle_s:
            raise ValueError("green_s + amber_s is longer than cycle_s")
        return self


class EvidenceConfig(_Section):
    upload_url: str | None = Field(
        default=None,
        description="Ignored (kept so older files load): evidence images travel inside the signed event.",
    )
    inline_max_bytes: int = Field(
        default=48 * 1024,
        ge=0,
        le=96 * 1024,
        description="Largest evidence image; a larger one is shrunk (all images of one violation together "
        "stay under 160 KiB, so the signed event fits one MQTT message).",
    )
    jpeg_quality: int = Field(default=85, ge=30, le=100, description="JPEG quality of evidence images.")
    ocr: bool = Field(default=True, description="Read the plate of the offending vehicle with PP-OCR.")
    ocr_min_score: float = Field(
        default=0.6, ge=0, le=1, description="Plate text below this confidence is reported as not legible."
    )
    plate_band: float = Field(
        default=0.45, gt=0, le=1, description="Lower share of other vehicles' boxes blurred (plate area)."
    )
    upload_retries: int = Field(default=3, ge=0, le=20, description="Ignored (kept so older files load).")
    upload_timeout_s: float = Field(default=10.0, gt=0, description="Ignored (kept so older files load).")


class CountsConfig(_Section):
    window_s: int = Field(
        default=60, ge=1, le=3600, description="Length of a count window (traffic.count per window)."
    )


class CameraConfig(_Section):
    camera_id: str = Field(
        default="camera-1", description="Camera name in events (one device can run one camera)."
    )
    source: SourceConfig = Field(default_factory=SourceConfig, description="Where frames come from.")
    detector: DetectorConfig = Field(default_factory=DetectorConfig, description="Object detector.")
    motion: MotionConfig = Field(default_factory=MotionConfig, description="Motion gate.")
    tracker: TrackerConfig = Field(default_factory=TrackerConfig, description="Tracker.")
    lines: list[LineConfig] = Field(default_factory=list, description="Counting / stop lines.")
    zones: list[DwellZoneConfig] = Field(default_factory=list, description="No-stopping zones.")
    wrong_way: list[WrongWayConfig] = Field(default_factory=list, description="One-way zones.")
    red_light: list[RedLightConfig] = Field(default_factory=list, description="Red-light rules.")
    lane_use: list[LaneUseConfig] = Field(default_factory=list, description="Lane-use rules.")
    stop_line: list[StopLineConfig] = Field(
        default_factory=list, description="Stopping beyond the stop line on red."
    )
    speed: list[SpeedConfig] = Field(default_factory=list, description="Two-line speed rules.")
    signals: dict[str, SignalConfig] = Field(default_factory=dict, description="Signal groups by id.")
    evidence: EvidenceConfig = Field(default_factory=EvidenceConfig, description="Violation evidence.")
    counts: CountsConfig = Field(default_factory=CountsConfig, description="Count windows.")
    metrics_interval_s: float = Field(
        default=10.0, gt=0, description="How often camera metrics go to the agent."
    )

    @model_validator(mode="after")
    def _references(self) -> CameraConfig:
        ids = [line.id for line in self.lines]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"duplicate line id(s) {sorted(dup)}")
        for rule in self.red_light:
            if rule.line not in ids:
                raise ValueError(f"red_light {rule.id!r} names line {rule.line!r}, which is not in [[lines]]")
            if rule.signal not in self.signals:
                raise ValueError(
                    f"red_light {rule.id!r} names signal {rule.signal!r}, which is not in [signals]"
                )
        for stop in self.stop_line:
            if stop.line not in ids:
                raise ValueError(f"stop_line {stop.id!r} names line {stop.line!r}, which is not in [[lines]]")
            if stop.signal not in self.signals:
                raise ValueError(
                    f"stop_line {stop.id!r} names signal {stop.signal!r}, which is not in [signals]"
                )
        for speed in self.speed:
            for name in (speed.entry, speed.exit):
                if name not in ids:
                    raise ValueError(f"speed {speed.id!r} names line {name!r}, which is not in [[lines]]")
            if speed.entry == speed.exit:
                raise ValueError(f"speed {speed.id!r}: entry and exit must be two different lines")
        return self

    def check_frame(self, width: int, height: int) -> None:
        """Raise CameraConfigError if any line or zone point lies outside a width x height frame."""
        shapes: list[tuple[str, list[Point]]] = [(f"line {x.id!r}", list(x.points)) for x in self.lines]
        shapes += [(f"zone {z.id!r}", z.polygon) for z in self.zones]
        shapes += [(f"wrong_way {z.id!r}", z.polygon) for z in self.wrong_way]
        shapes += [(f"lane_use {z.id!r}", z.polygon) for z in self.lane_use]
        for what, points in shapes:
            for x, y in points:
                if not (0 <= x <= width and 0 <= y <= height):
                    raise CameraConfigError(
                        f"{what}: point ({x:g}, {y:g}) is outside the {width}x{height} camera frame "
                        f"(x must be 0..{width}, y 0..{height})"
                    )


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    return f"field {where}: {first['msg']}"


def config_from_dict(data: dict[str, Any], *, origin: str = "config") -> CameraConfig:
    try:
        return CameraConfig.model_validate(data)
    except ValidationError as exc:
        raise CameraConfigError(f"{origin}: {_describe(exc)}") from exc


def load_config(path: Path | None) -> CameraConfig:
    """Read a camera TOML file (None → defaults). CameraConfigError names the file and field."""
    if path is None:
        return CameraConfig()
    try:
        data = toml_loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CameraConfigError(f"cannot read camera config {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise CameraConfigError(f"{path}: not valid TOML: {exc}") from exc
    return config_from_dict(data, origin=str(path))


def parse_line_arg(text: str, index: int = 1) -> LineConfig:
    """``X1,Y1,X2,Y2`` (source pixels) → a counting line named ``lineN``."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        raise CameraConfigError(f"--line {text!r}: give four numbers X1,Y1,X2,Y2 (source pixels)")
    try:
        x1, y1, x2, y2 = (float(p) for p in parts)
    except ValueError:
        raise CameraConfigError(f"--line {text!r}: X1,Y1,X2,Y2 must be numbers") from None
    try:
        return LineConfig(id=f"line{index}", points=((x1, y1), (x2, y2)))
    except ValidationError as exc:
        raise CameraConfigError(f"--line {text!r}: {exc.errors()[0]['msg']}") from exc
