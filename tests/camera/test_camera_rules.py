"""Rules: direction convention, hysteresis, segment extent, dwell, wrong way, red light, signal phases."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from agent.camera.config import (
    CameraConfig,
    DwellZoneConfig,
    LineConfig,
    RedLightConfig,
    SignalConfig,
    WrongWayConfig,
)
from agent.camera.geometry import anchor_point
from agent.camera.kalman import KalmanBox
from agent.camera.rules import Crossing, RuleEngine, Violation
from agent.camera.signal import AgentPhase, CallbackPhase, FixedPhase, SchedulePhase, build_signal
from agent.camera.tracker import Track

FPS = 10.0


def _track(track_id: int = 1) -> Track:
    box = (0.0, 0.0, 10.0, 10.0)
    return Track(id=track_id, kf=KalmanBox(box), score=0.9, born_t=0.0, state="active", last_box=box)


def _drive(
    engine: RuleEngine, track: Track, points: Sequence[tuple[float, float]], t0: float = 0.0
) -> Iterator[tuple[float, list[Crossing], list[Violation]]]:
    for i, (x, y) in enumerate(points):
        t = t0 + i / FPS
        track.last_box = (x - 5, y - 5, x + 5, y + 5)
        track.updated = True
        track.history.append((t, anchor_point(track.last_box, "center")))
        crossings, violations = engine.process([track], t, 1000.0 + t, i)
        yield t, crossings, violations


def _crossings(config: CameraConfig, points: Sequence[tuple[float, float]]) -> list[str]:
    engine = RuleEngine(config)
    return [c.direction for _t, cs, _v in _drive(engine, _track(), points) for c in cs]


def test_direction_names_follow_the_documented_convention() -> None:
    horizontal = CameraConfig(lines=[LineConfig(id="h", points=((0, 100), (200, 100)))])
    assert _crossings(horizontal, [(50, 60 + 4 * i) for i in range(20)]) == ["left_to_right"], "moving down"
    assert _crossings(horizontal, [(50, 140 - 4 * i) for i in range(20)]) == ["right_to_left"], "moving up"
    downward = CameraConfig(lines=[LineConfig(id="v", points=((100, 0), (100, 200)))])
    assert _crossings(downward, [(60 + 4 * i, 50) for i in range(20)]) == ["right_to_left"], "moving right"
    reversed_line = CameraConfig(lines=[LineConfig(id="h", points=((200, 100), (0, 100)))])
    assert _crossings(reversed_line, [(50, 60 + 4 * i) for i in range(20)]) == ["right_to_left"]


def test_jitter_on_the_line_and_recrossing_count_once() -> None:
    config = CameraConfig(lines=[LineConfig(id="h", points=((0, 100), (200, 100)), hysteresis_px=3)])
    jitter = (
        [(50, 90.0), (50, 95.0)] + [(50, 100 + (1.5 if i % 2 else -1.5)) for i in range(10)] + [(50, 97.0)]
    )
    assert _crossings(config, jitter) == []
    back_and_forth = [(50, 80 + 5 * i) for i in range(9)] + [(50, 120 - 5 * i) for i in range(9)]
    assert _crossings(config, back_and_forth) == ["left_to_right"]


def test_passing_beside_the_segment_is_not_a_crossing() -> None:
    config = CameraConfig(lines=[LineConfig(id="h", points=((0, 100), (100, 100)))])
    assert _crossings(config, [(150, 60 + 4 * i) for i in range(20)]) == []
    assert _crossings(config, [(90, 60 + 4 * i) for i in range(20)]) == ["left_to_right"]


ZONE = [(100.0, 50.0), (200.0, 50.0), (200.0, 150.0), (100.0, 150.0)]


def test_dwell_fires_once_after_the_limit_and_not_for_moving_or_outside() -> None:
    config = CameraConfig(zones=[DwellZoneConfig(id="bus_stop", polygon=ZONE, max_dwell_s=3.0)])
    engine = RuleEngine(config)
    arrive = [(60 + 8 * i, 100) for i in range(10)]  # reaches x=132 inside the zone
    stay = [(132, 100)] * 50  # 5 s stopped
    fired = [(t, v) for t, _c, vs in _drive(engine, _track(), arrive + stay) for v in vs]
    assert len(fired) == 1
    t, violation = fired[0]
    assert violation.rule == "illegal_stopping" and violation.rule_id == "bus_stop"
    stopped_at = next(i for i, p in enumerate(arrive + stay) if p == (132, 100)) / FPS
    assert stopped_at + 3.0 <= t <= stopped_at + 3.0 + 1.2  # includes the 1 s speed window

    slow_traffic = [(60 + 2 * i, 100) for i in range(70)]  # 20 px/s through the zone
    assert not [v for _t, _c, vs in _drive(RuleEngine(config), _track(), slow_traffic) for v in vs]
    parked_outside = [(50, 100)] * 60
    assert not [v for _t, _c, vs in _drive(RuleEngine(config), _track(), parked_outside) for v in vs]


def test_wrong_way_fires_against_the_allowed_direction_only() -> None:
    config = CameraConfig(wrong_way=[WrongWayConfig(id="one_way", polygon=ZONE, allowed=(1.0, 0.0))])
    against = [(210 - 5 * i, 100) for i in range(30)]
    fired = [v for _t, _c, vs in _drive(RuleEngine(config), _track(), against) for v in vs]
    assert len(fired) == 1 and fired[0].rule == "wrong_way" and fired[0].details["angle_deg"] == 180.0
    along = [(90 + 5 * i, 100) for i in range(30)]
    assert not [v for _t, _c, vs in _drive(RuleEngine(config), _track(), along) for v in vs]
    across = [(150, 40 + 5 * i) for i in range(30)]  # crossing the one-way street: 90 degrees is allowed
    assert not [v for _t, _c, vs in _drive(RuleEngine(config), _track(), across) for v in vs]


def _red_light_config(grace: float = 0.0) -> CameraConfig:
    return CameraConfig(
        lines=[LineConfig(id="stop", points=((0, 100), (200, 100)))],
        signals={"main": SignalConfig(kind="schedule", cycle_s=20, green_s=8, amber_s=2, offset_s=1000)},
        red_light=[
            RedLightConfig(id="rl", line="stop", direction="left_to_right", signal="main", grace_s=grace)
        ],
    )


@pytest.mark.parametrize(("start", "expected"), [(0.0, 0), (7.0, 0), (9.0, 1), (15.0, 1)])
def test_red_light_only_when_crossing_on_red(start: float, expected: int) -> None:
    config = _red_light_config()
    engine = RuleEngine(config, {"main": build_signal(config.signals["main"])})
    # crossing happens 1.0-1.1 s after start: green (0-8), amber (8-10), red (10-20)
    path = [(50, 60 + 4 * i) for i in range(20)]
    fired = [v for _t, _c, vs in _drive(engine, _track(), path, t0=start) for v in vs]
    assert len(fired) == expected
    if fired:
        assert fired[0].details["phase"] == "red" and fired[0].details["direction"] == "left_to_right"


def test_red_light_ignores_the_other_direction_and_respects_grace() -> None:
    config = _red_light_config()
    engine = RuleEngine(config, {"main": build_signal(config.signals["main"])})
    outbound = [(50, 140 - 4 * i) for i in range(20)]
    assert not [v for _t, _c, vs in _drive(engine, _track(), outbound, t0=12.0) for v in vs]
    graced = _red_light_config(grace=5.0)
    engine2 = RuleEngine(graced, {"main": build_signal(graced.signals["main"])})
    engine2.process([], 1000.0 + 10.0, 1000.0 + 10.0, 0)  # red observed from t=10
    fired = [
        v
        for _t, _c, vs in _drive(engine2, _track(), [(50, 60 + 4 * i) for i in range(20)], t0=10.5)
        for v in vs
    ]
    assert not fired, "crossing 1.5 s into red is inside the 5 s grace"


def test_signal_sources() -> None:
    plan = SchedulePhase(cycle_s=60, green_s=25, amber_s=3, offset_s=10)
    assert [plan.phase(10 + t) for t in (0, 24.9, 25, 27.9, 28, 59.9, 60)] == [
        "green",
        "green",
        "amber",
        "amber",
        "red",
        "red",
        "green",
    ]
    assert plan.red_since(10 + 30) == pytest.approx(2.0)
    assert FixedPhase("red").phase(0) == "red"
    assert CallbackPhase(lambda: "green").phase(0) == "green"
    assert CallbackPhase(lambda: "purple").phase(0) == "unknown"
    values = iter([{"signal_phase": "red"}, {"signal_phase": "green"}])
    agent = AgentPhase(lambda: next(values), "signal_phase", ttl_s=0.0)
    assert agent.phase(0) == "red" and agent.phase(0) == "green"

    def broken() -> dict[str, str]:
        raise OSError("agent restarting")

    assert AgentPhase(broken, "signal_phase", ttl_s=0.0).phase(0) == "unknown"
    assert build_signal(SignalConfig(kind="agent")).phase(0) == "unknown", "no agent: unknown, never red"
