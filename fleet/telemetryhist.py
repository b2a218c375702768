"""Telemetry history in 1-minute rollups (table ``telemetry_1m``), for the device page's 24 h charts.

Ingest adds each live telemetry message to its device's row of that minute (one upsert per device
and minute per batch: sums and a count, so the mean is exact whatever the batching); the latest
value stays in ``devices.telemetry`` as before. Rows older than ``telemetry_retention_days`` are
removed by the retention job (``fleet.retention``; day partitions on PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, case, select
from sqlalchemy.dialects import postgresql, sqlite

from fleet.db import telemetry_1m
from fleet.inbound import Inbound

METRICS = ("cpu_pct", "mem_pct", "disk_pct", "temp_c")


def _value(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def rollup_rows(items: Sequence[Inbound]) -> list[dict[str, Any]]:
    """Per (device, minute): message count and the sum of each metric (None: never reported)."""
    rows: dict[tuple[str, datetime], dict[str, Any]] = {}
    for item in items:
        minute = item.received_at.replace(second=0, microsecond=0)
        key = (str(item.device), minute)
        row = rows.setdefault(key, {"device": key[0], "minute": minute, "n": 0, **{m: None for m in METRICS}})
        row["n"] += 1
        for metric in METRICS:
            value = _value(item.body or {}, metric)
            if value is not None:
                row[metric] = value if row[metric] is None else row[metric] + value
    return list(rows.values())


def record_telemetry(conn: Connection, items: Sequence[Inbound]) -> None:
    """Add live telemetry messages to their minute's rollup (the caller owns the transaction)."""
    rows = rollup_rows([i for i in items if not i.retained])
    if not rows:
        return
    module: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = module.insert(telemetry_1m)
    added = {
        m: case(
            (telemetry_1m.c[m].is_(None), stmt.excluded[m]),
            (stmt.excluded[m].is_(None), telemetry_1m.c[m]),
            else_=telemetry_1m.c[m] + stmt.excluded[m],
        )
        for m in METRICS
    }
    stmt = stmt.on_conflict_do_update(
        index_elements=["device", "minute"], set_={"n": telemetry_1m.c.n + stmt.excluded.n, **added}
    )
    conn.execute(stmt, sorted(rows, key=lambda r: (r["device"], r["minute"])))


def history(engine: Engine, device: str, since: datetime) -> list[dict[str, Any]]:
    """Mean of each metric per minute since ``since``, oldest first."""
    query = (
        select(telemetry_1m)
        .where(telemetry_1m.c.device == device, telemetry_1m.c.minute >= since)
        .order_by(telemetry_1m.c.minute)
    )
    with engine.connect() as conn:
        out = []
        for row in conn.execute(query).mappings():
            n = max(1, int(row["n"]))
            point: dict[str, Any] = {"minute": row["minute"], "n": n}
            for metric in METRICS:
                point[metric] = None if row[metric] is None else round(row[metric] / n, 2)
            out.append(point)
        return out
