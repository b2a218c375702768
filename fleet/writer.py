"""The batch writer: one thread that commits received messages in batches, then acknowledges them.

A message is acknowledged to the broker only after the transaction holding it committed, so a
crash anywhere before that makes the broker deliver it again. Transient database errors
(connection lost, locked, deadlock) are retried with backoff and nothing is acknowledged
meanwhile; a message the database refuses outright (bad data) is counted as rejected and
acknowledged, so it cannot block the stream.

Evidence (``traffic.violation``) is checked against the device's certified key before its batch
is committed (``fleet.evidence.EvidenceIntake``); while that check cannot be made (PKI inventory or
evidence disk unreachable) the writer retries with the same backoff and acknowledges nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError, StatementError

from fleet.apply import BatchOutcome
from fleet.batchqueue import BatchQueue
from fleet.evidence import EvidenceIntake, EvidenceUnavailable
from fleet.inbound import BAD_EVIDENCE, DB_REJECTED, EVIDENCE_KINDS, Inbound, Received, RejectLog, decode
from fleet.stats import IngestStats
from fleet.store import Store
from protocol.models import DEFAULT_MAX_PAYLOAD
from protocol.timefmt import utc_now
from protocol.topics import Topics

log = logging.getLogger(__name__)


Committed = Callable[[list[Inbound], BatchOutcome, float], None]


class WriterStopped(RuntimeError):
    """The writer was stopped while a batch was still failing; it stays unacknowledged."""


def _refused(exc: BaseException) -> bool:
    """True when the database refuses the data itself (retrying the same rows cannot help)."""
    if isinstance(exc, (DataError, IntegrityError)):
        return True
    if isinstance(exc, StatementError) and not isinstance(exc, DBAPIError):
        return True  # a value could not be converted before it reached the database
    return not isinstance(exc, SQLAlchemyError)  # a bug on one message: isolate it


class BatchWriter:
    """Commits ``Inbound`` items every ``interval_s`` (or ``max_items``, or when input pauses)."""

    def __init__(
        self,
        store: Store,
        stats: IngestStats,
        *,
        interval_s: float = 0.05,
        idle_s: float = 0.005,
        max_items: int = 1000,
        queue_max: int = 20_000,
        backoff_max_s: float = 5.0,
        topics: Topics | None = None,
        max_bytes: Callable[[str, str | None], int] = lambda family, kind: DEFAULT_MAX_PAYLOAD,
        retained_floor: datetime | None = None,
        on_committed: Committed | None = None,
        evidence: EvidenceIntake | None = None,
    ) -> None:
        self.store = store
        self.evidence = evidence
        self.stats = stats
        self.topics = topics or Topics()
        self.max_bytes = max_bytes
        self.on_committed = on_committed
        self.reject_log = RejectLog()
        self.interval_s = interval_s
        self.idle_s = idle_s
        self.max_items = max_items
        self.backoff_max_s = backoff_max_s
        self._queue: BatchQueue[Inbound | None] = BatchQueue(queue_max)
        self._abort = threading.Event()
        self._thread: threading.Thread | None = None
        self.retained_floor = retained_floor or utc_now()
        stats.queue_depth = self._queue.qsize

    def submit(self, item: Inbound) -> None:
        """Queue ``item`` (blocks while the queue is full: ingest then slows the broker down)."""
        self._queue.put(item)

    def prepare(self, received: Received) -> Inbound:
        """Decode a received message, logging it when it is rejected."""
        item = decode(received, self.topics, self.max_bytes)
        if not item.ok:
            self.reject_log(item)
        return item

    def accept(self, received: Received) -> None:
        """Decode a received message and queue it for the writer thread."""
        self._queue.put(self.prepare(received))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fleet-writer", daemon=True)
        self._thread.start()

    def stop(self, *, flush: bool = True, timeout: float = 10.0) -> None:
        """Stop the thread; with ``flush`` commit what is queued first, else drop it unacknowledged."""
        if self._thread is None:
            return
        if not flush:
            self._abort.set()
        self._queue.put(None)
        self._thread.join(timeout)
        self._abort.set()
        self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while True:
            batch, stop = self._collect()
            if batch and not self._abort.is_set():
                try:
                    self.commit(batch)
                except WriterStopped:
                    log.warning(
                        "writer stopped with %d messages uncommitted (broker will resend)", len(batch)
                    )
                    return
            if stop:
                return

    def _collect(self) -> tuple[list[Inbound], bool]:
        """The next batch: wait for a message, then gather more until the interval is over, the
        batch is full or input pauses for ``idle_s``. True when the stop marker was reached."""
        taken = self._queue.take(self.max_items)
        deadline = time.monotonic() + self.interval_s
        while taken and taken[-1] is not None and len(taken) < self.max_items:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            more = self._queue.take(self.max_items - len(taken), min(self.idle_s, remaining))
            if not more:
                break
            taken += more
        batch = [item for item in taken if item is not None]
        return batch, len(batch) != len(taken)

    def commit(self, batch: list[Inbound]) -> None:
        """Commit ``batch`` (retrying, isolating refused rows), then acknowledge it."""
        started = time.monotonic()
        self._check_evidence(batch)
        try:
            outcome = self._apply_retrying(batch)
        except Exception as exc:
            if not _refused(exc):
                raise
            log.warning("batch of %d refused (%s); writing its messages one by one", len(batch), exc)
            outcome = self._apply_one_by_one(batch)
        seconds = time.monotonic() - started
        self.stats.on_committed(outcome, seconds)
        for item in batch:
            if item.error is not None:
                self.stats.on_rejected(item.error, item.family)
            if item.ack is not None:
                item.ack()
        if self.on_committed is not None:
            self.on_committed(batch, outcome, seconds)

    def _check_evidence(self, batch: list[Inbound]) -> None:
        """Verify every violation of ``batch`` at arrival (refused ones are marked bad_evidence)."""
        for item in batch:
            body = item.body
            if item.family != "events" or not item.ok or body is None or item.evidence is not None:
                continue
            if body.get("kind") not in EVIDENCE_KINDS:
                continue
            if self.evidence is None:
                item.error, item.body = BAD_EVIDENCE, None
                item.detail = "this fleet has no PKI inventory to check device keys (start it with --pki)"
            else:
                self._intake_retrying(self.evidence, item)
            if not item.ok:
                self.reject_log(item)

    def _intake_retrying(self, intake: EvidenceIntake, item: Inbound) -> None:
        delay = 0.05
        while True:
            try:
                intake.check(item)
                return
            except EvidenceUnavailable as exc:
                log.warning("evidence check on %s deferred, retrying in %.2fs: %s", item.topic, delay, exc)
            self.stats.on_retry()
            if self._abort.wait(delay):
                raise WriterStopped()
            delay = min(delay * 2, self.backoff_max_s)

    def _apply_retrying(self, batch: list[Inbound]) -> BatchOutcome:
        delay = 0.05
        while True:
            try:
                return self.store.apply(batch, retained_floor=self.retained_floor)
            except SQLAlchemyError as exc:
                if _refused(exc):
                    raise
                log.warning("database error, retrying in %.2fs (nothing acknowledged): %s", delay, exc)
            self.stats.on_retry()
            if self._abort.wait(delay):
                raise WriterStopped()
            delay = min(delay * 2, self.backoff_max_s)

    def _apply_one_by_one(self, batch: list[Inbound]) -> BatchOutcome:
        total = BatchOutcome()
        for item in batch:
            try:
                outcome = self._apply_retrying([item])
            except Exception as exc:
                if not _refused(exc):
                    raise
                log.warning("message on %s refused by the database: %s", item.topic, str(exc)[:300])
                item.error, item.detail, item.body = DB_REJECTED, str(exc)[:300], None
                outcome = self._apply_retrying([item])
            for name in vars(total):
                setattr(total, name, getattr(total, name) + getattr(outcome, name))
        return total
