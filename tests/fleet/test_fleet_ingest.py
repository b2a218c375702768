"""Ingest through a real mosquitto into SQLite and PostgreSQL."""

from __future__ import annotations

import json

from fleet_helpers import FleetFactory, MakeDevice, wait_for

from fleet.broker import MosquittoBroker
from fleet.service import FleetService


def test_registry_online_offline_from_status_and_last_will(
    fleet: FleetService, make_device: MakeDevice
) -> None:
    device = make_device("kiosk-hn-0001", role="kiosk", version="0.9.1").connect()
    row = wait_for(lambda: fleet.store.device("kiosk-hn-0001"), what="device registered")
    wait_for(lambda: fleet.store.device("kiosk-hn-0001")["online"], what="online")  # type: ignore[index]
    row = fleet.store.device("kiosk-hn-0001")
    assert row is not None
    assert (row["role"], row["version"]) == ("kiosk", "0.9.1")
    device.crash()  # the broker publishes the retained last will
    wait_for(lambda: fleet.store.device("kiosk-hn-0001")["online"] is False, what="offline from will")  # type: ignore[index]


def test_retained_status_is_read_at_start(
    broker: MosquittoBroker, make_fleet: FleetFactory, make_device: MakeDevice
) -> None:
    make_device("cam-hn-0002").connect()
    offline = make_device("cam-hn-0003").connect()
    offline.crash()
    fleet = make_fleet(retained_sync_s=0.5)
    wait_for(lambda: len(fleet.store.devices()) == 2, what="both devices from retained status")
    states = {d["id"]: d["online"] for d in fleet.store.devices()}
    assert states == {"cam-hn-0002": True, "cam-hn-0003": False}


def test_telemetry_events_dedup_and_gaps(fleet: FleetService, make_device: MakeDevice) -> None:
    device = make_device("cam-hn-0004").connect()
    device.telemetry(cpu_pct=12.0)
    device.telemetry(cpu_pct=88.5, temp_c=None, fps=9.5)
    first = device.event("traffic.count", cars=3)
    device.send(first)  # delivered twice: stored once
    device.event(seq=4)  # seq 1..3 missing
    wait_for(lambda: fleet.store.gaps("cam-hn-0004"), what="gap detected")
    device.event(seq=1)
    device.event(seq=2)
    device.event(seq=3)
    wait_for(lambda: not fleet.store.gaps("cam-hn-0004", open_only=True), what="gap closed")
    row = fleet.store.device("cam-hn-0004")
    assert row is not None
    assert row["telemetry"]["cpu_pct"] == 88.5 and row["telemetry"]["fps"] == 9.5
    assert row["telemetry"]["temp_c"] is None
    events = fleet.store.events("cam-hn-0004")
    assert [e["seq"] for e in events] == [4, 3, 2, 1, 0]
    assert events[-1]["data"] == {"cars": 3}
    assert fleet.stats.events_duplicate == 1


def test_garbage_is_counted_acked_and_later_messages_still_stored(
    fleet: FleetService, make_device: MakeDevice
) -> None:
    device = make_device("cam-hn-0005").connect()
    topic = device.topics.event(device.id, "x.y")
    device.publish(topic, b"\xff\xfe\xfd")
    device.publish(topic, b"{not json")
    device.publish(topic, b"[1, 2, 3]")
    device.publish(device.topics.telemetry(device.id), json.dumps({"ts": "soon"}))
    device.publish(topic, b"{" + b" " * (300 * 1024) + b"}")  # over the 256 KiB default
    device.publish("city/v1/devices/NOT_AN_ID/status", b"{}")
    good = device.event("x.y", n=1)
    wait_for(lambda: fleet.store.events(device.id), what="good event after garbage")
    assert fleet.store.events(device.id)[0]["id"] == good["id"]
    counts = {(r["reason"], r["family"]): r["count"] for r in fleet.store.ingest_errors()}
    assert counts == {
        ("not_utf8", "events"): 1,
        ("not_json", "events"): 1,
        ("not_object", "events"): 1,
        ("invalid", "telemetry"): 1,
        ("oversized", "events"): 1,
        ("bad_topic", "status"): 1,
    }
    assert fleet.writer.alive and fleet.link.connected


def test_two_workers_share_the_stream_without_duplicates(
    make_fleet: FleetFactory, make_device: MakeDevice
) -> None:
    one = make_fleet(share=True, group="fleet")
    two = make_fleet(share=True, group="fleet")
    devices = [make_device(f"cam-sh-{i:04d}").connect(announce=False) for i in range(4)]
    sent = 0
    for _ in range(60):
        for device in devices:
            device.send(device.envelope(), wait=False)
            sent += 1
    wait_for(lambda: one.store.counts()["events"] == sent, timeout=20, what=f"{sent} events stored")
    assert one.stats.received["events"] > 0 and two.stats.received["events"] > 0
    assert one.stats.received["events"] + two.stats.received["events"] == sent
    for device in devices:
        assert [e["seq"] for e in one.store.events(device.id, limit=1000)] == list(range(59, -1, -1))
        assert one.store.gaps(device.id, open_only=True) == []  # any reordering gap was closed


def test_restart_with_persistent_session_loses_nothing(
    make_fleet: FleetFactory, make_device: MakeDevice
) -> None:
    first = make_fleet(worker_id="fleet-restart")
    device = make_device("cam-hn-0006").connect(announce=False)
    for _ in range(50):
        device.event()
    wait_for(lambda: first.stats.committed >= 50, what="first part")
    first.abort()  # a crash: no DISCONNECT, nothing more acknowledged
    for _ in range(100):  # while the fleet is down: the broker queues them for its session
        device.event()
    second = make_fleet(worker_id="fleet-restart")
    wait_for(lambda: second.store.counts()["events"] == 150, timeout=20, what="all 150 events")
    assert second.store.gaps(device.id) == []


def test_broker_restart_mid_stream(
    broker: MosquittoBroker, fleet: FleetService, make_device: MakeDevice
) -> None:
    device = make_device("cam-hn-0007").connect(announce=False)
    for _ in range(99):
        device.send(device.envelope(), wait=False)
    device.event()  # QoS 1 in order: once this one is acknowledged, the broker holds them all
    broker.restart()  # graceful: sessions and queued messages are persisted
    wait_for(lambda: fleet.link.connected and device.client.is_connected(), timeout=30, what="reconnected")
    for _ in range(100):
        device.event()
    wait_for(
        lambda: fleet.store.counts()["events"] == 200,
        timeout=20,
        what=f"all 200 events (have {fleet.store.counts()}, {fleet.store.gaps(device.id)})",
    )
    assert fleet.store.gaps(device.id, open_only=True) == []
