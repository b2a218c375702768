"""A bounded FIFO whose single consumer takes everything waiting in one call.

``queue.Queue`` costs a lock round and a condition per item on both sides; the ingest thread
puts thousands of messages a second and the writer wants them in batches anyway.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class BatchQueue(Generic[T]):
    def __init__(self, maxsize: int) -> None:
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._maxsize = maxsize

    def put(self, item: T) -> None:
        """Append ``item``; blocks while the queue is full."""
        with self._lock:
            while len(self._items) >= self._maxsize:
                self._not_full.wait()
            self._items.append(item)
            if len(self._items) == 1:  # the consumer only ever waits on an empty queue
                self._not_empty.notify()

    def take(self, max_items: int, timeout: float | None = None) -> list[T]:
        """Up to ``max_items`` items, oldest first; waits up to ``timeout`` (None: forever) for one."""
        with self._lock:
            if not self._items:
                self._not_empty.wait(timeout)
            count = min(max_items, len(self._items))
            batch = [self._items.popleft() for _ in range(count)]
            if batch:
                self._not_full.notify_all()
            return batch

    def qsize(self) -> int:
        return len(self._items)
