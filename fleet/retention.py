"""How long the fleet keeps events and telemetry rollups, and the job that removes older ones.

``Retention`` says how many days each table keeps (``FleetConfig.event_retention_days``,
``telemetry_retention_days``). ``housekeep`` is the periodic job (one worker at a time, under the
``retention`` lease: ``fleet.service``):

- PostgreSQL: day partitions are created ahead (``fleet.partitions.ensure_partitions``), and a
  day partition is dropped once the whole day is older than the cutoff, so a row lives at most one
  day longer than its retention;
- SQLite: old rows are deleted in batches of ``BATCH_ROWS``, one short transaction each, so
  ingest (which shares the one writer lock) waits at most one batch.

Other tables keep their rows: evidence records and their images follow the evidence rules,
commands and alerts are small.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, bindparam, text

from fleet.db import UtcDateTime
from fleet.partitions import BATCH_ROWS, PARTITIONED, Pruned, drop_before, ensure_partitions
from protocol.timefmt import utc_now


@dataclass(frozen=True)
class Retention:
    """Days of data kept per table; ``events_days`` 0 keeps events forever."""

    events_days: int = 90
    telemetry_days: int = 7

    def cutoffs(self, now: datetime) -> dict[str, datetime]:
        """Table → rows older than this are removed."""
        out = {"telemetry_1m": now - timedelta(days=self.telemetry_days)}
        if self.events_days > 0:
            out["events"] = now - timedelta(days=self.events_days)
        return out


def delete_batches(engine: Engine, table: str, cutoff: datetime) -> Pruned:
    """SQLite: delete the rows of ``table`` older than ``cutoff``, ``BATCH_ROWS`` per transaction."""
    key = PARTITIONED[table]
    delete = text(
        f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {key} < :cutoff "
        f"LIMIT {BATCH_ROWS})"
    ).bindparams(bindparam("cutoff", type_=UtcDateTime()))
    deleted = 0
    while True:
        with engine.begin() as conn:
            count = int(conn.execute(delete, {"cutoff": cutoff}).rowcount or 0)
        deleted += count
        if count < BATCH_ROWS:
            return Pruned(table, 0, deleted)


def housekeep(engine: Engine, retention: Retention, *, now: datetime | None = None) -> list[Pruned]:
    """Create partitions ahead (PostgreSQL) and remove what is older than the retention."""
    moment = now or utc_now()
    cutoffs = retention.cutoffs(moment)
    if engine.dialect.name != "postgresql":
        return [delete_batches(engine, table, cutoff) for table, cutoff in cutoffs.items()]
    out = []
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL lock_timeout = '10s'")  # never hold ingest up for long
        ensure_partitions(conn, moment.date())
    for table, cutoff in cutoffs.items():
        with engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
            out.append(drop_before(conn, table, cutoff))
    return out
