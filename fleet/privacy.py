"""Personal data in events: what the events API leaves out, and where it can be read instead.

A ``traffic.violation`` carries the plate text its camera read. People with ``devices:read`` see
the event with its ``plate`` replaced by a pointer; the full event is at
``GET /api/evidence/events/{id}``, which needs ``evidence:read`` and writes the view on the audit
trail before it answers (docs/security-access.md).
"""

from __future__ import annotations

from typing import Any

PERSONAL_FIELDS: dict[str, tuple[str, ...]] = {"traffic.violation": ("plate",)}
"""Event kind -> members of ``data`` that hold personal data."""


def full_event_path(event_id: str) -> str:
    return f"/api/evidence/events/{event_id}"


def redact_event(event: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``event`` without its personal members (a pointer to the audited route instead)."""
    fields = PERSONAL_FIELDS.get(str(event.get("kind")), ())
    data = event.get("data")
    if not fields or not isinstance(data, dict) or not any(data.get(name) is not None for name in fields):
        return event
    pointer = {"redacted": True, "read_with": full_event_path(str(event.get("id")))}
    return {**event, "data": {**data, **{name: pointer for name in fields if data.get(name) is not None}}}
