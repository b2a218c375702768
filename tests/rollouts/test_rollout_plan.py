"""The pure rollout core: parsing, wave planning, outcomes and halt/soak decisions."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.rollouts.plan import (
    DeviceFact,
    Outcome,
    Policy,
    RolloutError,
    Selector,
    count_wave,
    decide,
    failure_reasons,
    outcome,
    parse_duration,
    parse_percent,
    parse_waves,
    plan_waves,
)


def test_parsers() -> None:
    assert parse_duration("10m") == 600.0
    assert parse_duration("250ms") == 0.25
    assert parse_duration("7") == 7.0
    assert parse_percent("5%") == 0.05
    assert parse_waves("1%,10%,50%,100%") == (0.01, 0.1, 0.5, 1.0)
    for bad in ("10%,5%,100%", "10%,50%", "0%,100%", "x%", "10"):
        with pytest.raises(RolloutError):
            parse_waves(bad)
    with pytest.raises(RolloutError):
        parse_duration("ten minutes")


@given(st.text(max_size=30))
def test_parsers_reject_or_accept_cleanly(text: str) -> None:
    for parse in (parse_duration, parse_percent, parse_waves, Selector.parse):
        with contextlib.suppress(RolloutError):
            parse(text)


def test_selector() -> None:
    sel = Selector.parse("role=camera,site=hn-btl*")
    assert sel.matches({"role": "camera", "site": "hn-btl-04"})
    assert not sel.matches({"role": "kiosk", "site": "hn-btl-04"})
    assert not sel.matches({"role": "camera"})
    assert Selector.parse("").matches({})
    with pytest.raises(RolloutError):
        Selector.parse("role")


@given(
    st.integers(min_value=0, max_value=3000),
    st.sampled_from(["100%", "1%,10%,50%,100%", "50%,100%", "0.1%,2%,100%"]),
)
def test_waves_cover_every_device_once(n: int, spec: str) -> None:
    devices = [f"d{i:05d}" for i in range(n)]
    waves = plan_waves("r1", devices, parse_waves(spec))
    flat = [d for wave in waves for d in wave]
    assert sorted(flat) == devices
    assert all(wave for wave in waves)
    assert waves == plan_waves("r1", list(reversed(devices)), parse_waves(spec))


def test_wave_sizes() -> None:
    waves = plan_waves("r", [f"d{i}" for i in range(500)], (0.01, 0.1, 0.5, 1.0))
    assert [len(w) for w in waves] == [5, 45, 200, 250]


def test_outcomes() -> None:
    on = DeviceFact(online=True)
    assert outcome(on, 0.0, 10.0, 60.0) == "pending"
    assert outcome(on, 0.0, 61.0, 60.0) == "failed"
    assert outcome(DeviceFact(online=False), 0.0, 999.0, 60.0) == "offline"
    back = DeviceFact(online=True, online_since=900.0)
    assert outcome(back, 0.0, 950.0, 60.0) == "pending"
    dl = DeviceFact(online=True, ota_kind="ota.downloading")
    assert outcome(dl, 0.0, 5.0, 60.0) == "downloading"
    assert outcome(DeviceFact(False, "ota.committed"), 0.0, 1.0, 60.0) == "committed"
    assert outcome(DeviceFact(True, "ota.rolled_back"), 0.0, 1.0, 60.0) == "rolled_back"
    restarting = DeviceFact(online=True, ota_kind="ota.restarting")
    assert outcome(restarting, 0.0, 5.0, 60.0) == "downloading"  # busy, as the agent names the step


def test_waiting_for_a_lock_or_window_is_no_failure_and_does_not_hold_the_wave() -> None:
    waiting = DeviceFact(online=True, ota_kind="ota.waiting", reason="waiting for an install window")
    assert outcome(waiting, 0.0, 10_000.0, 60.0) == "waiting"  # it reported: no deadline
    wave = count_wave(["committed", "waiting", "offline"])
    assert wave.settled and wave.executed == 1 and wave.failed == 0


def _simulate(fail_rate: float, seed: int) -> tuple[str, int, set[str], list[list[str]]]:
    """Run 500 devices through the core; returns the end state, waves started, devices targeted."""
    policy = Policy(min_executed=5, max_failure=0.05, soak_s=1.0, deadline_s=30.0)
    devices = [f"cam-{i:04d}" for i in range(500)]
    rng = random.Random(seed)
    fails = {d for d in devices if rng.random() < fail_rate}
    planned = plan_waves("r", devices, policy.waves)
    targeted: set[str] = set()
    started = 0
    settled_at: float | None = None
    for now in range(0, 10_000):
        counts = [
            count_wave(
                [
                    outcome(DeviceFact(True, "ota.failed" if d in fails else "ota.committed"), 0, now, 30)
                    for d in wave
                ]
            )
            for wave in planned[:started]
        ]
        if counts and counts[-1].settled and settled_at is None:
            settled_at = float(now)
        decision = decide(policy, counts, len(planned), settled_at, float(now))
        if decision.action == "start_wave":
            targeted.update(planned[started])
            started += 1
            settled_at = None
        elif decision.action in ("halt", "complete"):
            return decision.action, started, targeted, planned
    raise AssertionError("rollout never ended")


def test_five_percent_failing_halts_and_targets_only_started_waves() -> None:
    halts = 0
    for seed in range(20):
        action, started, targeted, planned = _simulate(0.05, seed)
        outside = {d for wave in planned[started:] for d in wave}
        assert not targeted & outside
        assert targeted == {d for wave in planned[:started] for d in wave}
        if action == "halt":
            halts += 1
    assert halts >= 15


def test_no_failures_completes() -> None:
    action, started, targeted, planned = _simulate(0.0, 1)
    assert action == "complete"
    assert started == len(planned) == 4
    assert len(targeted) == 500


def test_soak_delays_next_wave() -> None:
    done = count_wave(["committed"] * 5)
    policy = Policy(soak_s=60.0)
    assert decide(policy, [done], 4, 100.0, 120.0).action == "wait"
    assert decide(policy, [done], 4, 100.0, 161.0).wave == 1
    busy = count_wave(["committed", "pending"])
    assert decide(policy, [busy], 4, None, 500.0).action == "wait"


def test_halt_reason_and_grouping() -> None:
    outcomes: list[Outcome] = ["committed", "committed", "committed", "committed", "rolled_back"]
    bad = count_wave(outcomes)
    decision = decide(Policy(min_executed=5, max_failure=0.05), [bad], 4, 0.0, 0.0)
    assert decision.action == "halt"
    assert "20.0%" in decision.reason
    assert failure_reasons(["health", None, "health"]) == {
        "health": 2,
        "no report within deadline": 1,
    }
