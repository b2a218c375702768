"""The store on SQLite and PostgreSQL: batches, de-duplication, gaps, registry, commands, counters."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

from fleet.inbound import Inbound, classify
from fleet.store import Store
from protocol.timefmt import now_ts, utc_now
from protocol.topics import Topics

T = Topics()


def msg(topic: str, body: Any, *, retained: bool = False) -> Inbound:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    item = classify(topic, raw, topics=T, received_at=utc_now(), max_bytes=lambda f, k: 1024)
    item.retained = retained
    return item


def event(device: str, seq: int, *, event_id: str | None = None, kind: str = "test.event") -> Inbound:
    body = {"id": event_id or uuid.uuid4().hex, "seq": seq, "ts": now_ts(), "device": device, "kind": kind}
    return msg(T.event(device, kind), {**body, "data": {"n": seq}})


def status(device: str, online: bool, **extra: Any) -> dict[str, Any]:
    return {"online": online, "ts": now_ts(), "role": "kiosk", "version": "2.0", **extra}


def test_schema_is_idempotent(store: Store) -> None:
    store.create_schema()
    assert store.counts()["devices"] == 0


def test_same_event_twice_is_one_row(store: Store) -> None:
    first = event("cam-a-0001", 0, event_id="ev-1")
    again = event("cam-a-0001", 0, event_id="ev-1")
    out = store.apply([first, again])
    assert (out.events_new, out.events_duplicate) == (1, 1)
    out = store.apply([event("cam-a-0001", 0, event_id="ev-1")])
    assert (out.events_new, out.events_duplicate) == (0, 1)
    rows = store.events("cam-a-0001")
    assert [r["id"] for r in rows] == ["ev-1"]
    assert rows[0]["data"] == {"n": 0}


def test_gap_opens_on_jump_and_closes_when_late_events_arrive(store: Store) -> None:
    dev = "cam-a-0002"
    store.apply([event(dev, 0), event(dev, 1)])
    out = store.apply([event(dev, 5)])
    assert out.gaps_opened == 1
    [gap] = store.gaps(dev)
    assert (gap["first_seq"], gap["last_seq"], gap["missing"], gap["closed_at"]) == (2, 4, 3, None)
    store.apply([event(dev, 3)])
    [gap] = store.gaps(dev)
    assert gap["missing"] == 2 and gap["closed_at"] is None
    out = store.apply([event(dev, 2), event(dev, 4), event(dev, 6)])
    assert out.gaps_closed == 1 and out.gaps_opened == 0
    [gap] = store.gaps(dev)
    assert gap["missing"] == 0 and gap["closed_at"] is not None
    assert store.gaps(dev, open_only=True) == []
    assert store.device(dev)["last_seq"] == 6  # type: ignore[index]


def test_out_of_order_inside_one_batch_is_no_gap(store: Store) -> None:
    dev = "cam-a-0003"
    store.apply([event(dev, 0)])
    store.apply([event(dev, 3), event(dev, 1), event(dev, 2)])
    assert store.gaps(dev) == []


def test_a_duplicate_does_not_close_a_gap(store: Store) -> None:
    dev = "cam-a-0004"
    store.apply([event(dev, 0, event_id="a"), event(dev, 3, event_id="b")])
    store.apply([event(dev, 0, event_id="a")])
    assert store.gaps(dev)[0]["missing"] == 2


def test_status_and_will_drive_online(store: Store) -> None:
    dev = "kiosk-b-0001"
    store.apply([msg(T.status(dev), status(dev, True, boot_id="boot-1"))])
    row = store.device(dev)
    assert row is not None
    assert (row["online"], row["role"], row["version"], row["boot_id"]) == (True, "kiosk", "2.0", "boot-1")
    seen = row["last_seen"]
    store.apply([msg(T.status(dev), {"online": False, "ts": now_ts()})])  # a bare last will
    row = store.device(dev)
    assert row is not None
    assert row["online"] is False
    assert row["role"] == "kiosk"  # kept: the will did not say
    assert row["last_seen"] == seen  # the will is the broker speaking, not the device


def test_retained_replay_does_not_override_live_state(store: Store) -> None:
    dev = "kiosk-b-0002"
    floor = utc_now() - timedelta(seconds=1)
    store.apply([msg(T.status(dev), status(dev, False))], retained_floor=floor)
    store.apply([msg(T.status(dev), status(dev, True), retained=True)], retained_floor=floor)
    assert store.device(dev)["online"] is False  # type: ignore[index]
    # A retained value is applied when what is stored is older than this worker.
    store.apply([msg(T.status(dev), status(dev, True), retained=True)], retained_floor=utc_now())
    assert store.device(dev)["online"] is True  # type: ignore[index]


def test_telemetry_and_shadow_are_latest(store: Store) -> None:
    dev = "cam-b-0003"
    base = {"ts": now_ts(), "seq": 1, "uptime_s": 1, "cpu_pct": 10, "mem_pct": 20, "disk_pct": 5}
    store.apply([msg(T.telemetry(dev), {**base, "temp_c": None})])
    store.apply([msg(T.telemetry(dev), {**base, "seq": 2, "cpu_pct": 77.5, "temp_c": 60.1, "fps": 14})])
    shadow = {"ts": now_ts(), "config_version": 3, "software": {"agent": "1"}, "peripherals": {"cam": "ok"}}
    store.apply([msg(T.shadow_reported(dev), shadow)])
    row = store.device(dev)
    assert row is not None
    assert row["telemetry"]["cpu_pct"] == 77.5 and row["telemetry"]["fps"] == 14
    assert row["last_seen"] > row["first_seen"]  # moved forward with each live message
    assert row["shadow_reported"]["config_version"] == 3
    assert row["online"] is False  # telemetry alone does not say online


def test_rejected_messages_are_counted_by_reason_and_family(store: Store) -> None:
    dev = "cam-b-0004"
    items = [
        msg(T.event(dev, "x"), b"\xff\xfe"),
        msg(T.event(dev, "x"), b"{nope"),
        msg(T.telemetry(dev), b"[1, 2]"),
        msg(T.telemetry(dev), {"ts": "yesterday"}),
        msg(T.status(dev), b"x" * 2000),
        msg(T.status(dev), b"x" * 2000),
    ]
    out = store.apply(items)
    assert out.rejected == 6
    counts = {(r["reason"], r["family"]): r["count"] for r in store.ingest_errors()}
    assert counts == {
        ("not_utf8", "events"): 1,
        ("not_json", "events"): 1,
        ("not_object", "telemetry"): 1,
        ("invalid", "telemetry"): 1,
        ("oversized", "status"): 2,
    }
    store.apply([msg(T.status(dev), b"x" * 2000)])
    assert {(r["reason"], r["family"]): r["count"] for r in store.ingest_errors()}[
        ("oversized", "status")
    ] == 3
    assert store.counts()["devices"] == 0  # nothing readable arrived, so no device was registered


def test_command_result_updates_pending_command(store: Store) -> None:
    dev = "cam-b-0005"
    store.apply([msg(T.status(dev), status(dev, True))])
    now = utc_now()
    row = {
        "id": "cmd-1",
        "device": dev,
        "name": "ping",
        "args": {},
        "issued_at": now,
        "expires_at": now + timedelta(seconds=30),
        "nonce": "n1",
        "status": "pending",
    }
    store.insert_command(row)
    store.insert_command({**row, "id": "cmd-2", "expires_at": now - timedelta(seconds=1)})
    assert store.expire_commands(utc_now()) == 1
    store.apply([msg(T.commands_res(dev), {"id": "cmd-1", "status": "ok", "result": {"pong": True}})])
    # An answer from another device cannot touch the command.
    store.apply([msg(T.commands_res("cam-b-9999"), {"id": "cmd-2", "status": "ok"})])
    one, two = store.command("cmd-1"), store.command("cmd-2")
    assert one is not None and two is not None
    assert (one["status"], one["result"], one["answered_at"] is not None) == ("ok", {"pong": True}, True)
    assert two["status"] == "expired"
    assert store.counts()["commands"] == {"ok": 1, "expired": 1}


def test_queries_filter(store: Store) -> None:
    store.apply([msg(T.status("kiosk-c-0001"), status("kiosk-c-0001", True))])
    cam = {"online": False, "ts": now_ts(), "role": "camera"}
    store.apply([msg(T.status("cam-c-0002"), cam)])
    assert [d["id"] for d in store.devices(role="camera")] == ["cam-c-0002"]
    assert [d["id"] for d in store.devices(online=True)] == ["kiosk-c-0001"]
    store.apply([event("cam-c-0002", i, kind="a.b" if i % 2 else "c.d") for i in range(6)])
    assert [e["seq"] for e in store.events("cam-c-0002", kind="a.b")] == [5, 3, 1]
    assert len(store.events("cam-c-0002", limit=2)) == 2
    assert store.events("cam-c-0002", since=utc_now() + timedelta(minutes=1)) == []
    assert len(store.events(None, limit=100)) == 6
