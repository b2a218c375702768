"""Refuse time-based security decisions while the clock is obviously wrong.

A device that boots without a real-time clock battery starts in 1970 (or at its last saved
time). Certificates then look "not yet valid" or never expire, command expiry means nothing and
evidence gets wrong times. Before any TLS connection or expiry decision the agent calls
``check_clock``; there is no bypass: sync the time (NTP, or the technician's laptop) first.

``BUILD_TIME`` is a lower bound for "now": the release tooling moves it forward at each release.
"""

from __future__ import annotations

from datetime import datetime, timezone

from protocol.timefmt import format_ts, utc_now

# Updated by the release tooling (cityedge release): the time this release was built.
BUILD_TIME = datetime(2026, 11, 1, tzinfo=timezone.utc)


class ClockNotSet(RuntimeError):
    """The system clock is before the software build time: time has not been synced."""


def check_clock(now: datetime | None = None, build_time: datetime = BUILD_TIME) -> datetime:
    """Return ``now`` (default: the system clock) if it is not before ``build_time``.

    Raises ClockNotSet otherwise. Naive datetimes are refused (ValueError): times are UTC.
    """
    moment = utc_now() if now is None else now
    if moment.tzinfo is None or build_time.tzinfo is None:
        raise ValueError("check_clock needs timezone-aware datetimes")
    if moment < build_time:
        raise ClockNotSet(
            f"device clock is before the software build time ({format_ts(moment)} < "
            f"{format_ts(build_time)}); sync time (NTP) before TLS or expiry decisions"
        )
    return moment
