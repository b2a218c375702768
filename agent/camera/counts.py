"""Count windows: line crossings gathered into ``traffic.count`` payloads (per line, direction, class).

A window covers ``[k * window_s, (k+1) * window_s)`` in Unix time, so windows of different cameras
line up. A window is emitted when it ends, even with zero counts (zero traffic is information;
a missing window means the camera was not counting). A crossing's class is the track's label when
the window is emitted, so a vehicle the detector recognises after crossing is still counted as such.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from agent.camera.config import COUNT_CLASSES, LineConfig
from agent.camera.rules import Crossing
from protocol.timefmt import format_ts

DIRECTIONS = ("left_to_right", "right_to_left")


def _ts(wall: float) -> str:
    return format_ts(datetime.fromtimestamp(wall, tz=timezone.utc))


def summarise(lines: list[LineConfig], crossings: list[Crossing]) -> dict[str, Any]:
    """{line_id: {total, confidence, directions: {dir: {name, total, classes: {class: n}}}}} for these
    crossings. ``confidence`` is the share of the line's crossings made by a vehicle clear of all
    others (None without crossings): crossings inside a cluster of touching vehicles are where
    counts can err, so a low figure says how far to trust the window's totals."""
    out: dict[str, Any] = {}
    for line in lines:
        allowed = line.classes if line.classes is not None else list(COUNT_CLASSES)
        directions: dict[str, Any] = {}
        for direction in DIRECTIONS:
            classes: dict[str, int] = {}
            for c in crossings:
                if c.line_id == line.id and c.direction == direction and c.track.label in allowed:
                    classes[c.track.label] = classes.get(c.track.label, 0) + 1
            directions[direction] = {
                "name": line.direction_names.get(direction, direction),  # type: ignore[call-overload]
                "total": sum(classes.values()),
                "classes": dict(sorted(classes.items())),
            }
        mine = [c for c in crossings if c.line_id == line.id and c.track.label in allowed]
        out[line.id] = {
            "points": [list(p) for p in line.points],
            "total": sum(d["total"] for d in directions.values()),
            "confidence": round(sum(c.clear for c in mine) / len(mine), 3) if mine else None,
            "directions": directions,
        }
    return out


class CountAggregator:
    def __init__(self, lines: list[LineConfig], window_s: int, camera_id: str) -> None:
        self.lines = lines
        self.window_s = window_s
        self.camera_id = camera_id
        self._start: float | None = None
        self._crossings: list[Crossing] = []
        self._frames = 0

    def _window_start(self, wall: float) -> float:
        return math.floor(wall / self.window_s) * self.window_s

    def add(self, crossings: list[Crossing]) -> None:
        self._crossings.extend(crossings)

    def tick(self, wall: float, quality: float | None = None) -> list[dict[str, Any]]:
        """Call once per frame (after ``add``); returns payloads of windows that ended before ``wall``."""
        if self._start is None:
            self._start = self._window_start(wall)
        done: list[dict[str, Any]] = []
        while wall >= self._start + self.window_s:
            end = self._start + self.window_s
            inside = [c for c in self._crossings if c.wall < end]
            self._crossings = [c for c in self._crossings if c.wall >= end]
            done.append(self._payload(self._start, end, inside, quality, partial=False))
            self._start = end
            self._frames = 0
        self._frames += 1
        return done

    def flush(self, wall: float, quality: float | None = None) -> dict[str, Any] | None:
        """The current, unfinished window (on shutdown), marked partial."""
        if self._start is None:
            return None
        payload = self._payload(self._start, max(wall, self._start), self._crossings, quality, partial=True)
        self._crossings = []
        self._start = None
        return payload

    def _payload(
        self, start: float, end: float, crossings: list[Crossing], quality: float | None, *, partial: bool
    ) -> dict[str, Any]:
        return {
            "camera": self.camera_id,
            "window_start": _ts(start),
            "window_end": _ts(end),
            "window_s": round(end - start, 3),
            "partial": partial,
            "frames": self._frames,
            "quality": None if quality is None else round(quality, 3),
            "lines": summarise(self.lines, crossings),
        }
