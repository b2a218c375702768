"""Retention of events and telemetry rollups on SQLite and PostgreSQL (day partitions there), and
the upgrade of plain tables to partitioned ones."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text

from fleet.db import events, metadata, telemetry_1m
from fleet.inbound import Inbound, classify
from fleet.partitions import ensure_partitions, partition_name, partitions, relkind
from fleet.retention import Retention, housekeep
from fleet.store import Store
from protocol.timefmt import format_ts, utc_now
from protocol.topics import Topics

T = Topics()
DEVICE = "cam-hn-gbt-0001"


def event(seq: int, at: datetime, *, event_id: str | None = None) -> Inbound:
    body = {
        "id": event_id or str(uuid.uuid4()),
        "seq": seq,
        "ts": format_ts(at),
        "device": DEVICE,
        "kind": "test.event",
        "data": {"n": seq},
    }
    item = classify(
        T.event(DEVICE, "test.event"),
        json.dumps(body).encode(),
        topics=T,
        received_at=at,
        max_bytes=lambda f, k: 1 << 16,
    )
    assert item.ok, item
    return item


def telemetry_row(minute: datetime) -> dict[str, Any]:
    minute = minute.replace(second=0, microsecond=0)
    return {"device": DEVICE, "minute": minute, "n": 1, "cpu_pct": 10.0, "mem_pct": 1.0, "disk_pct": 1.0}


def count(store: Store, table: Any) -> int:
    with store.reader.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_old_events_and_telemetry_are_removed_and_new_ones_kept(store: Store) -> None:
    now = utc_now()
    old, ancient, recent = now - timedelta(days=5), now - timedelta(days=400), now - timedelta(hours=1)
    if store.dialect == "postgresql":  # the days of the old rows have partitions; the ancient one not
        with store.writer.begin() as conn:
            ensure_partitions(conn, now.date(), first=old.date())
    old_events = [event(1, old), event(2, old + timedelta(minutes=1)), event(3, ancient)]
    store.apply(old_events)
    kept = [event(4, recent), event(5, now)]
    store.apply(kept)
    with store.writer.begin() as conn:
        rows = [telemetry_row(old), telemetry_row(ancient), telemetry_row(recent), telemetry_row(now)]
        conn.execute(telemetry_1m.insert(), rows)

    pruned = {p.table: p for p in housekeep(store.writer, Retention(events_days=2, telemetry_days=2))}

    assert pruned["events"].rows_deleted + 2 * pruned["events"].partitions_dropped >= 1
    listed = store.events(DEVICE)
    assert [r["seq"] for r in listed] == [5, 4]
    assert [r["seq"] for r in store.events()] == [5, 4]
    assert store.event(str((kept[0].body or {})["id"])) is not None
    assert store.event(str((old_events[0].body or {})["id"])) is None
    assert count(store, events) == 2
    assert count(store, telemetry_1m) == 2
    assert len(store.telemetry_history(DEVICE)) == 2
    if store.dialect == "postgresql":
        with store.reader.connect() as conn:
            names = partitions(conn, "events")
        assert partition_name("events", old.date()) not in names  # dropped whole
        assert partition_name("events", now.date()) in names
        assert partition_name("events", now.date() + timedelta(days=7)) in names  # created ahead
    again = housekeep(store.writer, Retention(events_days=2, telemetry_days=2))
    assert all(p.rows_deleted == 0 and p.partitions_dropped == 0 for p in again)


def test_events_kept_forever_with_zero_days(store: Store) -> None:
    store.apply([event(1, utc_now() - timedelta(days=30))])
    housekeep(store.writer, Retention(events_days=0, telemetry_days=1))
    assert count(store, events) == 1


def test_a_redelivered_event_is_stored_once_whatever_its_arrival_day(store: Store) -> None:
    now = utc_now()
    first = event(1, now - timedelta(days=1), event_id="same-event")
    outcome = store.apply([first])
    assert outcome.events_new == 1
    again = store.apply([event(1, now, event_id="same-event")])
    assert (again.events_new, again.events_duplicate) == (0, 1)
    assert count(store, events) == 1


@pytest.mark.postgres
def test_plain_tables_of_an_older_release_become_partitioned_with_their_rows(pg_cluster: Any) -> None:
    url = pg_cluster.new_database()
    old = Store(url)
    metadata.create_all(old.writer)  # what an older release made: plain tables
    now = utc_now()
    old.apply([event(1, now - timedelta(days=3)), event(2, now - timedelta(days=1)), event(3, now)])
    with old.writer.begin() as conn:
        conn.execute(telemetry_1m.insert(), [telemetry_row(now - timedelta(days=2)), telemetry_row(now)])
    old.dispose()

    store = Store(url)
    try:
        store.create_schema()
        store.create_schema()  # idempotent
        with store.reader.connect() as conn:
            assert relkind(conn, "events") == "p" and relkind(conn, "telemetry_1m") == "p"
            assert relkind(conn, "events_unpartitioned") is None
            assert partition_name("events", (now - timedelta(days=3)).date()) in partitions(conn, "events")
            in_default = conn.execute(text("SELECT count(*) FROM events_default")).scalar_one()
        assert in_default == 0
        assert [r["seq"] for r in store.events(DEVICE)] == [3, 2, 1]
        assert count(store, telemetry_1m) == 2
        assert store.apply([event(4, now)]).events_new == 1
        housekeep(store.writer, Retention(events_days=2, telemetry_days=1))
        assert [r["seq"] for r in store.events(DEVICE)] == [4, 3, 2]
    finally:
        store.dispose()


@pytest.mark.postgres
def test_workers_starting_together_create_the_schema_one_after_the_other(pg_cluster: Any) -> None:
    url = pg_cluster.new_database()
    stores = [Store(url) for _ in range(3)]
    errors: list[BaseException] = []

    def create(store: Store) -> None:
        try:
            store.create_schema()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for store in stores:
        store.dispose()
    assert errors == []
