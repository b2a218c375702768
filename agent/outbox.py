"""Durable store-and-forward outbox for events (SQLite, WAL).

Durability: ``enqueue`` returns only after the transaction that holds the event has committed.
With the default ``fsync = "full"`` (WAL + ``synchronous=FULL``) that commit is fsync'd, so an
event whose ``enqueue`` returned survives ``kill -9`` and power loss; ``"normal"`` survives process
crashes only; ``"off"`` is for tests. One writer thread owns the write connection and commits
*groups*: every emitter that arrives while a commit (fsync) is running joins the next one, so many
concurrent emitters share one fsync (group commit). When several emitters are active, the writer
waits a fraction of the last commit time (at most 2 ms) for the ones it just released to come
back, so that they join one commit instead of alternating between two.

``seq`` grows by one per stored event and is persisted in the same transaction as the event, so it
survives restarts and never repeats. Rows are deleted only when the broker acknowledges them
(``ack``); deletes ride along with the next commit of events, or go alone after 1000 acks or 50 ms,
or at once when the sender has nothing more in flight (``ack(..., flush=True)``); a delete lost in
a crash only means the event is sent again, and the city de-duplicates on id.

Size limits (``max_events``, ``max_bytes``), eviction order when full:
  1. telemetry-class events (``telemetry_kinds`` patterns), oldest first;
  2. ordinary events, oldest first;
  3. evidence (``evidence_kinds`` and always ``traffic.violation``) is NEVER evicted.
If only evidence is left and the new event still does not fit, the new event (of any kind) is
refused with ``OutboxFull``; the caller keeps it and retries later.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ulid import ULID

from agent.config import EVIDENCE_KINDS_ALWAYS, OutboxSection, kind_matches
from agent.errors import EventRejected, OutboxClosed, OutboxError, OutboxFull
from agent.outbox_db import EventClass, OutboxRow, OutboxTable, open_db, read_after
from protocol.errors import TopicError
from protocol.timefmt import format_ts
from protocol.topics import check_event_kind

__all__ = ["ACK_BATCH", "ACK_DELAY_S", "Enqueued", "EventClass", "Outbox", "OutboxRow", "Signer"]

log = logging.getLogger(__name__)

Signer = Callable[[dict[str, Any]], dict[str, Any]]
"""Returns the envelope with a ``sig`` member added."""

_ENVELOPE_OVERHEAD = 200
ACK_BATCH = 1000
ACK_DELAY_S = 0.05


@dataclass(frozen=True)
class Enqueued:
    id: str
    seq: int


@dataclass(slots=True)
class _Request:
    kind: str
    data: dict[str, Any]
    data_json: str
    cls: EventClass
    sign: bool
    ts: str
    size: int
    event_id: str = field(default_factory=lambda: str(ULID()))
    done: bool = False
    result: Enqueued | None = None
    error: OutboxError | None = None


class Outbox:
    """The durable queue of events; thread-safe."""

    def __init__(
        self,
        path: Path,
        device_id: str,
        settings: OutboxSection,
        signer: Signer | None = None,
        *,
        no_signer_reason: str = "this agent has no device key",
    ) -> None:
        self.path = path
        self.device_id = device_id
        self.settings = settings
        self._signer = signer
        self._no_signer_reason = no_signer_reason
        self._evidence = (*EVIDENCE_KINDS_ALWAYS, *settings.evidence_kinds)
        self._classes: dict[str, EventClass] = {}
        self._conn = open_db(path, settings.fsync)
        self._table = OutboxTable(self._conn, settings.max_events, settings.max_bytes)
        self._read = open_db(path, settings.fsync)
        self._read_lock = threading.Lock()
        self._cond = threading.Condition()
        self._done = threading.Condition()  # emitters wait here for their group commit
        self._expected = 0  # emitters active in the last round (group commit)
        self._ts_cache: tuple[int, str] = (0, "")
        self._pending: list[_Request] = []
        self._acks: set[int] = set()
        self._acks_since = 0.0
        self._flush_wanted = False
        self._closing = False
        self._busy = False
        self._listeners: list[Callable[[], None]] = []
        self.refused = 0
        self._thread = threading.Thread(target=self._run, name="outbox-writer", daemon=True)
        self._thread.start()

    # -- public API --------------------------------------------------------------------------

    def classify(self, kind: str) -> EventClass:
        cls = self._classes.get(kind)
        if cls is None:
            if kind_matches(kind, self._evidence):
                cls = EventClass.EVIDENCE
            elif kind_matches(kind, self.settings.telemetry_kinds):
                cls = EventClass.TELEMETRY
            else:
                cls = EventClass.ORDINARY
            if len(self._classes) < 4096:
                self._classes[kind] = cls
        return cls

    def enqueue(
        self, kind: str, data: dict[str, Any], *, sign: bool = False, timeout: float = 30.0
    ) -> Enqueued:
        """Store one event durably; return its id and seq once committed."""
        req = self._make_request(kind, data, sign)
        with self._cond:
            if self._closing:
                raise OutboxClosed("the agent is stopping; the event was not stored")
            self._pending.append(req)
            if len(self._pending) == 1 or len(self._pending) >= self._expected:
                self._cond.notify_all()  # wake the writer (not on every arrival of a group)
        with self._done:
            if not self._done.wait_for(lambda: req.done, timeout):
                raise OutboxError(f"the disk did not store the event within {timeout:.0f} s")
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    def read_after(self, seq: int, limit: int) -> list[OutboxRow]:
        """Up to ``limit`` stored events with a seq above ``seq``, in seq order."""
        with self._read_lock:
            return read_after(self._read, seq, limit)

    def ack(self, seqs: Iterable[int], *, flush: bool = False) -> None:
        """The broker acknowledged these events: delete them (in the next group commit; with
        ``flush``, at once: the sender has nothing more in flight to batch them with)."""
        with self._cond:
            first = not self._acks
            if first:
                self._acks_since = time.monotonic()
            self._acks.update(seqs)
            if flush:
                self._flush_wanted = True
            if first or flush or len(self._acks) >= ACK_BATCH:
                self._cond.notify_all()

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the writer thread) after each commit that stored events."""
        self._listeners.append(callback)

    @property
    def depth(self) -> int:
        return self._table.depth

    @property
    def size_bytes(self) -> int:
        return self._table.size_bytes

    @property
    def last_seq(self) -> int:
        return self._table.seq

    @property
    def evicted(self) -> int:
        return self._table.evicted

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "bytes": self.size_bytes,
            "last_seq": self.last_seq,
            "telemetry": self._table.count[EventClass.TELEMETRY],
            "ordinary": self._table.count[EventClass.ORDINARY],
            "evidence": self._table.count[EventClass.EVIDENCE],
            "evicted": self.evicted,
            "refused": self.refused,
        }

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until pending acks are committed (used at shutdown and by tests)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._acks or self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                if self._acks and not self._flush_wanted:
                    self._flush_wanted = True
                    self._cond.notify_all()
                self._cond.wait(left)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(30)
        with self._read_lock:
            self._read.close()
        self._conn.close()

    # -- internals ---------------------------------------------------------------------------

    def _make_request(self, kind: str, data: dict[str, Any], sign: bool) -> _Request:
        try:
            check_event_kind(kind)
        except TopicError as exc:
            raise EventRejected(str(exc)) from exc
        if not isinstance(data, dict):
            raise EventRejected(f"event data must be a JSON object, got {type(data).__name__}")
        try:
            data_json = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise EventRejected(f"event data is not plain JSON: {exc}") from exc
        size = len(data_json.encode()) + _ENVELOPE_OVERHEAD
        limit = min(self.settings.max_event_bytes, self.settings.max_bytes)
        if size > limit:
            raise EventRejected(f"event of {size} bytes is over the {limit}-byte limit")
        cls = self.classify(kind)
        sign = sign or cls is EventClass.EVIDENCE
        if sign and self._signer is None:
            raise EventRejected(f"cannot sign the '{kind}' event: {self._no_signer_reason}")
        return _Request(kind, data, data_json, cls, sign, self._now_ts(), size)

    def _now_ts(self) -> str:
        """``protocol.timefmt.now_ts()``, with the part up to the second formatted once a second."""
        now = time.time()
        second = int(now)
        cached = self._ts_cache
        if cached[0] != second:
            cached = (second, format_ts(datetime.fromtimestamp(second, timezone.utc))[:-5])
            self._ts_cache = cached
        return f"{cached[1]}.{int((now - second) * 1000):03d}Z"

    def _run(self) -> None:
        group_wait = 0.0
        while True:
            with self._cond:
                self._wait_for_work()
                expected = self._expected
                if 0 < len(self._pending) < expected and not self._closing:
                    # Group commit: the emitters released by the last commit are about to come back;
                    # give them a fraction of an fsync to join this one instead of the next.
                    self._cond.wait_for(functools.partial(self._gathered, expected), group_wait)
                if self._closing and not self._pending and not self._acks:
                    self._cond.notify_all()
                    return
                batch = self._pending[: self.settings.batch_max]
                del self._pending[: self.settings.batch_max]
                acks, self._acks = self._acks, set()
                self._flush_wanted = False
                self._busy = True
            started = time.monotonic()
            stored = self._commit(batch, acks)
            group_wait = min(0.002, (time.monotonic() - started) / 2)
            for req in batch:
                req.done = True
            with self._done:
                self._done.notify_all()
            with self._cond:
                # the emitters just released plus the ones already waiting: expect them all next time
                self._expected = len(batch) + len(self._pending)
                self._busy = False
                self._cond.notify_all()
            if stored:
                for callback in self._listeners:
                    callback()

    def _wait_for_work(self) -> None:
        """Block until events wait, or acks are due (enough of them, old enough, or a flush)."""
        while not (self._pending or self._closing or len(self._acks) >= ACK_BATCH or self._flush_wanted):
            if not self._acks:
                self._cond.wait()
                continue
            left = self._acks_since + ACK_DELAY_S - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _gathered(self, expected: int) -> bool:
        return len(self._pending) >= expected or self._closing

    def _commit(self, batch: list[_Request], acks: set[int]) -> bool:
        table = self._table
        start_seq = table.seq
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            if acks:
                table.delete(sorted(acks))
            if table.fits(len(batch), sum(req.size for req in batch)):
                self._store_all(batch)
            else:
                for req in batch:
                    self._store(req)
            if table.seq != start_seq:
                table.save_seq()
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.error("outbox: could not commit %d events: %s", len(batch), exc)
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            table.load()
            for req in batch:
                req.result = None
                req.error = req.error or OutboxError(f"could not store the event on disk: {exc}")
            return False
        return table.seq != start_seq

    def _store_all(self, batch: list[_Request]) -> None:
        """Fast path: the whole group fits without eviction, one executemany."""
        first = self._table.seq + 1
        rows = [(r.event_id, r.kind, r.cls, self._envelope(r, first + i)) for i, r in enumerate(batch)]
        self._table.insert_many(rows)
        for i, req in enumerate(batch):
            req.result = Enqueued(req.event_id, first + i)

    def _store(self, req: _Request) -> None:
        try:
            self._table.make_room(req.kind, req.size)
        except OutboxFull as exc:
            self.refused += 1
            req.error = exc
            return
        seq = self._table.seq + 1
        self._table.insert(req.event_id, req.kind, req.cls, self._envelope(req, seq))
        req.result = Enqueued(req.event_id, seq)

    def _envelope(self, req: _Request, seq: int) -> bytes:
        if not req.sign:
            # id, ts, device and kind are validated plain ASCII: no escaping needed.
            return (
                f'{{"id":"{req.event_id}","seq":{seq},"ts":"{req.ts}","device":"{self.device_id}",'
                f'"kind":"{req.kind}","data":{req.data_json}}}'
            ).encode()
        assert self._signer is not None
        envelope = {
            "id": req.event_id,
            "seq": seq,
            "ts": req.ts,
            "device": self.device_id,
            "kind": req.kind,
            "data": req.data,
        }
        signed = self._signer(envelope)
        return json.dumps(signed, separators=(",", ":"), ensure_ascii=False).encode()
