"""Camera configuration: TOML loading, unknown keys, references, frame bounds, --line parsing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.camera.config import CameraConfig, config_from_dict, load_config, parse_line_arg
from agent.camera.errors import CameraConfigError
from models.registry import toml_loads

EXAMPLE = """
camera_id = "cam-hn-gbt-0042"

[source]
kind = "rtsp"
target = "rtsp://10.1.2.3/stream1"

[detector]
providers = ["tensorrt", "cuda", "cpu"]
threads = 4

[[lines]]
id = "stop_north"
points = [[40, 300], [700, 300]]
classes = ["motorcycle", "car", "vehicle"]
direction_names = { left_to_right = "southbound", right_to_left = "northbound" }

[[zones]]
id = "bus_stop"
polygon = [[500, 200], [760, 200], [760, 420], [500, 420]]
max_dwell_s = 60

[[wrong_way]]
id = "one_way"
polygon = [[0, 0], [300, 0], [300, 200], [0, 200]]
allowed = [1, 0]

[signals.north]
kind = "schedule"
cycle_s = 90
green_s = 40
amber_s = 3

[[red_light]]
id = "red_north"
line = "stop_north"
direction = "left_to_right"
signal = "north"
"""


def test_full_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "camera.toml"
    path.write_text(EXAMPLE)
    cfg = load_config(path)
    assert cfg.camera_id == "cam-hn-gbt-0042" and cfg.source.kind == "rtsp"
    assert cfg.lines[0].direction_names["left_to_right"] == "southbound"
    assert cfg.red_light[0].signal == "north" and cfg.detector.providers == ["tensorrt", "cuda", "cpu"]
    cfg.check_frame(768, 432)


def test_unknown_key_is_refused_naming_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "camera.toml"
    path.write_text(EXAMPLE.replace("threads = 4", "threads = 4\nthreds = 2"))
    with pytest.raises(
        CameraConfigError, match=r"camera\.toml: field detector\.threds: Extra inputs are not permitted"
    ):
        load_config(path)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "camera.toml"
    path.write_text("[[lines]\nid = ")
    with pytest.raises(CameraConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(CameraConfigError, match="cannot read camera config"):
        load_config(tmp_path / "absent.toml")


def test_references_and_values_are_checked() -> None:
    with pytest.raises(CameraConfigError, match="names line 'nope', which is not in"):
        config_from_dict(
            {"red_light": [{"id": "r", "line": "nope", "direction": "left_to_right", "signal": "s"}]}
        )
    with pytest.raises(CameraConfigError, match="duplicate line id"):
        config_from_dict({"lines": [{"id": "a", "points": [[0, 0], [5, 5]]}] * 2})
    with pytest.raises(CameraConfigError, match="unknown class"):
        config_from_dict({"lines": [{"id": "a", "points": [[0, 0], [5, 5]], "classes": ["tank"]}]})
    with pytest.raises(CameraConfigError, match="multiple of 32"):
        config_from_dict({"detector": {"input_size": 400}})
    with pytest.raises(CameraConfigError, match="must not be"):
        config_from_dict({"wrong_way": [{"id": "w", "polygon": [[0, 0], [1, 0], [1, 1]], "allowed": [0, 0]}]})
    with pytest.raises(CameraConfigError, match="green_s \\+ amber_s is longer than cycle_s"):
        config_from_dict({"signals": {"s": {"kind": "schedule", "cycle_s": 30, "green_s": 30, "amber_s": 3}}})


def test_a_line_outside_the_frame_is_a_clear_error() -> None:
    cfg = config_from_dict({"lines": [{"id": "far", "points": [[0, 300], [900, 300]]}]})
    with pytest.raises(
        CameraConfigError, match=r"line 'far': point \(900, 300\) is outside the 768x432 camera frame"
    ):
        cfg.check_frame(768, 432)
    zone = config_from_dict(
        {"zones": [{"id": "z", "polygon": [[0, 0], [10, 0], [10, 500]], "max_dwell_s": 5}]}
    )
    with pytest.raises(CameraConfigError, match="zone 'z'"):
        zone.check_frame(768, 432)


coord = st.floats(min_value=-5000, max_value=5000, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(x1=coord, y1=coord, x2=coord, y2=coord)
def test_line_argument_round_trips(x1: float, y1: float, x2: float, y2: float) -> None:
    text = f"{x1!r},{y1!r},{x2!r},{y2!r}"
    if math.dist((x1, y1), (x2, y2)) < 1.0:
        with pytest.raises(CameraConfigError, match="at least 1 pixel apart"):
            parse_line_arg(text)
        return
    line = parse_line_arg(text, 3)
    assert line.id == "line3" and line.points == ((x1, y1), (x2, y2))
    again = config_from_dict({"lines": [line.model_dump(mode="json")]})
    assert again.lines[0] == line


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_line_argument_never_crashes(text: str) -> None:
    try:
        line = parse_line_arg(text)
    except CameraConfigError as exc:
        assert "--line" in str(exc)
    else:
        assert all(math.isfinite(v) for p in line.points for v in p)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["camera_id", "lines", "zones", "detector", "motion", "bogus", "counts"]),
        st.one_of(st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=3), st.just({})),
        max_size=4,
    )
)
def test_arbitrary_config_documents_validate_or_fail_cleanly(doc: dict[str, Any]) -> None:
    try:
        cfg = config_from_dict(doc)
    except CameraConfigError as exc:
        assert str(exc).startswith("config: field ")
    else:
        assert isinstance(cfg, CameraConfig)
        text = tomli_w.dumps(cfg.model_dump(mode="json", exclude_none=True))
        assert config_from_dict(toml_loads(text)) == cfg, "a valid config survives a TOML round trip"


def test_every_config_field_is_documented() -> None:
    from pydantic import BaseModel

    from agent.camera import config as c

    doc = (Path(__file__).resolve().parents[2] / "docs" / "camera.md").read_text()
    models: list[type[BaseModel]] = [
        c.CameraConfig,
        c.SourceConfig,
        c.DetectorConfig,
        c.MotionConfig,
        c.TrackerConfig,
        c.LineConfig,
        c.DwellZoneConfig,
        c.WrongWayConfig,
        c.RedLightConfig,
        c.LaneUseConfig,
        c.StopLineConfig,
        c.SpeedConfig,
        c.SignalConfig,
        c.EvidenceConfig,
        c.CountsConfig,
    ]
    missing = [
        f"{m.__name__}.{name}"
        for m in models
        for name in m.model_fields
        if f"`{name}`" not in doc and f"[{name}" not in doc  # sections appear as [name] / [[name]]
    ]
    assert not missing, f"document these in docs/camera.md: {missing}"
    for model in models:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


def test_shipped_demo_config_is_valid() -> None:
    demo = Path(__file__).resolve().parents[2] / "agent" / "camera" / "examples" / "demo.toml"
    cfg = load_config(demo)
    cfg.check_frame(320, 240)
    assert cfg.source.kind == "synthetic" and cfg.source.realtime and cfg.red_light
