"""The shape of the supervisor's guard (implemented in ``agent.daemon``).

``guard(where, fn)`` runs ``fn``; if it raises, the error is logged with ``where`` and counted,
and ``None`` is returned, so one bad message or one failing handler never stops a loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Guard(Protocol):
    def __call__(self, where: str, fn: Callable[[], T], /) -> T | None: ...


def unguarded(where: str, fn: Callable[[], T], /) -> T | None:
    """A guard that lets errors through (for tests and tools that want them raised)."""
    del where
    return fn()
