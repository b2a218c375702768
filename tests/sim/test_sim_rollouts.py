"""Staged rollouts end to end: 500 simulated devices running the update exchange, a real
``cityedge fleet serve`` process (SQLite, signed desired states) and a real mosquitto."""

from __future__ import annotations

import signal
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from fleet_process import FleetProcess
from sim_helpers import Observer, SimThread, wait_until

from hil.sim.ota import plan_update
from protocol.topics import Topics

DEVICES = 500
RELEASE = "2.0.0"
SEED = 12
SimF = Callable[..., SimThread]
ObsF = Callable[..., Observer]


def _setup(
    fleet: FleetProcess, sim_factory: SimF, observer_factory: ObsF, **ota: Any
) -> tuple[SimThread, Observer]:
    fleet.start()
    desired = observer_factory("city/v1/devices/+/shadow/desired")
    sim = sim_factory(
        devices=DEVICES,
        version="1.0.0",
        seed=SEED,
        telemetry_interval_s=300,
        ota_seconds="0.3..1",
        **ota,
    )
    sim.wait_connected(timeout=90)
    wait_until(
        lambda: fleet.call("GET", "/api/stats")["devices_online"] == DEVICES, 90, "every device online"
    )
    return sim, desired


def _start(fleet: FleetProcess, **options: str | int) -> str:
    body: dict[str, Any] = {"release": RELEASE, "deadline": "60s", **options}
    started = fleet.call("POST", "/api/rollouts", json=body)
    assert started["planned"] == DEVICES
    return str(started["id"])


def _status(fleet: FleetProcess, rid: str) -> dict[str, Any]:
    result: dict[str, Any] = fleet.call("GET", f"/api/rollouts/{rid}")
    return result


def _wait_state(fleet: FleetProcess, rid: str, states: set[str], timeout: float) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen.update(_status(fleet, rid))
        return seen["state"] in states

    wait_until(reached, timeout, f"rollout {rid} {' or '.join(sorted(states))}")
    return seen


def _released_to(observer: Observer) -> dict[str, set[int]]:
    """device -> versions of the desired states seen carrying the release."""
    out: dict[str, set[int]] = defaultdict(set)
    for message in observer.snapshot("/shadow/desired"):
        body = message.json()
        if (body.get("release") or {}).get("version") == RELEASE:
            assert body.get("sig", {}).get("alg") == "ed25519", "desired states are signed"
            out[Topics().parse(message.topic).device].add(body["version"])
    return out


def _wait_on_release(sim: SimThread, timeout: float = 60) -> None:
    try:
        wait_until(lambda: all(d.version == RELEASE for d in sim.devices), timeout, "every device on it")
    except AssertionError:
        behind = [
            (d.id, d.ota.phase, d.ota.started, list(d.logs)[-3:]) for d in sim.devices if d.version != RELEASE
        ]
        raise AssertionError(f"{len(behind)} devices not on {RELEASE}, e.g. {behind[:3]}") from None


def test_five_percent_failing_halts_in_the_first_wave_past_min_executed(
    fleet_process: FleetProcess, sim_factory: SimF, observer_factory: ObsF
) -> None:
    fleet = fleet_process
    sim, desired = _setup(fleet, sim_factory, observer_factory, ota_fail=0.05)
    failing = {d.id for d in sim.devices if plan_update(sim.cfg.ota, SEED, d.id, RELEASE).fate == "fail"}
    assert 15 <= len(failing) <= 40  # the seed gives about 5 %
    # wave 1 (10 devices) cannot reach --min-executed 50; wave 2 (400 in all) does and must halt
    rid = _start(fleet, waves="2%,80%,100%", max_failure="1%", min_executed=50, soak="1s")
    halted = _wait_state(fleet, rid, {"halted", "complete"}, 100)
    assert halted["state"] == "halted" and "failure rate" in halted["reason"], halted
    assert len(halted["waves"]) == 2, halted
    plan = fleet.targets(rid)
    started = {d for d, (wave, _at) in plan.items() if wave < 2}
    later = {d for d, (wave, _at) in plan.items() if wave == 2}
    assert len(started) == 400 and len(later) == 100
    assert all(at is None for d, (_w, at) in plan.items() if d in later)
    # nobody outside the started waves got the release: not on the wire, not stored, not running
    assert set(_released_to(desired)) <= started
    stored = fleet.desired()
    assert not [d for d in later if ((stored.get(d) or {}).get("release") or {}).get("version")]
    assert not [d.id for d in sim.devices if d.id in later and (d.ota.started or d.version == RELEASE)]
    counts: dict[str, int] = defaultdict(int)
    for wave in halted["waves"]:
        for kind, n in wave["counts"].items():
            counts[kind] += n
    assert counts["failed"] >= 1 and counts["failed"] / (counts["failed"] + counts["committed"]) > 0.01


def test_no_failures_complete_every_wave_including_devices_that_drop_off_mid_update(
    fleet_process: FleetProcess, sim_factory: SimF, observer_factory: ObsF
) -> None:
    fleet = fleet_process
    sim, desired = _setup(fleet, sim_factory, observer_factory, ota_offline=0.02, ota_offline_seconds="1..3")
    rid = _start(fleet, waves="2%,20%,100%", max_failure="1%", min_executed=5, soak="1s")
    done = _wait_state(fleet, rid, {"halted", "complete"}, 100)
    assert done["state"] == "complete", done
    assert [w["targeted"] for w in done["waves"]] == [10, 90, 400]
    _wait_on_release(sim)

    def committed() -> int:
        return sum(w["counts"].get("committed", 0) for w in _status(fleet, rid)["waves"])

    wait_until(lambda: committed() == DEVICES, 30, "every device counted committed in its wave")
    assert sim.stats.ota_offline >= 1  # some dropped off half way and came back to finish
    assert sim.stats.ota["ota.failed"] == 0 and sim.stats.ota["ota.rolled_back"] == 0
    assert {d: len(v) for d, v in _released_to(desired).items()} == {d.id: 1 for d in sim.devices}


def test_fleet_killed_mid_rollout_carries_on_without_retargeting_or_skipping(
    fleet_process: FleetProcess, sim_factory: SimF, observer_factory: ObsF
) -> None:
    fleet = fleet_process
    sim, desired = _setup(fleet, sim_factory, observer_factory)
    rid = _start(fleet, waves="10%,50%,100%", max_failure="1%", min_executed=5, soak="2s")
    wait_until(lambda: len(_status(fleet, rid)["waves"]) >= 2, 60, "the second wave started")
    assert fleet.kill(signal.SIGKILL) == -signal.SIGKILL
    before = {d: at for d, (_w, at) in fleet.targets(rid).items() if at is not None}
    assert 50 <= len(before) < DEVICES
    fleet.start()
    done = _wait_state(fleet, rid, {"halted", "complete"}, 100)
    assert done["state"] == "complete", done
    after = fleet.targets(rid)
    assert all(at is not None for _w, at in after.values())  # nobody skipped
    assert {d: after[d][1] for d in before} == before  # nobody targeted again
    _wait_on_release(sim)
    assert all(d.ota.started == 1 for d in sim.devices)  # each device updated once
    # one desired version carrying the release per device: the restart did not bump it again
    assert {d: len(v) for d, v in _released_to(desired).items()} == {d.id: 1 for d in sim.devices}
