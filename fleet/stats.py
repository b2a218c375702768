"""In-memory counters of one fleet worker: what it received, committed, rejected, and how fast."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from fleet.apply import BatchOutcome


class IngestStats:
    """Thread-safe counters; ``rate()`` is committed messages per second over a recent window."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.started = clock()
        self.received: Counter[str] = Counter()
        self.rejected: Counter[tuple[str, str]] = Counter()
        self.committed = 0
        self.batches = 0
        self.batch_seconds = 0.0
        self.db_retries = 0
        self.events_new = 0
        self.events_duplicate = 0
        self.gaps_opened = 0
        self.gaps_closed = 0
        self.command_results = 0
        self.commands_issued = 0
        self.rpc: Counter[tuple[str, str]] = Counter()
        self.queue_depth: Callable[[], int] = lambda: 0
        self._samples: deque[tuple[float, int]] = deque([(self.started, 0)])

    def on_received(self, family: str) -> None:
        self.received[family] += 1  # only the MQTT thread counts here: no lock needed

    def on_rejected(self, reason: str, family: str) -> None:
        with self._lock:
            self.rejected[(reason, family)] += 1

    def on_retry(self) -> None:
        with self._lock:
            self.db_retries += 1

    def on_command(self) -> None:
        with self._lock:
            self.commands_issued += 1

    def on_rpc(self, service: str, outcome: str) -> None:
        with self._lock:
            self.rpc[(service, outcome)] += 1

    def on_committed(self, outcome: BatchOutcome, seconds: float) -> None:
        now = self._clock()
        with self._lock:
            self.committed += outcome.messages
            self.batches += 1
            self.batch_seconds += seconds
            self.events_new += outcome.events_new
            self.events_duplicate += outcome.events_duplicate
            self.gaps_opened += outcome.gaps_opened
            self.gaps_closed += outcome.gaps_closed
            self.command_results += outcome.command_results
            self._samples.append((now, self.committed))
            while len(self._samples) > 2 and now - self._samples[1][0] > 60.0:
                self._samples.popleft()

    def rate(self, window_s: float = 5.0) -> float:
        """Committed messages per second over the last ``window_s`` seconds."""
        now = self._clock()
        cutoff = now - window_s
        with self._lock:
            total = self.committed
            base_t, base_n = self._samples[0]
            for t, n in self._samples:
                if t > cutoff:
                    break
                base_t, base_n = t, n
        # Every commit after the base sample happened inside the window.
        span = window_s if base_t <= cutoff else max(now - base_t, 1e-3)
        return (total - base_n) / span

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            data: dict[str, Any] = {
                "uptime_s": round(self._clock() - self.started, 3),
                "received": dict(self.received.copy()),
                "received_total": sum(self.received.values()),
                "committed_total": self.committed,
                "batches": self.batches,
                "mean_batch_ms": round(1000 * self.batch_seconds / self.batches, 3) if self.batches else 0.0,
                "db_retries": self.db_retries,
                "events_new": self.events_new,
                "events_duplicate": self.events_duplicate,
                "gaps_opened": self.gaps_opened,
                "gaps_closed": self.gaps_closed,
                "command_results": self.command_results,
                "commands_issued": self.commands_issued,
                "rejected": [
                    {"reason": r, "family": f, "count": n} for (r, f), n in sorted(self.rejected.items())
                ],
                "rpc": [{"service": s, "outcome": o, "count": n} for (s, o), n in sorted(self.rpc.items())],
            }
        data["rate_per_s"] = round(self.rate(5.0), 1)
        data["rate_1m_per_s"] = round(self.rate(60.0), 1)
        data["queue_depth"] = self.queue_depth()
        return data
