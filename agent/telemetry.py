"""Health telemetry: ``{"ts","seq","uptime_s","cpu_pct","mem_pct","disk_pct","temp_c", ...}``.

Sampled with psutil; ``temp_c`` from psutil's sensors or ``/sys/class/thermal``, ``null`` where
the device has no readable sensor. Role metrics (``report_metrics`` on the local API) and agent
counters are merged in; they can never replace a contract field.
"""

from __future__ import annotations

import glob
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from agent.config import TelemetrySection
from agent.errors import LinkDown
from agent.guard import Guard
from agent.link import Link
from protocol.timefmt import now_ts

log = logging.getLogger(__name__)

CONTRACT_FIELDS = ("ts", "seq", "uptime_s", "cpu_pct", "mem_pct", "disk_pct", "temp_c")


def read_temp_c(thermal_glob: str = "/sys/class/thermal/thermal_zone*/temp") -> float | None:
    """Highest plausible temperature the device reports, or None when it reports none."""
    readings: list[float] = []
    sensors = getattr(psutil, "sensors_temperatures", None)
    if sensors is not None:
        try:
            for entries in sensors().values():
                readings.extend(e.current for e in entries if -40.0 < e.current < 150.0)
        except (OSError, RuntimeError):
            pass
    if not readings:
        for name in glob.glob(thermal_glob):
            try:
                value = int(Path(name).read_text().strip()) / 1000.0
            except (OSError, ValueError):
                continue
            if -40.0 < value < 150.0:
                readings.append(value)
    return round(max(readings), 1) if readings else None


class TelemetrySampler:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.seq = 0
        self.started = time.monotonic()
        self._proc = psutil.Process()
        psutil.cpu_percent(interval=None)  # prime: the next call measures since now

    def sample(self, extra: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ts": now_ts(),
            "seq": self.seq,
            "uptime_s": round(max(0.0, time.time() - psutil.boot_time()), 1),
            "cpu_pct": float(psutil.cpu_percent(interval=None)),
            "mem_pct": float(psutil.virtual_memory().percent),
            "disk_pct": float(psutil.disk_usage(str(self.data_dir)).percent),
            "temp_c": read_temp_c(),
            "agent_uptime_s": round(time.monotonic() - self.started, 1),
            "agent_rss_mb": round(self._proc.memory_info().rss / 1e6, 1),
        }
        for key, value in extra.items():
            body.setdefault(key, value)
        self.seq += 1
        return body


class TelemetryPublisher:
    """Publishes telemetry every ``interval_s`` while connected (and once right after connecting)."""

    def __init__(
        self,
        link: Link,
        sampler: TelemetrySampler,
        settings: Callable[[], TelemetrySection],
        counters: Callable[[], dict[str, Any]],
        guard: Guard,
    ) -> None:
        self.link = link
        self.sampler = sampler
        self._settings = settings
        self._counters = counters
        self._guard = guard
        self._role: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._now = threading.Event()
        self._topic = link.topics.telemetry(link.device_id)
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
        self.published = 0

    def report_metrics(self, metrics: dict[str, Any]) -> None:
        """Role metrics merged into every following message (contract fields are reserved)."""
        with self._lock:
            self._role.update({k: v for k, v in metrics.items() if k not in CONTRACT_FIELDS})

    def trigger(self) -> None:
        self._now.set()

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._now.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._now.wait(self._settings().interval_s)
            self._now.clear()
            if not self._stop.is_set():
                self._guard("telemetry", self.tick)

    def tick(self) -> None:
        if not self.link.connected:
            return
        with self._lock:
            extra = {**self._role, **self._counters()}
        body = self.sampler.sample(extra)
        payload = _dumps(body)
        try:
            self.link.publish(self._topic, payload, qos=self._settings().qos)
        except LinkDown:
            return
        self.published += 1


def _dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), default=str).encode()
