"""Progress reporting for long release steps (wheel builds, hashing, copying objects).

The library functions take a ``Reporter``; the command line passes one that draws a rich progress
bar, tests and the fleet's re-signer pass nothing (``NullReporter``).
"""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    def start(self, what: str, total: int | None = None) -> None:
        """A new step begins; ``total`` in bytes (None: unknown length)."""

    def advance(self, amount: int) -> None:
        """``amount`` more bytes of the current step are done."""


class NullReporter:
    """Reports nothing."""

    def start(self, what: str, total: int | None = None) -> None:
        return None

    def advance(self, amount: int) -> None:
        return None
