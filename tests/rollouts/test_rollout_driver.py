"""The rollout driver tick against a real SQLite fleet database, with devices answering at once."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import Engine

from fleet.db import create_schema, make_engine
from fleet.rollouts import store
from fleet.rollouts.driver import abort, tick
from fleet.rollouts.plan import DeviceFact, Policy, plan_waves

T0 = datetime(2026, 12, 5, 6, 0, tzinfo=timezone.utc)
POLICY = Policy(max_failure=0.05, min_executed=5, soak_s=5.0, deadline_s=30.0)


class Fleet:
    """Devices that report committed (or failed) as soon as their release is set."""

    def __init__(self, n: int, failing: set[str]) -> None:
        self.devices = [f"cam-{i:04d}" for i in range(n)]
        self.failing = failing
        self.release: dict[str, str] = {}
        self.sets: list[str] = []

    def set_release(self, device: str, version: str) -> None:
        self.release[device] = version
        self.sets.append(device)

    def restore(self, device: str, previous: str | None) -> None:
        if previous:
            self.release[device] = previous
        else:
            self.release.pop(device, None)

    def facts(self, devices: Sequence[str]) -> Mapping[str, DeviceFact]:
        out = {}
        for d in devices:
            kind = None
            if self.release.get(d) == "1.1.0":
                kind = "ota.failed" if d in self.failing else "ota.committed"
            out[d] = DeviceFact(online=True, ota_kind=kind)
        return out


def _engine(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    create_schema(engine)
    return engine


def _run(engine: Engine, fleet: Fleet, start: datetime, limit: int = 200) -> tuple[str, datetime]:
    now = start
    for _ in range(limit):
        result = tick(engine, "r1", fleet.set_release, fleet.facts, now)
        if result.state != "running":
            return result.state, now
        now += timedelta(seconds=1)
    return "running", now


def _start(engine: Engine, fleet: Fleet) -> list[list[str]]:
    previous: dict[str, str | None] = dict.fromkeys(fleet.devices, "1.0.0")
    return store.create_rollout(engine, "r1", "1.1.0", "role=camera", POLICY, previous, T0)


def test_five_percent_failing_halts_without_touching_later_waves(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    devices = [f"cam-{i:04d}" for i in range(500)]
    waves = plan_waves("r1", devices, POLICY.waves)
    rng = random.Random(7)
    failing = {d for d in devices if rng.random() < 0.05} | {waves[0][0]}
    fleet = Fleet(500, failing)
    _start(engine, fleet)
    state, _ = _run(engine, fleet, T0)
    assert state == "halted"
    assert "above max 5.0%" in store.load(engine, "r1").reason
    # halted in the first wave (5 devices = min-executed), nothing outside it got the release
    assert set(fleet.release) == set(waves[0])


def test_no_failures_completes_every_device_once(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    fleet = Fleet(500, set())
    _start(engine, fleet)
    state, _ = _run(engine, fleet, T0)
    assert state == "complete"
    assert sorted(fleet.sets) == fleet.devices


def test_restarted_worker_carries_on_without_retargeting(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    fleet = Fleet(200, set())
    _start(engine, fleet)
    now = T0
    for _ in range(8):  # part way through
        tick(engine, "r1", fleet.set_release, fleet.facts, now)
        now += timedelta(seconds=1)
    assert 0 < len(fleet.sets) < 200
    engine.dispose()
    second = _engine(tmp_path)
    state, _ = _run(second, fleet, now)
    assert state == "complete"
    assert sorted(fleet.sets) == fleet.devices  # each device set exactly once


def test_pause_and_abort_restore_previous_release(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    fleet = Fleet(100, set())
    _start(engine, fleet)
    tick(engine, "r1", fleet.set_release, fleet.facts, T0)
    store.set_state(engine, "r1", "paused")
    assert _run(engine, fleet, T0 + timedelta(seconds=60), limit=3)[0] == "paused"
    assert len(fleet.sets) == 1
    assert abort(engine, "r1", fleet.restore) == 1
    assert set(fleet.release.values()) == {"1.0.0"}
    assert store.load(engine, "r1").state == "aborted"


def test_devices_count_targeted_only_once_the_broker_acknowledged_their_desired_state(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    fleet = Fleet(20, failing=set())
    policy = Policy(waves=(0.5, 1.0), min_executed=5, soak_s=0.0, deadline_s=30.0)
    store.create_rollout(engine, "r1", "1.1.0", "", policy, dict.fromkeys(fleet.devices, "1.0.0"), T0)
    asked: list[list[str]] = []

    def broker_down(devices: Sequence[str]) -> bool:
        asked.append(list(devices))
        return False

    tick(engine, "r1", fleet.set_release, fleet.facts, T0, broker_down)
    assert len(asked) == 1 and len(asked[0]) == 10 and store.started_waves(engine, "r1") == 0
    assert store.untargeted(engine, "r1", 0) == sorted(asked[0])
    # the broker is back: the same devices are sent again and only now count as targeted
    tick(engine, "r1", fleet.set_release, fleet.facts, T0 + timedelta(seconds=1))
    assert fleet.sets.count(asked[0][0]) == 2 and store.untargeted(engine, "r1", 0) == []
