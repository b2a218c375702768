"""Delivery of counts and violations to the agent, with retries so nothing accepted is dropped.

- ``CountPublisher``: per-window ``traffic.count`` payloads; windows the agent could not take
  (restarting) wait in memory (bounded: one day of minute windows) and are retried in order.
- ``EvidenceWorker``: builds the evidence of each violation on its own thread (OCR and JPEG
  encoding must not stall the frame loop), puts the images inside the event and hands it to the
  agent (which signs it, keeps it in its outbox until the broker has it — evidence is never
  evicted — and sends it over mTLS MQTT), retrying while the agent is unreachable.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from agent.camera.counts import CountAggregator
from agent.camera.detector import Detection
from agent.camera.errors import EvidenceError, SinkError
from agent.camera.evidence import EvidenceBuilder
from agent.camera.geometry import Box
from agent.camera.rules import Crossing, Violation
from agent.camera.sink import EventSink, publish_violation
from hw.camera import Frame

log = logging.getLogger(__name__)
MAX_PENDING_WINDOWS = 1440


class CountPublisher:
    def __init__(self, aggregator: CountAggregator, sink: EventSink) -> None:
        self.aggregator = aggregator
        self.sink = sink
        self.pending: deque[dict[str, Any]] = deque(maxlen=MAX_PENDING_WINDOWS)
        self.sent = 0

    def frame(self, crossings: list[Crossing], wall: float, quality: float | None) -> None:
        self.aggregator.add(crossings)
        self.pending.extend(self.aggregator.tick(wall, quality))
        self.deliver()

    def deliver(self) -> None:
        while self.pending:
            try:
                self.sink.emit("traffic.count", self.pending[0])
            except SinkError as exc:
                log.warning("camera: count window not delivered yet (%s); will retry", exc)
                return
            self.pending.popleft()
            self.sent += 1

    def close(self, wall: float, quality: float | None) -> None:
        last = self.aggregator.flush(wall, quality)
        if last is not None:
            self.pending.append(last)
        self.deliver()
        if self.pending:
            log.error(
                "camera: %d count window(s) could not be handed to the agent before stopping",
                len(self.pending),
            )


@dataclass(frozen=True)
class EvidenceJob:
    frame: Frame
    violation: Violation
    others: list[Box]
    detections: list[Detection]


class EvidenceWorker:
    def __init__(
        self,
        builder: EvidenceBuilder,
        sink: EventSink,
        *,
        inline_max: int,
        camera_id: str,
        retry_s: float = 2.0,
        maxsize: int = 32,
    ) -> None:
        self.builder, self.sink = builder, sink
        self.inline_max, self.camera_id, self.retry_s = inline_max, camera_id, retry_s
        self.queue: queue.Queue[EvidenceJob | None] = queue.Queue(maxsize=maxsize)
        self.published = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="camera-evidence", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: EvidenceJob) -> None:
        """Queue a violation (blocks when the queue is full: frames are dropped, not violations)."""
        self.queue.put(job)

    def _run(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            self._handle(job)

    def _handle(self, job: EvidenceJob) -> None:
        """Build and deliver one violation's evidence, holding the agent's update lock meanwhile
        (released when no more evidence is queued)."""
        self.sink.hold_update_lock(True)
        try:
            self._deliver(job)
        finally:
            if self.queue.empty():
                self.sink.hold_update_lock(False)

    def _deliver(self, job: EvidenceJob) -> None:
        try:
            bundle = self.builder.build(job.frame, job.violation, job.others, job.detections)
        except (EvidenceError, ValueError, OSError) as exc:
            self.failed += 1
            log.error("camera: evidence for a %s violation could not be built: %s", job.violation.rule, exc)
            return
        while True:
            try:
                publish_violation(
                    self.sink,
                    job.violation,
                    bundle,
                    camera_id=self.camera_id,
                    inline_max=self.inline_max,
                )
                self.published += 1
                return
            except SinkError as exc:
                if self._stop.is_set():
                    self.failed += 1
                    log.error(
                        "camera: a %s violation was not delivered before shutdown: %s",
                        job.violation.rule,
                        exc,
                    )
                    return
                log.warning("camera: violation not accepted by the agent yet (%s); retrying", exc)
                time.sleep(self.retry_s)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish queued work (up to ``timeout``), then stop."""
        self.queue.put(None)
        self._thread.join(timeout)
        self._stop.set()
        self._thread.join(5.0)

    @property
    def pending(self) -> int:
        return self.queue.qsize()
