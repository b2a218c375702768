"""The writer in its own process: same results, and a killed writer process loses nothing."""

from __future__ import annotations

import os
import signal
import threading
import time

from fleet_helpers import FleetFactory, MakeDevice, wait_for

from fleet.procwriter import ProcessWriter


def test_process_writer_ingests_like_the_thread(make_fleet: FleetFactory, make_device: MakeDevice) -> None:
    fleet = make_fleet(writer_process=True)
    assert isinstance(fleet.writer, ProcessWriter) and fleet.writer.pid != os.getpid()
    device = make_device("cam-pw-0001").connect()
    device.telemetry(cpu_pct=71.0)
    first = device.event("a.b", n=1)
    device.send(first)
    device.event(seq=3)
    device.publish(device.topics.event(device.id, "a.b"), b"\xffgarbage")
    wait_for(lambda: fleet.store.counts()["events"] == 2, what="events")
    wait_for(lambda: fleet.store.ingest_errors(), what="rejected message counted")
    row = fleet.store.device(device.id)
    assert row is not None and row["online"] and row["telemetry"]["cpu_pct"] == 71.0
    assert [(g["first_seq"], g["last_seq"]) for g in fleet.store.gaps(device.id)] == [(1, 2)]
    wait_for(lambda: fleet.stats.events_duplicate == 1, what="duplicate reported by the writer process")
    assert {"reason": "not_utf8", "family": "events", "count": 1} in fleet.stats.snapshot()["rejected"]
    command = fleet.commands.issue(device.id, "ping", {}, None)
    wait_for(lambda: fleet.store.command(command["id"])["status"] == "ok", what="command result")  # type: ignore[index]
    assert fleet.health()["ok"]


def test_killed_writer_process_loses_nothing(make_fleet: FleetFactory, make_device: MakeDevice) -> None:
    fleet = make_fleet(writer_process=True)
    assert isinstance(fleet.writer, ProcessWriter)
    device = make_device("cam-pw-0002").connect(announce=False)
    total = 400
    done = threading.Event()

    def stream() -> None:
        for _ in range(total):
            device.send(device.envelope(), wait=False)
            time.sleep(0.003)
        done.set()

    threading.Thread(target=stream, daemon=True).start()
    wait_for(lambda: fleet.stats.committed >= 50, what="first commits")
    old = fleet.writer.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    writer = fleet.writer
    wait_for(lambda: writer.pid != old and writer.alive, timeout=30, what="a new writer process")
    assert done.wait(30)
    wait_for(lambda: fleet.store.counts()["events"] == total, timeout=30, what=f"all {total} events")
    assert fleet.store.gaps(device.id, open_only=True) == []
