"""When an install may start: update locks held by apps, install windows and a daily byte budget.

Pure functions plus a small lock table; the updater asks ``UpdateGate.check`` before it starts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.config import OtaSection, parse_window
from agent.ota.machine import Gate


def in_windows(local: datetime, windows: list[str]) -> bool:
    """True when ``local`` time falls in one of the ``HH:MM-HH:MM`` windows (empty: always)."""
    if not windows:
        return True
    minute = local.hour * 60 + local.minute
    for text in windows:
        start, end = parse_window(text)
        if start <= end and start <= minute < end:
            return True
        if start > end and (minute >= start or minute < end):  # e.g. 22:00-04:00
            return True
    return False


def local_day(moment: datetime, tz: str) -> str:
    return moment.astimezone(_zone(tz)).strftime("%Y-%m-%d")


def _zone(tz: str) -> ZoneInfo | timezone:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        return timezone.utc


class UpdateGate:
    """Locks (owner -> expiry), windows and the byte budget of one device."""

    def __init__(
        self,
        config: Callable[[], OtaSection],
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self._config = config
        self._monotonic = monotonic
        self._wall = wall
        self._locks: dict[str, float] = {}
        self._mutex = threading.Lock()

    def lock(self, owner: str, ttl_s: float) -> float:
        """Hold the update lock for ``owner``; the lock expires after ``ttl_s`` (capped by
        ``ota.lock_max_s``) unless renewed. Returns the granted seconds."""
        granted = min(ttl_s, self._config().lock_max_s)
        with self._mutex:
            self._locks[owner] = self._monotonic() + granted
        return granted

    def unlock(self, owner: str) -> bool:
        with self._mutex:
            return self._locks.pop(owner, None) is not None

    def holders(self) -> list[str]:
        now = self._monotonic()
        with self._mutex:
            for owner in [o for o, until in self._locks.items() if until <= now]:
                del self._locks[owner]
            return sorted(self._locks)

    def check(self, bytes_today: int) -> Gate:
        config = self._config()
        holders = self.holders()
        if holders:
            return Gate(False, f"waiting: update lock held by {', '.join(holders)}")
        local = self._wall().astimezone(_zone(config.timezone))
        if not in_windows(local, config.windows):
            return Gate(
                False, f"waiting for an install window ({', '.join(config.windows)} {config.timezone})"
            )
        budget = config.daily_byte_budget
        if budget is not None and bytes_today >= budget:
            return Gate(False, f"waiting: today's download budget of {budget} bytes is used up")
        return Gate(True)

    def today(self) -> str:
        return local_day(self._wall(), self._config().timezone)
