"""Server-sent events from server threads (scanner, lookups) to the page of one session."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

PING_S = 15.0
QUEUE_MAX = 32


class EventBus:
    """Per-session subscriber queues on the server's event loop; ``publish`` works from any thread."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subs: dict[str, set[asyncio.Queue[str | None]]] = {}
        self._lock = threading.Lock()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def publish(self, sid: str, event: str, data: dict[str, Any]) -> None:
        """Send ``event`` to the pages of session ``sid`` (dropped when none listens)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        frame = f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"
        with self._lock:
            queues = list(self._subs.get(sid, ()))
        for queue in queues:
            loop.call_soon_threadsafe(self._put, queue, frame)

    @staticmethod
    def _put(queue: asyncio.Queue[str | None], frame: str | None) -> None:
        if queue.full():
            queue.get_nowait()
        queue.put_nowait(frame)

    def close_session(self, sid: str) -> None:
        """End the streams of a session that ended (their pages reload anyway)."""
        loop = self._loop
        with self._lock:
            queues = self._subs.pop(sid, set())
        if loop is not None and not loop.is_closed():
            for queue in queues:
                loop.call_soon_threadsafe(self._put, queue, None)

    def close_all(self) -> None:
        with self._lock:
            sids = list(self._subs)
        for sid in sids:
            self.close_session(sid)

    async def stream(self, sid: str) -> AsyncIterator[str]:
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=QUEUE_MAX)
        with self._lock:
            self._subs.setdefault(sid, set()).add(queue)
        try:
            yield "retry: 1000\n\n"
            while True:
                try:
                    frame = await asyncio.wait_for(queue.get(), PING_S)
                except asyncio.TimeoutError:
                    yield ": ping\n\n"
                    continue
                if frame is None:
                    return
                yield frame
        finally:
            with self._lock:
                subs = self._subs.get(sid)
                if subs is not None:
                    subs.discard(queue)
                    if not subs:
                        del self._subs[sid]
