"""The batch writer in its own process, so decoding and database work run beside the MQTT thread.

In one process the MQTT thread and the writer share one GIL: every message costs the sum of
both. Here the fleet process only receives (paho) and acknowledges; raw messages go to the
writer process in batches through a pipe, with a token per message. The writer process decodes
and commits (the same ``BatchWriter``), then sends back the tokens of what it committed, and only
then does the fleet process acknowledge those messages to the broker.

If the writer process dies, the tokens in flight are forgotten (never acknowledged), a new
writer process is started, and ``on_lost`` asks the MQTT link to reconnect: the broker then
delivers every unacknowledged message again from the persistent session.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from multiprocessing.connection import Connection
from typing import Any

from fleet.apply import BatchOutcome
from fleet.batchqueue import BatchQueue
from fleet.config import FleetConfig
from fleet.devicekeys import build_intake, open_inventory
from fleet.inbound import Inbound, Received
from fleet.ingest import RAW_TOKEN
from fleet.stats import IngestStats
from fleet.store import Store
from fleet.writer import BatchWriter, WriterStopped
from protocol.topics import Topics

log = logging.getLogger(__name__)

Wire = tuple[
    int, str, bytes | bytearray, float, bool
]  # token (-1: nothing to acknowledge), topic, payload, time, retained
RawAck = Callable[[list[int]], None]


class WriterProcessError(RuntimeError):
    """The writer process did not start (its database could not be opened)."""


# --- the writer process ----------------------------------------------------------------------


class _ChildStats(IngestStats):
    """Reports retries to the fleet process at once (commits are reported with their tokens)."""

    def __init__(self, send: Callable[[Any], None]) -> None:
        super().__init__()
        self._send = send

    def on_retry(self) -> None:
        super().on_retry()
        self._send(("retry",))


def child_main(conn: Connection, config_data: dict[str, Any], floor: float, log_level: int) -> None:
    """Entry point of the writer process."""
    # Ctrl-C in a terminal and a SIGTERM to the process group reach this process too; only the
    # parent decides when it stops (it drains and commits first), so ignore them here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s[writer]: %(message)s")
    config = FleetConfig.model_validate(config_data)
    lock = threading.Lock()

    def send(message: Any) -> None:
        with lock:
            conn.send(message)

    done: list[int] = []

    def committed(batch: list[Inbound], outcome: BatchOutcome, seconds: float) -> None:
        rejected = [(item.error, item.family) for item in batch if item.error is not None]
        send(("committed", list(done), asdict(outcome), seconds, rejected))
        done.clear()

    try:
        store = Store(config.db_url)
        store.ping()
        inventory = open_inventory(config.pki_dir, config.pki_db_url)
    except Exception as exc:  # reported to the fleet process, which refuses to start
        send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    writer = BatchWriter(
        store,
        _ChildStats(send),
        max_items=config.batch_max,
        topics=Topics(config.topic_prefix),
        max_bytes=config.max_bytes_for,
        retained_floor=datetime.fromtimestamp(floor, timezone.utc),
        on_committed=committed,
        evidence=build_intake(config.data_dir, inventory),
    )
    send(("ready",))
    # Everything loaded so far lives as long as the process; each batch then allocates tens of
    # thousands of short-lived, acyclic objects: collect the young generation less often.
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    try:
        _serve(conn, writer, config, done)
    except (WriterStopped, EOFError, OSError):
        pass  # the fleet process is stopping or gone (pipe closed or reset)
    finally:
        store.dispose()
        if inventory is not None:
            inventory.dispose()
    with contextlib.suppress(OSError):
        send(("stopped",))


def _serve(conn: Connection, writer: BatchWriter, config: FleetConfig, done: list[int]) -> None:
    """Read and decode here, commit in a second thread: decoding the next batch overlaps the
    commit of the last one (SQLite and the PostgreSQL driver release the interpreter lock while the
    database works and the disk syncs). A batch closes at ``batch_max`` messages, after
    ``batch_interval_s``, or as soon as input pauses for ``batch_idle_s``."""
    batches: queue.Queue[list[Inbound] | None] = queue.Queue(maxsize=1)
    committer = threading.Thread(
        target=_committer, args=(writer, batches, config.batch_max), name="fleet-writer-commit", daemon=True
    )
    committer.start()
    try:
        _read(conn, writer, config, done, batches)
    finally:
        batches.put(None)
        committer.join()


def _read(
    conn: Connection,
    writer: BatchWriter,
    config: FleetConfig,
    done: list[int],
    batches: queue.Queue[list[Inbound] | None],
) -> None:
    pending: list[Inbound] = []
    deadline = 0.0
    done_append = done.append
    while True:
        if pending:
            wait = min(config.batch_idle_s, deadline - time.monotonic())
            if len(pending) >= config.batch_max or wait <= 0 or not conn.poll(wait):
                batches.put(pending)
                pending = []
                continue
        try:
            batch: list[Wire] | None = conn.recv()
        except (EOFError, OSError):  # the fleet process is gone: nothing can be acknowledged any more
            return
        if batch is None:
            if pending:
                batches.put(pending)
            return
        if not pending:
            deadline = time.monotonic() + config.batch_interval_s
        for token, topic, payload, at, retained in batch:
            ack = None if token < 0 else functools.partial(done_append, token)
            received = Received(topic, payload, datetime.fromtimestamp(at, timezone.utc), retained, ack)
            pending.append(writer.prepare(received))


def _committer(writer: BatchWriter, batches: queue.Queue[list[Inbound] | None], size: int) -> None:
    while (items := batches.get()) is not None:
        try:
            _commit(writer, items, size)
        except Exception:  # supervisor boundary: end the process; the fleet restarts it, the broker resends
            log.exception("the writer process failed; exiting (nothing of the failed batch was acknowledged)")
            logging.shutdown()
            os._exit(70)


def _commit(writer: BatchWriter, items: list[Inbound], size: int) -> None:
    for start in range(0, len(items), size):
        writer.commit(items[start : start + size])


# --- the fleet-process side ------------------------------------------------------------------


class ProcessWriter:
    """Same role as ``BatchWriter`` for the service (``accept``, ``start``, ``stop``, ``alive``)."""

    def __init__(
        self,
        config: FleetConfig,
        stats: IngestStats,
        *,
        retained_floor: datetime,
        on_lost: Callable[[], None] = lambda: None,
        ack_raw: RawAck | None = None,
    ) -> None:
        self.config = config
        self.stats = stats
        self.retained_floor = retained_floor
        self.on_lost = on_lost
        self.ack_raw = ack_raw  # acknowledges committed raw tokens (``MqttLink.ack_tokens``)
        self._ctx = multiprocessing.get_context("spawn")
        self._queue: BatchQueue[Wire | None] = BatchQueue(config.queue_max)
        self._pending: dict[int, Callable[[], None]] = {}
        self._tokens = itertools.count()
        self._raw_in = 0  # raw messages accepted (MQTT thread) and settled (results thread)
        self._raw_out = 0
        self._stopping = False
        self._child: _Child | None = None
        stats.queue_depth = lambda: len(self._pending) + max(0, self._raw_in - self._raw_out)

    def accept(self, received: Received) -> None:
        token = -1
        if received.ack is not None:
            token = next(self._tokens)
            self._pending[token] = received.ack
        payload = bytes(received.payload)
        self._queue.put((token, received.topic, payload, received.received_at.timestamp(), received.retained))

    def accept_raw(
        self, token: int, topic: str, payload: bytes | bytearray, at: float, retained: bool
    ) -> None:
        """The MQTT thread's hot path (``fleet.ingest.RawSink``): a raw token is acknowledged
        through ``ack_raw`` once its batch committed."""
        if token >= 0:
            self._raw_in += 1
        self._queue.put((token, topic, payload, at, retained))

    def start(self) -> None:
        self._child = _Child(self)
        self._child.start()

    @property
    def alive(self) -> bool:
        return self._child is not None and self._child.alive

    @property
    def pid(self) -> int | None:
        """Process id of the current writer process."""
        return self._child.process.pid if self._child is not None else None

    def stop(self, *, flush: bool = True, timeout: float = 30.0) -> None:
        """With ``flush`` the writer commits what it holds first; without, it is killed."""
        self._stopping = True
        child, self._child = self._child, None
        if child is not None:
            child.stop(flush=flush, timeout=timeout)

    # called from the child's results thread
    def _committed(
        self, tokens: list[int], outcome: dict[str, int], seconds: float, rejected: list[Any]
    ) -> None:
        raw: list[int] = []
        pending = self._pending
        for token in tokens:
            if token >= RAW_TOKEN:
                raw.append(token)
                continue
            ack = pending.pop(token, None)
            if ack is not None:
                ack()
        if raw:
            self._raw_out += len(raw)
            if self.ack_raw is not None:
                self.ack_raw(raw)
        self.stats.on_committed(BatchOutcome(**outcome), seconds)
        for reason, family in rejected:
            self.stats.on_rejected(reason, family)

    def _lost(self, child: _Child) -> None:
        """The writer process died: forget what it held, start another, have it all resent."""
        if self._stopping or child is not self._child:
            return
        log.error(
            "the writer process died (exit code %s): restarting it; unacknowledged messages will be "
            "delivered again by the broker",
            child.process.exitcode,
        )
        self._pending.clear()
        self._queue.take(10**9, 0)
        self._raw_out = self._raw_in
        try:
            self.start()
        except WriterProcessError as exc:
            log.critical("cannot restart the writer process: %s (ingest is stopped)", exc)
            return
        self.on_lost()


class _Child:
    """One writer process with its feeder (to it) and results (from it) threads."""

    def __init__(self, owner: ProcessWriter) -> None:
        self.owner = owner
        self.conn, child_conn = owner._ctx.Pipe()
        args = (
            child_conn,
            owner.config.model_dump(mode="json"),
            owner.retained_floor.timestamp(),
            logging.getLogger().getEffectiveLevel(),
        )
        self.process = owner._ctx.Process(target=child_main, args=args, name="fleet-writer", daemon=True)
        self._child_conn = child_conn
        self._done = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def alive(self) -> bool:
        return self.process.is_alive() and not self._done.is_set()

    def start(self, timeout: float = 60.0) -> None:
        self.process.start()
        self._child_conn.close()
        if not self.conn.poll(timeout):
            self.process.kill()
            raise WriterProcessError(f"the writer process did not start within {timeout:g}s")
        first = self.conn.recv()
        if first[0] != "ready":
            self.process.join(5)
            raise WriterProcessError(f"the writer process could not open the database: {first[1]}")
        for name, target in (("fleet-writer-feed", self._feed), ("fleet-writer-results", self._results)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _feed(self) -> None:
        while True:
            items = self.owner._queue.take(2000)
            stop = items and items[-1] is None
            batch = [item for item in items if item is not None]
            try:
                if batch:
                    self.conn.send(batch)
                if stop:
                    self.conn.send(None)
                    return
            except (OSError, ValueError):  # the process is gone; the results thread handles it
                return

    def _results(self) -> None:
        owner = self.owner
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                self._done.set()
                self.process.join(5)
                owner._lost(self)
                return
            kind = message[0]
            if kind == "committed":
                owner._committed(*message[1:])
            elif kind == "retry":
                owner.stats.on_retry()
            elif kind == "stopped":
                self._done.set()
                return

    def stop(self, *, flush: bool, timeout: float) -> None:
        if flush:
            self.owner._queue.put(None)
            self._done.wait(timeout)
        self.process.join(1 if flush else 0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self._done.set()
        self.conn.close()
