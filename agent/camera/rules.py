"""Per-camera rules over tracks: counting lines, no-stopping zones, wrong-way zones, red light.

A track is judged at its anchor point (``tracker.anchor``). Each rule fires at most once per track.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from agent.camera.config import (
    COUNT_CLASSES,
    CameraConfig,
    Direction,
    DwellZoneConfig,
    LaneUseConfig,
    LineConfig,
    SpeedConfig,
    StopLineConfig,
    WrongWayConfig,
)
from agent.camera.geometry import (
    Box,
    Point,
    anchor_point,
    angle_between,
    crossing_param,
    point_in_polygon,
    signed_distance,
)
from agent.camera.signal import SignalPhase
from agent.camera.tracker import Track

RuleKind = Literal["red_light", "wrong_way", "illegal_stopping", "lane_use", "stop_line", "speeding"]


@dataclass(frozen=True)
class Crossing:
    line_id: str
    direction: Direction
    track: Track
    t: float
    wall: float
    seq: int
    clear: bool = True
    """No other track touched this one when it crossed (crowded crossings are where counts err)."""


def _touching(box: Box, others: list[Box]) -> bool:
    w, h = (box[2] - box[0]) * 0.1, (box[3] - box[1]) * 0.1
    grown = (box[0] - w, box[1] - h, box[2] + w, box[3] + h)
    return any(
        min(grown[2], o[2]) > max(grown[0], o[0]) and min(grown[3], o[3]) > max(grown[1], o[1])
        for o in others
    )


@dataclass(frozen=True)
class Violation:
    rule: RuleKind
    rule_id: str
    track: Track
    box: Box
    t: float
    wall: float
    seq: int
    details: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    """The rule's configuration (and its signal plan), carried inside the signed event."""


def _params(rule: BaseModel, signal: BaseModel | None = None) -> dict[str, Any]:
    """A rule's parameters as they go into the signed event (with its signal group's plan)."""
    out: dict[str, Any] = rule.model_dump(mode="json")
    if signal is not None:
        out["signal_plan"] = signal.model_dump(mode="json")
    return out


def _applies(classes: list[str] | None, track: Track) -> bool:
    return track.label in (classes if classes is not None else COUNT_CLASSES)


class LineCounter:
    """Counts each track once when its anchor moves from one settled side of A→B to the other."""

    def __init__(self, config: LineConfig) -> None:
        self.config = config
        self.a, self.b = config.points
        self._side: dict[int, tuple[int, Point]] = {}
        self._counted: set[int] = set()

    def update(self, track: Track, point: Point) -> Direction | None:
        distance = signed_distance(self.a, self.b, point)
        if abs(distance) <= self.config.hysteresis_px:
            return None
        side = 1 if distance > 0 else -1
        previous = self._side.get(track.id)
        self._side[track.id] = (side, point)
        if previous is None or previous[0] == side or track.id in self._counted:
            return None
        where = crossing_param(self.a, self.b, previous[1], point)
        length = math.dist(self.a, self.b)
        tolerance = self.config.hysteresis_px / max(length, 1.0)
        if where is None or not (-tolerance <= where <= 1 + tolerance):
            return None
        self._counted.add(track.id)
        return "left_to_right" if side > 0 else "right_to_left"

    def forget(self, track_id: int) -> None:
        self._side.pop(track_id, None)
        self._counted.discard(track_id)


class DwellRule:
    """Fires when a track stands still inside the zone for longer than ``max_dwell_s``."""

    def __init__(self, config: DwellZoneConfig) -> None:
        self.config = config
        self._since: dict[int, float] = {}
        self._fired: set[int] = set()

    def update(self, track: Track, point: Point, t: float) -> dict[str, Any] | None:
        if track.id in self._fired or not _applies(self.config.classes, track):
            return None
        vx, vy = track.velocity()
        stopped = math.hypot(vx, vy) <= self.config.stationary_speed_px_s
        if not (point_in_polygon(point, self.config.polygon) and stopped):
            self._since.pop(track.id, None)
            return None
        since = self._since.setdefault(track.id, t)
        if t - since < self.config.max_dwell_s:
            return None
        self._fired.add(track.id)
        return {"dwell_s": round(t - since, 2), "max_dwell_s": self.config.max_dwell_s}

    def forget(self, track_id: int) -> None:
        self._since.pop(track_id, None)
        self._fired.discard(track_id)


class WrongWayRule:
    """Fires when a track's travel inside the zone points away from the allowed direction."""

    def __init__(self, config: WrongWayConfig) -> None:
        self.config = config
        self._entry: dict[int, Point] = {}
        self._fired: set[int] = set()

    def update(self, track: Track, point: Point) -> dict[str, Any] | None:
        if track.id in self._fired or not _applies(self.config.classes, track):
            return None
        if not point_in_polygon(point, self.config.polygon):
            self._entry.pop(track.id, None)
            return None
        entry = self._entry.setdefault(track.id, point)
        travel = (point[0] - entry[0], point[1] - entry[1])
        if math.hypot(*travel) < self.config.min_travel_px:
            return None
        angle = angle_between(travel, self.config.allowed)
        if angle <= self.config.max_angle_deg:
            return None
        self._fired.add(track.id)
        return {
            "heading": [round(travel[0], 1), round(travel[1], 1)],
            "allowed": list(self.config.allowed),
            "angle_deg": round(angle, 1),
        }

    def forget(self, track_id: int) -> None:
        self._entry.pop(track_id, None)
        self._fired.discard(track_id)


class LaneUseRule:
    """Fires once per track of a forbidden class that uses the lane (inside it for ``min_time_s``
    and ``min_travel_px``). Generic ``vehicle`` tracks are never judged: only a class the
    detector confirmed can be forbidden."""

    def __init__(self, config: LaneUseConfig) -> None:
        self.config = config
        self._entry: dict[int, tuple[float, Point]] = {}
        self._fired: set[int] = set()

    def update(self, track: Track, point: Point, t: float) -> dict[str, Any] | None:
        if track.id in self._fired or not track.confirmed or track.label not in self.config.forbidden:
            return None
        if not point_in_polygon(point, self.config.polygon):
            self._entry.pop(track.id, None)
            return None
        since, entry = self._entry.setdefault(track.id, (t, point))
        travel = math.dist(entry, point)
        if t - since < self.config.min_time_s or travel < self.config.min_travel_px:
            return None
        self._fired.add(track.id)
        return {
            "lane": self.config.id,
            "class": track.label,
            "in_lane_s": round(t - since, 2),
            "travel_px": round(travel, 1),
        }

    def forget(self, track_id: int) -> None:
        self._entry.pop(track_id, None)
        self._fired.discard(track_id)


class StopLineRule:
    """Fires once per track standing beyond the stop line (past it in the entering direction by
    ``min_beyond_px``) for ``min_stop_s`` while its signal is red."""

    def __init__(self, config: StopLineConfig, line: LineConfig) -> None:
        self.config = config
        self.a, self.b = line.points
        self._sign = 1.0 if config.direction == "left_to_right" else -1.0
        self._since: dict[int, float] = {}
        self._fired: set[int] = set()

    def update(self, track: Track, point: Point, t: float, phase: str) -> dict[str, Any] | None:
        if track.id in self._fired or not _applies(self.config.classes, track):
            return None
        beyond = self._sign * signed_distance(self.a, self.b, point)
        stopped = math.hypot(*track.velocity()) <= self.config.stationary_speed_px_s
        if phase != "red" or beyond < self.config.min_beyond_px or not stopped:
            self._since.pop(track.id, None)
            return None
        since = self._since.setdefault(track.id, t)
        if t - since < self.config.min_stop_s:
            return None
        self._fired.add(track.id)
        return {
            "signal": self.config.signal,
            "phase": "red",
            "line": self.config.line,
            "beyond_px": round(beyond, 1),
            "stopped_s": round(t - since, 2),
        }

    def forget(self, track_id: int) -> None:
        self._since.pop(track_id, None)
        self._fired.discard(track_id)


class SpeedRule:
    """Speed of a track from its crossing times of two lines ``distance_m`` apart on the road.

    The time is that of the first frame past each line, so it is exact to one frame interval at
    each end: with ``fps`` frames/s and a passage of ``dt`` seconds the speed error is at most about
    ``2 / (fps * dt)`` of the speed; ``tolerance_kmh`` absorbs it.
    """

    def __init__(self, config: SpeedConfig) -> None:
        self.config = config
        self._entered: dict[int, float] = {}
        self._fired: set[int] = set()

    def crossed(self, track: Track, line_id: str, direction: Direction, t: float) -> dict[str, Any] | None:
        cfg = self.config
        if direction != cfg.direction or track.id in self._fired:
            return None
        if line_id == cfg.entry:
            self._entered[track.id] = t
            return None
        if line_id != cfg.exit or track.id not in self._entered:
            return None
        dt = t - self._entered.pop(track.id)
        if dt <= 0 or dt > cfg.max_gap_s or not _applies(cfg.classes, track):
            return None
        kmh = cfg.distance_m / dt * 3.6
        if kmh <= cfg.limit_kmh + cfg.tolerance_kmh:
            return None
        self._fired.add(track.id)
        return {
            "speed_kmh": round(kmh, 1),
            "limit_kmh": cfg.limit_kmh,
            "distance_m": cfg.distance_m,
            "time_s": round(dt, 3),
            "entry": cfg.entry,
            "exit": cfg.exit,
        }

    def forget(self, track_id: int) -> None:
        self._entered.pop(track_id, None)
        self._fired.discard(track_id)


class RuleEngine:
    """Runs every rule of a camera on the tracks of one frame."""

    def __init__(self, config: CameraConfig, signals: dict[str, SignalPhase] | None = None) -> None:
        self.config = config
        self.anchor = config.tracker.anchor
        self.lines = {line.id: LineCounter(line) for line in config.lines}
        self.dwell = [DwellRule(z) for z in config.zones]
        self.wrong_way = [WrongWayRule(z) for z in config.wrong_way]
        self.lane_use = [LaneUseRule(z) for z in config.lane_use]
        by_id = {line.id: line for line in config.lines}
        self.stop_line = [StopLineRule(r, by_id[r.line]) for r in config.stop_line]
        self.speed = [SpeedRule(r) for r in config.speed]
        self.signals = signals or {}
        self._phase: dict[str, str] = {}
        self._red_since: dict[str, float] = {}

    def _observe_signals(self, wall: float) -> None:
        for name, signal in self.signals.items():
            phase = signal.phase(wall)
            if phase == "red" and self._phase.get(name) != "red":
                self._red_since[name] = wall
            self._phase[name] = phase

    def process(
        self, tracks: list[Track], t: float, wall: float, seq: int
    ) -> tuple[list[Crossing], list[Violation]]:
        self._observe_signals(wall)
        crossings: list[Crossing] = []
        violations: list[Violation] = []
        for track in tracks:
            point = anchor_point(track.box, self.anchor)
            for line_id, counter in self.lines.items():
                direction = counter.update(track, point)
                if direction is not None:
                    others = [o.box for o in tracks if o is not track]
                    clear = not _touching(track.box, others)
                    crossings.append(Crossing(line_id, direction, track, t, wall, seq, clear))
                    violations.extend(self._red_light(line_id, direction, track, t, wall, seq))
                    for speed in self.speed:
                        details = speed.crossed(track, line_id, direction, t)
                        if details is not None:
                            violations.append(
                                Violation(
                                    "speeding",
                                    speed.config.id,
                                    track,
                                    track.box,
                                    t,
                                    wall,
                                    seq,
                                    details,
                                    _params(speed.config),
                                )
                            )
            for rule in self.dwell:
                details = rule.update(track, point, t)
                if details is not None:
                    violations.append(
                        Violation(
                            "illegal_stopping",
                            rule.config.id,
                            track,
                            track.box,
                            t,
                            wall,
                            seq,
                            details,
                            _params(rule.config),
                        )
                    )
            for ww in self.wrong_way:
                details = ww.update(track, point)
                if details is not None:
                    violations.append(
                        Violation(
                            "wrong_way",
                            ww.config.id,
                            track,
                            track.box,
                            t,
                            wall,
                            seq,
                            details,
                            _params(ww.config),
                        )
                    )
            for lane in self.lane_use:
                details = lane.update(track, point, t)
                if details is not None:
                    violations.append(
                        Violation(
                            "lane_use",
                            lane.config.id,
                            track,
                            track.box,
                            t,
                            wall,
                            seq,
                            details,
                            _params(lane.config),
                        )
                    )
            for stop in self.stop_line:
                details = stop.update(track, point, t, self._phase.get(stop.config.signal, "unknown"))
                if details is not None:
                    params = _params(stop.config, self.config.signals.get(stop.config.signal))
                    violations.append(
                        Violation(
                            "stop_line", stop.config.id, track, track.box, t, wall, seq, details, params
                        )
                    )
        return crossings, violations

    def _red_light(
        self, line_id: str, direction: Direction, track: Track, t: float, wall: float, seq: int
    ) -> list[Violation]:
        found: list[Violation] = []
        for rule in self.config.red_light:
            if rule.line != line_id or rule.direction != direction or not _applies(rule.classes, track):
                continue
            if self._phase.get(rule.signal) != "red":
                continue
            red_for = wall - self._red_since.get(rule.signal, wall)
            if red_for < rule.grace_s:
                continue
            details = {
                "signal": rule.signal,
                "phase": "red",
                "red_for_s": round(red_for, 2),
                "line": line_id,
                "direction": direction,
            }
            params = _params(rule, self.config.signals.get(rule.signal))
            found.append(Violation("red_light", rule.id, track, track.box, t, wall, seq, details, params))
        return found

    def forget(self, track_id: int) -> None:
        for counter in self.lines.values():
            counter.forget(track_id)
        for rule in self.dwell:
            rule.forget(track_id)
        for ww in self.wrong_way:
            ww.forget(track_id)
        for lane in self.lane_use:
            lane.forget(track_id)
        for stop in self.stop_line:
            stop.forget(track_id)
        for speed in self.speed:
            speed.forget(track_id)
