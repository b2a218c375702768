"""PostgreSQL: the event and telemetry tables partitioned by day, and old days dropped whole.

``events`` is range-partitioned on ``received_at`` and ``telemetry_1m`` on ``minute`` (both UTC,
set by the fleet, never by a device clock). One partition per UTC day, named
``TABLE_pYYYYMMDD``, plus ``TABLE_default`` that catches a row no day partition takes (it stays
empty while the maintenance job keeps days created ahead). Retention drops a day partition once
the whole day is older than the cutoff (a constant-time ``DROP TABLE``, no vacuum), and deletes old
rows of the default partition in batches.

A partitioned table's primary key must hold the partition key: the events' key becomes
``(id, received_at)``. Events stay unique by id because every batch that stores a device's events
first locks that device's row and looks the ids up (``fleet.apply``), so two workers never store
one event twice. ``telemetry_1m``'s key ``(device, minute)`` already holds it.

``prepare`` (run by ``fleet.db.create_schema`` under its advisory lock) creates the partitioned
tables, or converts the plain tables an older release made: renamed aside, rows copied into day
partitions in the same transaction, then dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

from sqlalchemy import Column, Connection, Index, MetaData, Table, bindparam, text

from fleet.db import UtcDateTime, metadata

PARTITIONED: dict[str, str] = {"events": "received_at", "telemetry_1m": "minute"}
"""Partitioned table → its partition key (a UTC time the fleet sets)."""
AHEAD_DAYS = 7
"""Day partitions kept created ahead of today (a week without the maintenance job is harmless)."""
BATCH_ROWS = 5000
"""Rows deleted per statement from a default partition (and per transaction on SQLite)."""
_DAY = re.compile(r"_p(\d{8})$")


@dataclass(frozen=True)
class Pruned:
    """What retention removed from one table."""

    table: str
    partitions_dropped: int = 0
    rows_deleted: int = 0


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=timezone.utc)


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def partitioned_copy(table: Table, key: str) -> Table:
    """``table`` as a partitioned PostgreSQL table: same columns and indexes, the key in the PK."""
    copy_md = MetaData()
    primary = {c.name for c in table.primary_key} | {key}
    columns = [
        Column(c.name, c.type, primary_key=c.name in primary, nullable=c.nullable and c.name not in primary)
        for c in table.columns
    ]
    copy = Table(table.name, copy_md, *columns, postgresql_partition_by=f"RANGE ({key})")
    for index in table.indexes:
        Index(index.name, *[copy.c[c.name] for c in index.columns])
    return copy


def relkind(conn: Connection, name: str) -> str | None:
    """``p`` partitioned, ``r`` plain table, None: no such table (in the current schema)."""
    row = conn.execute(
        text(
            "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = :name AND n.nspname = current_schema()"
        ),
        {"name": name},
    ).first()
    return None if row is None else str(row[0])


def partitions(conn: Connection, table: str) -> list[str]:
    """Names of the partitions of ``table``."""
    rows = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = CAST(:table AS regclass) ORDER BY c.relname"
        ),
        {"table": table},
    )
    return [str(r[0]) for r in rows]


def _ensure_default(conn: Connection, table: str) -> None:
    conn.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {table}_default PARTITION OF {table} DEFAULT")


def _create_day(conn: Connection, table: str, key: str, day: date) -> None:
    """Create the partition of ``day``; rows of that day already in the default partition move in."""
    name = partition_name(table, day)
    low, high = day_start(day), day_start(day + timedelta(days=1))
    bounds = f"FROM ('{low.isoformat()}') TO ('{high.isoformat()}')"
    in_day = text(f"{key} >= :low AND {key} < :high").bindparams(
        bindparam("low", type_=UtcDateTime()), bindparam("high", type_=UtcDateTime())
    )
    where = {"low": low, "high": high}
    stray = conn.execute(text(f"SELECT 1 FROM {table}_default WHERE {in_day} LIMIT 1"), where).first()
    if stray is None:
        conn.exec_driver_sql(f"CREATE TABLE {name} PARTITION OF {table} FOR VALUES {bounds}")
        return
    moved = f"{name}_moving"
    conn.execute(text(f"CREATE TEMP TABLE {moved} AS SELECT * FROM {table}_default WHERE {in_day}"), where)
    conn.execute(text(f"DELETE FROM {table}_default WHERE {in_day}"), where)
    conn.exec_driver_sql(f"CREATE TABLE {name} PARTITION OF {table} FOR VALUES {bounds}")
    conn.exec_driver_sql(f"INSERT INTO {table} SELECT * FROM {moved}")
    conn.exec_driver_sql(f"DROP TABLE {moved}")


def ensure_partitions(conn: Connection, today: date, *, first: date | None = None) -> int:
    """Day partitions from ``first`` (default: yesterday) to ``today + AHEAD_DAYS`` on every
    partitioned table, and its default partition; returns how many were created."""
    created = 0
    start = first if first is not None else today - timedelta(days=1)
    for table, key in PARTITIONED.items():
        _ensure_default(conn, table)
        present = set(partitions(conn, table))
        day = start
        while day <= today + timedelta(days=AHEAD_DAYS):
            if partition_name(table, day) not in present:
                _create_day(conn, table, key, day)
                created += 1
            day += timedelta(days=1)
    return created


def _convert(conn: Connection, table: Table, key: str, today: date, floor: date) -> None:
    """Turn the plain ``table`` of an older release into the partitioned one, keeping its rows."""
    aside = f"{table.name}_unpartitioned"
    conn.exec_driver_sql(f"ALTER TABLE {table.name} RENAME TO {aside}")
    for index in table.indexes:  # the names are needed by the partitioned table's indexes
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS {index.name}")
    pkey = conn.execute(
        text("SELECT conname FROM pg_constraint WHERE conrelid = CAST(:t AS regclass) AND contype = 'p'"),
        {"t": aside},
    ).scalar()
    if pkey is not None:
        conn.exec_driver_sql(f'ALTER TABLE {aside} RENAME CONSTRAINT "{pkey}" TO {aside}_pkey')
    partitioned_copy(table, key).create(conn)
    oldest = conn.exec_driver_sql(f"SELECT min({key}) FROM {aside}").scalar()
    first = today - timedelta(days=1)
    if isinstance(oldest, datetime):
        first = min(first, max(oldest.astimezone(timezone.utc).date(), floor))
    _ensure_default(conn, table.name)
    present = set(partitions(conn, table.name))
    day = first
    while day < today - timedelta(days=1):  # the days of the old rows (ensure_partitions does the rest)
        if partition_name(table.name, day) not in present:
            _create_day(conn, table.name, key, day)
        day += timedelta(days=1)
    kept = [
        str(r[0])
        for r in conn.execute(
            text("SELECT column_name FROM information_schema.columns WHERE table_name = :t"), {"t": aside}
        )
    ]
    names = ", ".join(c.name for c in table.columns if c.name in kept)
    conn.exec_driver_sql(f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {aside}")
    conn.exec_driver_sql(f"DROP TABLE {aside}")


def prepare(conn: Connection, today: date, *, history_days: int = 400) -> None:
    """Create the partitioned tables (or convert plain ones) and their partitions around today.

    Converting gives the old rows of the last ``history_days`` days their day partitions; older
    rows go to the default partition, where retention deletes them."""
    for name, key in PARTITIONED.items():
        kind = relkind(conn, name)
        if kind == "p":
            continue
        if kind is None:
            partitioned_copy(metadata.tables[name], key).create(conn)
        else:
            _convert(conn, metadata.tables[name], key, today, today - timedelta(days=history_days))
    ensure_partitions(conn, today)


def drop_before(conn: Connection, table: str, cutoff: datetime) -> Pruned:
    """Drop the day partitions of ``table`` that end at or before ``cutoff``; delete older rows of
    its default partition in batches."""
    dropped = 0
    for name in partitions(conn, table):
        match = _DAY.search(name)
        if match is None:
            continue
        day = datetime.strptime(match.group(1), "%Y%m%d").date()
        if day_start(day + timedelta(days=1)) <= cutoff:
            conn.exec_driver_sql(f"DROP TABLE {name}")
            dropped += 1
    key = PARTITIONED[table]
    delete = text(
        f"DELETE FROM {table}_default WHERE ctid IN "
        f"(SELECT ctid FROM {table}_default WHERE {key} < :cutoff LIMIT {BATCH_ROWS})"
    ).bindparams(bindparam("cutoff", type_=UtcDateTime()))
    deleted = 0
    while True:
        count = int(conn.execute(delete, {"cutoff": cutoff}).rowcount or 0)
        deleted += count
        if count < BATCH_ROWS:
            break
    return Pruned(table, dropped, deleted)
