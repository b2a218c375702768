"""Sends the outbox to the broker: seq order, an in-flight window, delete only on PUBACK.

One thread. The wire window is paho's ``max_inflight`` (``mqtt.inflight_window``); the sender hands
paho up to ``HANDOFF_WINDOWS`` windows (at most ``HANDOFF_MAX_BYTES``) so that paho releases the
next message from the network thread as each PUBACK arrives, and the sender only wakes once per
quarter hand-off. PUBACKs reach it through ``on_ack`` into a deque (paho calls ``on_publish``
holding its own lock, so the callback must not take ours); acknowledged rows are deleted by the
outbox in batches. After a reconnect (a new link generation, a new paho client) everything not yet
acknowledged is sent again from the first stored row; duplicates are expected and harmless because
the city de-duplicates on the event id.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from agent.errors import LinkDown
from agent.link import Link
from agent.outbox import Outbox, OutboxRow

log = logging.getLogger(__name__)

HANDOFF_WINDOWS = 4
HANDOFF_MAX_BYTES = 4 * 1024 * 1024
ACK_POLL_S = 0.02
"""While events are in flight, PUBACKs are collected at least this often (else in batches)."""


class OutboxSender:
    def __init__(self, outbox: Outbox, link: Link, window: int) -> None:
        self.outbox = outbox
        self.link = link
        self.window = window * HANDOFF_WINDOWS  # handed to paho and not yet acknowledged
        self._root = link.topics.device_root(link.device_id)
        self._cond = threading.Condition()
        self._wake = True
        self._stopping = False
        self._acks: deque[tuple[int, int, bool, str]] = deque()
        self._inflight: dict[int, tuple[int, int]] = {}  # mid -> (seq, payload bytes)
        self._generation = -1
        self._cursor = 0
        self._buffer: deque[OutboxRow] = deque()  # rows read ahead of the cursor, not yet published
        self._batch = max(1, self.window // 4)  # wake / refill granularity
        self._inflight_bytes = 0
        self._topics: dict[str, str] = {}
        self.sent = 0
        self.acked = 0
        self.refused_by_broker = 0
        self._thread = threading.Thread(target=self._run, name="outbox-sender", daemon=True)
        outbox.add_listener(self.notify)
        link.add_connect_hook(self.notify)
        link.add_disconnect_hook(self.notify)

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._take_acks(self._generation)  # PUBACKs that arrived while the link was closing

    def notify(self) -> None:
        with self._cond:
            self._wake = True
            self._cond.notify_all()

    def on_ack(self, generation: int, mid: int, ok: bool, reason: str) -> None:
        """Called by the link for every PUBACK (any topic); cheap and lock-free for paho."""
        acks = self._acks
        acks.append((generation, mid, ok, reason))
        if len(acks) >= self._batch or len(acks) >= len(self._inflight):
            self.notify()  # a batch, or the last in flight; otherwise picked up within ACK_POLL_S

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def _run(self) -> None:
        while True:
            with self._cond:
                timeout = ACK_POLL_S if self._inflight else 5.0
                self._cond.wait_for(lambda: self._wake or self._stopping, timeout=timeout)
                if self._stopping:
                    return
                self._wake = False
            self._step()

    def _step(self) -> None:
        generation = self.link.generation
        if generation != self._generation:
            self._generation = generation
            self._inflight.clear()
            self._inflight_bytes = 0
            self._buffer.clear()
            self._cursor = 0
        self._take_acks(generation)
        if not self.link.connected:
            return
        room = self.window - len(self._inflight)
        if self._inflight and room < self._batch:
            return  # refill in batches: fewer wake-ups and reads
        while room > 0 and self._inflight_bytes < HANDOFF_MAX_BYTES:
            if not self._buffer:
                self._buffer.extend(self.outbox.read_after(self._cursor, self.window))
                if not self._buffer:
                    return
            row = self._buffer[0]
            try:
                sent_gen, mid = self.link.publish(self._topic(row.kind), row.payload, qos=1)
            except LinkDown:
                return
            if sent_gen != generation:
                return
            self._buffer.popleft()
            self._inflight[mid] = (row.seq, len(row.payload))
            self._inflight_bytes += len(row.payload)
            self._cursor = row.seq
            self.sent += 1
            room -= 1

    def _topic(self, kind: str) -> str:
        topic = self._topics.get(kind)
        if topic is None:
            topic = self._topics[kind] = f"{self._root}/events/{kind}"
        return topic

    def _take_acks(self, generation: int) -> None:
        done: list[int] = []
        while self._acks:
            gen, mid, ok, reason = self._acks.popleft()
            if gen != generation:
                continue
            entry = self._inflight.pop(mid, None)
            if entry is None:
                continue  # a PUBACK for something else (status, commands/res, telemetry)
            seq, size = entry
            self._inflight_bytes -= size
            if ok:
                done.append(seq)
            else:
                self.refused_by_broker += 1
                log.warning(
                    "broker refused event seq %d (%s); it stays queued for the next connection", seq, reason
                )
        if done:
            self.acked += len(done)
            # Nothing left in flight or read ahead: no more acks to batch these deletes with soon.
            self.outbox.ack(done, flush=not self._inflight and not self._buffer)
