"""RFC 3339 UTC timestamps as the contract writes them (``2026-11-22T21:30:00.123Z``)."""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def format_ts(moment: datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC with millisecond precision and a ``Z``."""
    if moment.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware")
    utc = moment.astimezone(timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def now_ts() -> str:
    return format_ts(utc_now())


def parse_ts(text: str) -> datetime:
    """Parse an RFC 3339 timestamp; naive or non-UTC offsets are converted to UTC.

    Raises ValueError with the offending text when it cannot be read.
    """
    candidate = text.strip()
    if candidate.endswith(("Z", "z")):
        candidate = candidate[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(candidate)
    except ValueError as exc:
        raise ValueError(f"not an RFC 3339 time: {text!r}") from exc
    if moment.tzinfo is None:
        raise ValueError(f"time has no UTC offset: {text!r}")
    return moment.astimezone(timezone.utc)
