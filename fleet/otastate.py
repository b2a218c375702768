"""The latest OTA state of each device, folded from its ``ota.*`` events.

Devices report update progress as events (``ota.downloading`` ... ``ota.committed``,
``ota.rolled_back``, ``ota.failed``; PROTOCOL.md "Updates (OTA)"). The writer keeps the one with
the highest ``seq`` per device in the small ``device_ota`` table in the same transaction as the
events, so the dashboard reads one row per device instead of searching the event log.
``ota_label`` turns such a row into the words an operator reads ("committed 1.1.0",
"rolled back: health check failed").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, select
from sqlalchemy.dialects import postgresql, sqlite

from fleet.db import device_ota

OTA_PREFIX = "ota."
KEPT_FIELDS = ("from", "to", "reason", "code", "bytes_done", "bytes_total")
"""Members of an OTA event's ``data`` kept for the dashboard (the full event stays in ``events``)."""
MAX_TEXT = 500

GOOD = frozenset({"ota.healthy", "ota.committed"})
BAD = frozenset({"ota.rolled_back", "ota.failed"})


def is_ota(kind: str) -> bool:
    return kind.startswith(OTA_PREFIX)


def _kept(data: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in KEPT_FIELDS:
        value = data.get(key)
        if isinstance(value, str):
            out[key] = value[:MAX_TEXT]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
    return out


def latest_ota_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Pure: of event rows (``device, seq, kind, ts, data``), the ``ota.*`` one with the highest
    seq per device, as ``device_ota`` rows."""
    latest: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        if not is_ota(str(row["kind"])):
            continue
        current = latest.get(row["device"])
        if current is None or row["seq"] > current["seq"]:
            latest[row["device"]] = row
    return [
        {
            "device": row["device"],
            "seq": row["seq"],
            "kind": row["kind"],
            "ts": row["ts"],
            "data": _kept(row.get("data") or {}),
        }
        for _, row in sorted(latest.items())
    ]


def record_ota(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """Fold new event rows into ``device_ota`` (inside the caller's transaction); a row is only
    replaced by an event with a higher seq, whatever order batches commit in. Returns how many
    devices had an OTA event in ``rows``."""
    latest = latest_ota_rows(rows)
    if not latest:
        return 0
    module: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = module.insert(device_ota)
    stmt = stmt.on_conflict_do_update(
        index_elements=["device"],
        set_={name: stmt.excluded[name] for name in ("seq", "kind", "ts", "data")},
        where=device_ota.c.seq < stmt.excluded.seq,
    )
    conn.execute(stmt, latest)
    return len(latest)


def ota_states(engine: Engine, devices: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """device id -> latest OTA row (all devices, or only ``devices``)."""
    query = select(device_ota)
    if devices is not None:
        if not devices:
            return {}
        query = query.where(device_ota.c.device.in_(list(devices)))
    with engine.connect() as conn:
        return {row["device"]: dict(row) for row in conn.execute(query).mappings()}


def _step(kind: str) -> str:
    return kind[len(OTA_PREFIX) :].replace("_", " ") if is_ota(kind) else kind


def ota_label(state: Mapping[str, Any] | None) -> str:
    """Pure: the operator's words for an OTA row, e.g. ``committed 1.1.0``,
    ``downloading 1.1.0 (45%)``, ``rolled back: health check failed``; "" without one."""
    if not state:
        return ""
    kind = str(state.get("kind", ""))
    data: Mapping[str, Any] = state.get("data") or {}
    step = _step(kind)
    to = data.get("to")
    if kind in BAD:
        why = data.get("reason") or data.get("code")
        return f"{step}: {why}" if why else f"{step} {to or ''}".rstrip()
    text = f"{step} {to}" if to else step
    done, total = data.get("bytes_done"), data.get("bytes_total")
    if (
        kind == "ota.downloading"
        and isinstance(done, (int, float))
        and isinstance(total, (int, float))
        and total > 0
    ):
        text += f" ({min(100.0, 100.0 * done / total):.0f}%)"
    return text


def ota_tone(state: Mapping[str, Any] | None) -> str:
    """``ok``, ``bad`` or ``busy`` (a CSS class of the dashboard badge); "" without a state."""
    if not state:
        return ""
    kind = str(state.get("kind", ""))
    if kind in GOOD:
        return "ok"
    if kind in BAD:
        return "bad"
    return "busy"
