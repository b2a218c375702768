"""Kiosk metrics: sessions per hour, screen health (page heartbeat), printer and scanner state.

Only counts and states: nothing a resident typed, scanned or looked up. ``KioskMetrics`` is the
pure, thread-safe tally; ``MetricsReporter`` sends a snapshot every few seconds through a
``report(metrics, peripherals)`` callable (the agent's ``report_metrics`` / ``report_peripherals``).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

HOUR_S = 3600.0
SCREEN_STALE_S = 30.0
"""The screen counts as unhealthy when the page has not sent a heartbeat for this long."""


class KioskMetrics:
    def __init__(self, clock: Callable[[], float] = time.monotonic, stale_s: float = SCREEN_STALE_S) -> None:
        self._clock = clock
        self._stale_s = stale_s
        self._lock = threading.Lock()
        self._started = clock()
        self._sessions: collections.deque[float] = collections.deque()
        self._sessions_total = 0
        self._heartbeat: float | None = None
        self._viewport: tuple[int, int] | None = None
        self._counts: dict[str, int] = collections.defaultdict(int)
        self._printer: dict[str, Any] = {"state": "absent"}
        self._scanner: dict[str, Any] = {"state": "absent"}
        self._extra: dict[str, Any] = {}

    def session_ended(self, summary: dict[str, Any]) -> None:
        """A resident's session ended (``summary`` is the kiosk.session event data)."""
        with self._lock:
            self._sessions.append(self._clock())
            self._sessions_total += 1
            for key, value in summary.items():
                if key.endswith("_count") and isinstance(value, int):
                    self._counts[key[: -len("_count")]] += value

    def heartbeat(self, width: int | None = None, height: int | None = None) -> None:
        with self._lock:
            self._heartbeat = self._clock()
            if width and height:
                self._viewport = (int(width), int(height))

    def heartbeat_age(self) -> float | None:
        with self._lock:
            return None if self._heartbeat is None else self._clock() - self._heartbeat

    def set_printer(self, state: str, **details: Any) -> None:
        with self._lock:
            self._printer = {"state": state, **details}

    def set_scanner(self, state: str, **details: Any) -> None:
        with self._lock:
            self._scanner = {"state": state, **details}

    def set_extra(self, **values: Any) -> None:
        """Other role values for shadow/reported (e.g. where the content comes from)."""
        with self._lock:
            self._extra.update(values)

    def count(self, what: str) -> None:
        with self._lock:
            self._counts[what] += 1

    def _sessions_last_hour(self, now: float) -> int:
        while self._sessions and now - self._sessions[0] > HOUR_S:
            self._sessions.popleft()
        return len(self._sessions)

    def snapshot(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(telemetry metrics, shadow peripherals) now."""
        now = self._clock()
        with self._lock:
            age = None if self._heartbeat is None else round(now - self._heartbeat, 1)
            screen_ok = age is not None and age <= self._stale_s
            metrics: dict[str, Any] = {
                "kiosk_sessions_last_hour": self._sessions_last_hour(now),
                "kiosk_sessions_total": self._sessions_total,
                "kiosk_screen_ok": screen_ok,
                "kiosk_heartbeat_age_s": age,
                "kiosk_printer": self._printer["state"],
                "kiosk_scanner": self._scanner["state"],
                "kiosk_app_uptime_s": round(now - self._started, 1),
            }
            metrics.update({f"kiosk_{k}_total": v for k, v in sorted(self._counts.items())})
            peripherals: dict[str, Any] = {
                "printer": dict(self._printer),
                "scanner": dict(self._scanner),
                "screen": {
                    "ok": screen_ok,
                    "heartbeat_age_s": age,
                    "viewport": list(self._viewport) if self._viewport else None,
                },
                **{k: v for k, v in self._extra.items()},
            }
        return metrics, peripherals


Report = Callable[[dict[str, Any], dict[str, Any]], None]


class MetricsReporter:
    """Sends ``metrics.snapshot()`` every ``interval_s`` seconds on a daemon thread."""

    def __init__(self, metrics: KioskMetrics, report: Report, interval_s: float = 15.0) -> None:
        self.metrics = metrics
        self._report = report
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def report_now(self) -> None:
        metrics, peripherals = self.metrics.snapshot()
        try:
            self._report(metrics, peripherals)
        except Exception as exc:  # boundary: telemetry must never stop the kiosk
            log.warning("kiosk metrics not reported: %s", type(exc).__name__)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kiosk-metrics", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.report_now()
