"""What a simulated kiosk or camera does: pure generators of metrics and event data, no I/O.

Everything comes from one ``random.Random`` per device so a run with the same seed behaves the
same. No personal data is ever generated: kiosk events carry the service used, never who used it.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from protocol.timefmt import format_ts, now_ts

Role = Literal["kiosk", "camera"]

# Same names as kiosk_ui (screens, rating reasons) and agent/camera (classes, directions), so the
# dashboard shows simulated and real devices alike.
KIOSK_SCREENS = ("procedures", "procedure", "lookup", "identity")
RATING_REASONS = ("fast", "friendly", "clear", "wait", "complex", "kiosk")
VEHICLE_CLASSES = ("bicycle", "car", "motorcycle", "bus", "truck")
DIRECTIONS = (("left_to_right", "northbound"), ("right_to_left", "southbound"))
# Typical vehicles per minute and direction on a Hanoi arterial road at moderate traffic.
_CLASS_MEANS = {"motorcycle": 30.0, "car": 6.0, "bus": 0.8, "truck": 1.0, "bicycle": 1.5}

TRAFFIC_WINDOW_S = 60.0
"""Length of a traffic.count window in scenario seconds."""
KIOSK_SESSION_GAP_S = 120.0
"""Mean scenario seconds between the end of a kiosk session and the start of the next."""


def _poisson(rng: random.Random, mean: float) -> int:
    """Small Poisson sampler (Knuth for small means, normal approximation above)."""
    if mean > 30:
        return max(0, round(rng.gauss(mean, mean**0.5)))
    limit, k, p = pow(2.718281828459045, -mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


@dataclass
class Vitals:
    """Slowly drifting machine health figures (telemetry base fields)."""

    rng: random.Random
    role: Role
    cpu_pct: float = 15.0
    mem_pct: float = 35.0
    disk_pct: float = 22.0
    temp_c: float = 48.0

    def step(self) -> dict[str, Any]:
        busy = 45.0 if self.role == "camera" else 12.0
        self.cpu_pct = _clamp(self.cpu_pct + self.rng.gauss((busy - self.cpu_pct) * 0.2, 4.0), 1.0, 100.0)
        self.mem_pct = _clamp(self.mem_pct + self.rng.gauss(0.0, 0.5), 10.0, 95.0)
        self.disk_pct = _clamp(self.disk_pct + self.rng.uniform(0.0, 0.01), 0.0, 99.0)
        target_temp = 40 + self.cpu_pct * 0.4
        self.temp_c = _clamp(self.temp_c + self.rng.gauss((target_temp - self.temp_c) * 0.3, 0.8), 20, 95)
        return {
            "cpu_pct": round(self.cpu_pct, 1),
            "mem_pct": round(self.mem_pct, 1),
            "disk_pct": round(self.disk_pct, 2),
            "temp_c": round(self.temp_c, 1),
        }


def _wall_ts(wall: float) -> str:
    return format_ts(datetime.fromtimestamp(wall, tz=timezone.utc))


def _clamp(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


@dataclass
class KioskScenario:
    """Residents come, use a few screens, leave; some leave a rating."""

    rng: random.Random
    sessions: int = 0
    ends: list[float] = field(default_factory=list)
    active_since: float | None = None
    next_change: float = 0.0
    now: float = 0.0

    def start(self, now: float) -> None:
        self.next_change = now + self.rng.expovariate(1.0 / KIOSK_SESSION_GAP_S)

    def metrics(self) -> dict[str, Any]:
        hour_ago = self.now - 3600.0
        self.ends = [t for t in self.ends if t > hour_ago]
        return {
            "kiosk_sessions_last_hour": len(self.ends),
            "kiosk_sessions_total": self.sessions,
            "kiosk_session_active": self.active_since is not None,
            "kiosk_screen_ok": True,
            "kiosk_printer": "ok",
            "kiosk_scanner": "ok",
        }

    def advance(self, now: float) -> list[tuple[str, dict[str, Any]]]:
        """Move scenario time to ``now`` (scenario seconds); return the events that happened."""
        self.now = now
        events: list[tuple[str, dict[str, Any]]] = []
        while now >= self.next_change:
            at = self.next_change
            if self.active_since is None:
                self.active_since = at
                self.next_change = at + self.rng.uniform(30.0, 300.0)
            else:
                events.extend(self.finish_session(at - self.active_since))
                self.ends.append(at)
                self.next_change = at + self.rng.expovariate(1.0 / KIOSK_SESSION_GAP_S)
        return events

    def finish_session(self, duration_s: float) -> list[tuple[str, dict[str, Any]]]:
        self.active_since = None
        self.sessions += 1
        lang = "vi" if self.rng.random() < 0.9 else "en"
        screens = sorted(self.rng.sample(KIOSK_SCREENS, self.rng.randint(1, 3)))
        done = self.rng.random() < 0.85
        rated = done and self.rng.random() < 0.6
        summary: dict[str, Any] = {
            "duration_s": round(duration_s, 1),
            "lang": lang,
            "screens": sorted([*screens, "rating"]) if rated else screens,
            "ended": "done" if done else "timeout",
        }
        if "lookup" in screens:
            summary["lookup_count"] = self.rng.randint(1, 3)
        if "procedure" in screens and self.rng.random() < 0.3:
            summary["print_count"] = 1
        out: list[tuple[str, dict[str, Any]]] = [("kiosk.session", summary)]
        if rated:
            out.append(self.rating(lang))
        return out

    def rating(self, lang: str = "vi") -> tuple[str, dict[str, Any]]:
        score = self.rng.choices((1, 2, 3, 4, 5), weights=(3, 4, 10, 35, 48))[0]
        good, bad = RATING_REASONS[:3], RATING_REASONS[3:]
        reasons = sorted(self.rng.sample(good if score >= 4 else bad, self.rng.randint(0, 2)))
        return "kiosk.rating", {"score": score, "reasons": reasons, "lang": lang, "rated_at": now_ts()}


@dataclass
class CameraScenario:
    """A roadside camera counting vehicles per class and direction, one ``traffic.count`` per window."""

    rng: random.Random
    device_id: str = ""
    window_start: float = 0.0
    window_wall: float = 0.0
    frames: int = 0
    level: float = 1.0

    def start(self, now: float) -> None:
        self.window_start = now
        self.window_wall = time.time()
        self.level = self.rng.uniform(0.4, 1.6)

    def metrics(self) -> dict[str, Any]:
        fps = round(self.rng.gauss(14.8, 0.3), 1)
        return {
            "camera_fps": fps,
            "camera_frames": self.frames,
            "camera_inference_ms_p50": round(abs(self.rng.gauss(21.0, 3.0)), 2),
            "camera_process_ms_p50": round(abs(self.rng.gauss(38.0, 5.0)), 2),
            "camera_tracks": _poisson(self.rng, 6 * self.level),
            "camera_quality": round(self.rng.uniform(0.85, 0.99), 3),
        }

    def advance(self, now: float) -> list[tuple[str, dict[str, Any]]]:
        events: list[tuple[str, dict[str, Any]]] = []
        while now - self.window_start >= TRAFFIC_WINDOW_S:
            events.append(self.count())
            self.window_start += TRAFFIC_WINDOW_S
        return events

    def count(self) -> tuple[str, dict[str, Any]]:
        """One window, shaped like agent/camera's ``traffic.count`` (one counting line, two directions)."""
        directions: dict[str, Any] = {}
        for direction, name in DIRECTIONS:
            classes = {c: _poisson(self.rng, _CLASS_MEANS[c] * self.level) for c in VEHICLE_CLASSES}
            classes = {c: n for c, n in classes.items() if n}
            directions[direction] = {"name": name, "total": sum(classes.values()), "classes": classes}
        end = time.time()
        window_s = round(end - self.window_wall, 3)  # real seconds: shorter when scenario time runs fast
        frames = int(window_s * 15)
        self.frames += frames
        data = {
            "camera": self.device_id,
            "window_start": _wall_ts(self.window_wall),
            "window_end": _wall_ts(end),
            "window_s": window_s,
            "partial": False,
            "frames": frames,
            "quality": round(self.rng.uniform(0.85, 0.99), 3),
            "lines": {
                "stop-line": {
                    "points": [[80, 620], [1840, 640]],
                    "total": sum(d["total"] for d in directions.values()),
                    "directions": directions,
                }
            },
        }
        self.window_wall = end
        return "traffic.count", data
