"""Pure parts of a simulator run over several processes: roles, the deal, merged counters."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from hil.sim.config import SimConfig
from hil.sim.procs import deal, worker_config
from hil.sim.stats import SimStats, merge_snapshots, summarize
from hil.sim.swarm import device_ids

URL = "mqtt://127.0.0.1:1"


def test_a_camera_share_spreads_cameras_evenly_with_their_own_numbers() -> None:
    ids = device_ids(SimConfig(broker=URL, devices=20, cameras=17))
    roles = Counter(role for _, role in ids)
    assert roles == {"camera": 17, "kiosk": 3}
    assert [i for i, role in ids if role == "kiosk"] == ["kiosk-sim-0001", "kiosk-sim-0002", "kiosk-sim-0003"]
    assert len({i for i, _ in ids}) == 20
    city = device_ids(SimConfig(broker=URL, devices=20_000, cameras=17_000))
    assert Counter(role for _, role in city) == {"camera": 17_000, "kiosk": 3_000}
    assert city[-1][0] in ("cam-sim-17000", "kiosk-sim-3000")


def test_more_cameras_than_devices_is_refused() -> None:
    with pytest.raises(ValidationError, match="cannot exceed"):
        SimConfig(broker=URL, devices=10, cameras=11)


def test_processes_one_per_5000_devices_unless_told() -> None:
    assert SimConfig(broker=URL, devices=30).worker_procs == 1
    assert SimConfig(broker=URL, devices=5000).worker_procs == 1
    assert SimConfig(broker=URL, devices=20_000).worker_procs == 4
    assert SimConfig(broker=URL, devices=200, procs=2).worker_procs == 2
    assert SimConfig(broker=URL, devices=3, procs=8).worker_procs == 3


def test_the_deal_gives_every_device_to_exactly_one_worker_with_its_share_of_the_ramp() -> None:
    cfg = SimConfig(broker=URL, devices=1001, cameras=850, ramp_rate=1000, max_connecting=100)
    shares = deal(cfg, 4)
    assert sorted(i for share in shares for i, _ in share) == sorted(i for i, _ in device_ids(cfg))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert all({role for _, role in share} == {"kiosk", "camera"} for share in shares)
    sub = worker_config(cfg, 4)
    assert (sub.ramp_rate, sub.max_connecting, sub.procs, sub.devices) == (250, 25, 1, 1001)


def _worker(devices: int, started: float, ramp: float | None, events: int, unacked: int) -> SimStats:
    stats = SimStats(devices=devices, started=started)
    for n in range(devices):
        stats.on_connected(f"d{n}")
    stats.ramp_s = ramp
    stats.sent.update({"events": events, "status": devices})
    stats.published.update({"events": events + unacked, "status": devices})
    stats.events_unacked = unacked
    return stats


def test_merged_counters_add_up_and_the_ramp_ends_with_the_slowest_worker() -> None:
    a = _worker(3, 100.0, 2.0, 10, 1).snapshot()
    b = _worker(2, 100.5, 4.0, 5, 0).snapshot()
    merged = summarize(merge_snapshots([a, b], started=99.0), now=110.0)
    assert merged["devices"] == 5 and merged["ever_connected"] == 5 and merged["connected_peak"] == 5
    assert merged["ramp_s"] == 5.5  # worker b was all connected at 104.5, the run began at 99
    assert (merged["events_acked"], merged["events_unacked"], merged["events_made"]) == (15, 1, 16)
    assert merged["publishes_not_acked"] == 1 and merged["messages_sent"] == 20
    assert merged["duration_s"] == 11.0
    unfinished = merge_snapshots([a, _worker(2, 100.0, None, 0, 0).snapshot()], started=99.0)
    assert summarize(unfinished)["ramp_s"] is None
