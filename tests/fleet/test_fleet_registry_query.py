"""The device registry at city scale, on SQLite and PostgreSQL: paging, sorting, filters, silent
devices, the overview, alerts and their acknowledgement, telemetry history, schema upgrade."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import inspect, text, update

from fleet.alerts import AlertEngine, AlertRules, acknowledge, device_findings, list_alerts, open_counts
from fleet.db import devices, site_of
from fleet.devicequery import DeviceFilter
from fleet.inbound import Inbound, classify
from fleet.store import Store
from fleet.synthetic import fill
from protocol.timefmt import format_ts, now_ts, utc_now
from protocol.topics import Topics

T = Topics()
N = 400


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url, silent_after_s=120)
    s.create_schema()
    yield s
    s.dispose()


@pytest.fixture
def city(store: Store) -> list[dict[str, Any]]:
    return fill(store, N)


def msg(topic: str, body: Any) -> Inbound:
    return classify(
        topic, json.dumps(body).encode(), topics=T, received_at=utc_now(), max_bytes=lambda f, k: 1 << 16
    )


def telemetry(device: str, seq: int, **values: Any) -> Inbound:
    body = {"ts": now_ts(), "seq": seq, "uptime_s": 10.0, "cpu_pct": 5.0, "mem_pct": 20.0, "disk_pct": 30.0}
    item = msg(T.telemetry(device), {**body, **values})
    assert item.ok, item
    return item


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in rows]


def test_site_of_device_ids() -> None:
    assert site_of("cam-hn-gbt-0042") == "hn-gbt"
    assert site_of("kiosk-hn-btl-0001") == "hn-btl"
    assert site_of("gw-demo-0001") == "demo"
    assert site_of("sensor-x") is None


def test_pages_cover_the_registry_once_in_order(store: Store, city: list[dict[str, Any]]) -> None:
    seen: list[str] = []
    offset = 0
    while True:
        rows, total = store.device_page(DeviceFilter(limit=150, offset=offset))
        assert total == N
        if not rows:
            break
        seen += ids(rows)
        offset += len(rows)
    assert seen == sorted(r["id"] for r in city)


def test_sort_descending_by_last_seen_with_id_tiebreak(store: Store, city: list[dict[str, Any]]) -> None:
    rows, _ = store.device_page(DeviceFilter(sort="last_seen", descending=True, limit=50))
    expected = sorted(city, key=lambda r: (r["last_seen"], r["id"]), reverse=True)[:50]
    assert ids(rows) == ids(expected)


def test_filters_match_a_python_reference(store: Store, city: list[dict[str, Any]]) -> None:
    cutoff = utc_now() - timedelta(seconds=store.silent_after_s)

    def state(r: dict[str, Any]) -> str:
        if not r["online"]:
            return "offline"
        return "online" if r["last_seen"] >= cutoff else "silent"

    cases: list[tuple[DeviceFilter, Any]] = [
        (DeviceFilter(state="silent", limit=None), lambda r: state(r) == "silent"),
        (DeviceFilter(state="online", limit=None), lambda r: state(r) == "online"),
        (DeviceFilter(state="offline", limit=None), lambda r: state(r) == "offline"),
        (
            DeviceFilter(site="hn-gbt", role="camera", limit=None),
            lambda r: r["site"] == "hn-gbt" and r["role"] == "camera",
        ),
        (DeviceFilter(version="1.3.2", limit=None), lambda r: r["version"] == "1.3.2"),
        (DeviceFilter(q="GBT-001", limit=None), lambda r: "gbt-001" in r["id"]),
        (DeviceFilter(q="100%", limit=None), lambda r: False),  # LIKE wildcards are literal
        (DeviceFilter(online=False, limit=None), lambda r: state(r) != "online"),
    ]
    for flt, keep in cases:
        rows, total = store.device_page(flt)
        want = sorted(r["id"] for r in city if keep(r))
        assert ids(rows) == want, flt
        assert total == len(want), flt
    assert any(state(r) == "silent" for r in city) and any(state(r) == "offline" for r in city)


def test_silent_whatever_the_retained_status_says(store: Store) -> None:
    """A session that ended without a will: status online, nothing heard since. Liveness comes from
    last_seen at query time; no write is needed to notice the silence."""
    store.apply([msg(T.status("kiosk-hn-btl-0001"), {"online": True, "ts": now_ts(), "role": "kiosk"})])
    row = store.device("kiosk-hn-btl-0001")
    assert row is not None and row["state"] == "online" and row["online"] and row["site"] == "hn-btl"
    with store.writer.begin() as conn:  # time passes: 10 minutes without a message
        conn.execute(update(devices).values(last_seen=utc_now() - timedelta(minutes=10)))
    row = store.device("kiosk-hn-btl-0001")
    assert row is not None and row["state"] == "silent" and not row["online"]
    assert store.counts()["devices_silent"] == 1 and store.counts()["devices_online"] == 0
    store.apply([telemetry("kiosk-hn-btl-0001", 1)])
    row = store.device("kiosk-hn-btl-0001")
    assert row is not None and row["state"] == "online"  # heard again


def test_overview_adds_up(store: Store, city: list[dict[str, Any]]) -> None:
    AlertEngine(store).evaluate()
    overview = store.overview()
    assert sum(s["total"] for s in overview["sites"]) == N
    assert sum(v["total"] for v in overview["versions"]) == N
    counts = store.counts()
    assert sum(s["online"] for s in overview["sites"]) == counts["devices_online"]
    assert sum(s["silent"] for s in overview["sites"]) == counts["devices_silent"]
    alerting = {r["device"] for r in list_alerts(store, limit=10_000)[0]}
    assert sum(s["alerting"] for s in overview["sites"]) == len(alerting) > 0
    gbt = next(s for s in overview["sites"] if s["site"] == "hn-gbt")
    assert gbt["total"] == sum(1 for r in city if r["site"] == "hn-gbt")


def test_health_filter_lists_devices_with_that_open_alert(store: Store, city: list[dict[str, Any]]) -> None:
    AlertEngine(store).evaluate()
    rows, total = store.device_page(DeviceFilter(health="overheat", limit=None))
    hot = {a["device"] for a in list_alerts(store, kind="overheat", limit=10_000)[0]}
    assert set(ids(rows)) == hot and total == len(hot) > 0
    assert all(r["telemetry"]["temp_c"] >= 75 for r in rows)
    rows, _ = store.device_page(DeviceFilter(health="any", limit=None))
    assert len(rows) == len({a["device"] for a in list_alerts(store, limit=10_000)[0]})


def test_condition_alerts_open_update_and_resolve(store: Store) -> None:
    store.apply([msg(T.status("cam-hn-dda-0001"), {"online": True, "ts": now_ts(), "role": "camera"})])
    hot = {"temp_c": 81.0, "disk_pct": 95.0, "outbox_depth": 5000}
    store.apply([telemetry("cam-hn-dda-0001", 1, **hot)])
    engine = AlertEngine(store)
    assert engine.evaluate() == {"opened": 3, "resolved": 0}
    assert open_counts(store) == {"overheat": 1, "disk_low": 1, "outbox_backlog": 1}
    assert engine.evaluate() == {"opened": 0, "resolved": 0}  # one open alert per device and kind
    store.apply([telemetry("cam-hn-dda-0001", 2, **{**hot, "temp_c": 85.0})])
    engine.evaluate()
    (overheat,), _ = list_alerts(store, kind="overheat")
    assert overheat["summary"] == "85.0 °C"
    store.apply([telemetry("cam-hn-dda-0001", 3, temp_c=50.0, disk_pct=40.0, outbox_depth=0)])
    assert engine.evaluate() == {"opened": 0, "resolved": 3}
    assert open_counts(store) == {}
    assert len(list_alerts(store, open_only=False)[0]) == 3


def test_offline_alert_after_the_limit(store: Store) -> None:
    store.apply([msg(T.status("kiosk-hn-hkm-0002"), {"online": True, "ts": now_ts(), "role": "kiosk"})])
    rules = AlertRules(offline_after_s=300)
    AlertEngine(store, rules).evaluate()
    assert open_counts(store) == {}
    with store.writer.begin() as conn:
        conn.execute(update(devices).values(last_seen=utc_now() - timedelta(minutes=6)))
    AlertEngine(store, rules).evaluate()
    (alert,), _ = list_alerts(store)
    assert alert["kind"] == "offline" and alert["summary"] == "silent for 6 min"


def test_rules_on_one_row() -> None:
    now = utc_now()
    row = {
        "id": "cam-x-0001",
        "state": "online",
        "last_seen": now,
        "telemetry_at": now,
        "telemetry": {
            "ts": format_ts(now - timedelta(minutes=5)),
            "on_battery": True,
            "detection_quality": 0.2,
        },
    }
    kinds = {f.kind for f in device_findings(row, now, AlertRules())}
    assert kinds == {"clock_skew", "on_battery", "detection_quality"}
    offline = {**row, "state": "offline", "last_seen": now - timedelta(hours=3)}
    assert [f.kind for f in device_findings(offline, now, AlertRules())] == [
        "offline"
    ]  # old telemetry says nothing


def test_cabinet_events_latch_until_acknowledged(store: Store) -> None:
    device = "cam-hn-tho-0003"
    engine = AlertEngine(store)

    def ev(kind: str, seq: int) -> Inbound:
        body = {
            "id": uuid.uuid4().hex,
            "seq": seq,
            "ts": now_ts(),
            "device": device,
            "kind": kind,
            "data": {},
        }
        return msg(T.event(device, kind), body)

    store.apply([ev("cabinet.tamper", 0), ev("power.on_battery", 1)])
    assert engine.evaluate()["opened"] == 2
    assert open_counts(store) == {"tamper": 1, "on_battery": 1}
    assert engine.evaluate()["opened"] == 0
    assert AlertEngine(store).evaluate()["opened"] == 0  # another worker re-reading the same events
    store.apply([ev("power.restored", 2)])
    assert engine.evaluate()["resolved"] == 1
    (tamper,), _ = list_alerts(store)
    assert tamper["kind"] == "tamper" and tamper["resolved_at"] is None
    done = acknowledge(store, tamper["id"], by="Lan (operations)", note="door closed, seal replaced")
    assert (
        done is not None
        and done["resolved_at"] is not None
        and done["ack_note"] == "door closed, seal replaced"
    )
    assert open_counts(store) == {}
    assert acknowledge(store, 999_999, by="x", note="y") is None


def test_telemetry_history_in_minute_rollups(store: Store) -> None:
    device = "kiosk-hn-lbi-0004"
    store.apply([telemetry(device, i, cpu_pct=10.0 * i) for i in (1, 3)])
    store.apply([telemetry(device, 4, cpu_pct=40.0, temp_c=50.0)])
    points = store.telemetry_history(device)
    assert sum(p["n"] for p in points) == 3
    if len(points) == 1:  # all three in one minute (else split over a minute boundary)
        assert points[0]["cpu_pct"] == pytest.approx((10 + 30 + 40) / 3, abs=0.01)
    assert store.telemetry_history("nobody-0001") == []


def test_schema_upgrade_adds_site_and_indexes(db_url: str) -> None:
    """A database made before the registry was paged (no site column, no indexes) is brought up to date."""
    old = Store(db_url)
    with old.writer.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE devices (id VARCHAR(64) PRIMARY KEY, role TEXT, version TEXT,"
                " online BOOLEAN NOT NULL,"
                " boot_id TEXT, first_seen TIMESTAMP NOT NULL, last_seen TIMESTAMP NOT NULL, status TEXT,"
                " status_at TIMESTAMP, telemetry TEXT, telemetry_at TIMESTAMP, shadow_reported TEXT,"
                " shadow_reported_at TIMESTAMP, shadow_desired TEXT, last_seq BIGINT)"
            )
        )
    old.dispose()
    store = Store(db_url)
    try:
        store.create_schema()
        store.create_schema()  # idempotent
        inspector = inspect(store.reader)
        assert "site" in {c["name"] for c in inspector.get_columns("devices")}
        names = {i["name"] for i in inspector.get_indexes("devices")}
        assert {"ix_devices_site", "ix_devices_last_seen", "ix_devices_online_last_seen"} <= names
    finally:
        store.dispose()
