"""The pure update state machine: every transition, and random event sequences (hypothesis)."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.ota.machine import (
    Booted,
    Cancel,
    Commit,
    Emit,
    Evaluate,
    Event,
    Failed,
    Gate,
    Healthy,
    MarkReported,
    OtaState,
    Phase,
    PhaseDone,
    Progress,
    Rollback,
    Run,
    Target,
    Unhealthy,
    step,
)

V2 = Target("1.1.0", "releases/1.1.0/manifest.json")


def kinds(effects: Sequence[object]) -> list[str]:
    return [e.kind if isinstance(e, Emit) else type(e).__name__ for e in effects]


def test_happy_path_to_the_restart() -> None:
    state, effects = step(OtaState(), Evaluate(V2, "1.0.0", 100.0))
    assert state.phase == "downloading" and effects == [Run("downloading")]
    state, effects = step(state, Progress(0, 5000))
    assert kinds(effects) == ["ota.downloading"]
    assert isinstance(effects[0], Emit) and effects[0].data == {
        "from": "1.0.0",
        "to": "1.1.0",
        "bytes_done": 0,
        "bytes_total": 5000,
    }
    state, effects = step(state, Progress(2500, 5000))
    assert effects == [] and state.bytes_done == 2500
    state, effects = step(state, PhaseDone("downloading"))
    assert state.phase == "verifying" and kinds(effects) == ["ota.verifying", "Run"]
    state, effects = step(state, PhaseDone("verifying"))
    assert state.phase == "installing" and kinds(effects) == ["ota.installing", "Run"]
    state, effects = step(state, PhaseDone("installing", "b"))
    assert state.phase == "restarting" and state.slot == "b"
    assert kinds(effects) == ["ota.restarting", "Run"]


def test_nothing_to_do_when_running_the_desired_version() -> None:
    state, effects = step(OtaState(), Evaluate(Target("1.0.0", "t"), "1.0.0", 0.0))
    assert state == OtaState() and effects == []
    assert step(OtaState(), Evaluate(None, "1.0.0", 0.0)) == (OtaState(), [])


def test_downgrade_refused_unless_allowed() -> None:
    old = Target("0.9.0", "releases/0.9.0/manifest.json")
    state, effects = step(OtaState(), Evaluate(old, "1.0.0", 0.0))
    assert kinds(effects) == ["ota.failed"] and state.blocked is not None
    assert "downgrade" in str(state.blocked["reason"]) and state.phase == "idle"
    allowed = Target("0.9.0", "releases/0.9.0/manifest.json", allow_downgrade=True)
    state, effects = step(OtaState(), Evaluate(allowed, "1.0.0", 0.0))
    assert state.phase == "downloading"


def test_closed_gate_waits_once_and_force_overrides() -> None:
    closed = Gate(False, "waiting: update lock held by kiosk-session")
    state, effects = step(OtaState(), Evaluate(V2, "1.0.0", 0.0, closed))
    assert state.phase == "idle" and state.waiting == closed.reason
    waiting = {"from": "1.0.0", "to": "1.1.0", "reason": closed.reason, "code": "deferred"}
    assert effects == [Emit("ota.waiting", waiting)]  # once: the fleet counts it as waiting
    again, effects = step(state, Evaluate(V2, "1.0.0", 1.0, closed))
    assert again == state and effects == []
    state, effects = step(state, Evaluate(V2, "1.0.0", 2.0, closed, forced=True))
    assert state.phase == "downloading"
    forced_by_fleet = Target("1.1.0", "t", force=True)
    state, _ = step(OtaState(), Evaluate(forced_by_fleet, "1.0.0", 2.0, closed))
    assert state.phase == "downloading"


def test_retryable_failure_backs_off_then_resumes() -> None:
    state, _ = step(OtaState(), Evaluate(V2, "1.0.0", 100.0))
    state, effects = step(state, Failed("network", "fleet unreachable", True, 100.0))
    assert state.phase == "idle" and effects == [] and state.retry_at is not None
    assert state.retry_at > 100.0 and "fleet unreachable" in (state.waiting or "")
    early, effects = step(state, Evaluate(V2, "1.0.0", state.retry_at - 1))
    assert early.phase == "idle" and effects == []
    later, effects = step(state, Evaluate(V2, "1.0.0", state.retry_at + 1))
    assert later.phase == "downloading" and later.retries == 1


def test_permanent_failure_blocks_that_version_only() -> None:
    state, _ = step(OtaState(), Evaluate(V2, "1.0.0", 0.0))
    state, effects = step(state, Failed("disk_full", "not enough free space", False, 1.0))
    assert kinds(effects) == ["ota.failed"]
    assert isinstance(effects[0], Emit) and effects[0].data["code"] == "disk_full"
    assert state.phase == "idle" and state.blocked == {
        "version": "1.1.0",
        "code": "disk_full",
        "reason": "not enough free space",
    }
    assert step(state, Evaluate(V2, "1.0.0", 2.0)) == (state, [])
    v3 = Target("1.2.0", "releases/1.2.0/manifest.json")
    assert step(state, Evaluate(v3, "1.0.0", 2.0))[0].phase == "downloading"
    assert step(state, Evaluate(V2, "1.0.0", 2.0, forced=True))[0].phase == "downloading"


def test_boot_into_a_pending_slot_runs_the_health_gate() -> None:
    pending = {"slot": "b", "from": "1.0.0", "to": "1.1.0", "target": V2.target}
    state, effects = step(
        OtaState(phase="restarting", target=V2, slot="b"), Booted("b", "1.1.0", pending, None)
    )
    assert state.phase == "trial" and effects == [Run("trial")]
    assert step(state, Healthy())[1] == [Commit()]
    assert step(state, Unhealthy("no broker"))[1] == [Rollback("no broker")]
    # a state file lost in the power cut: the boot state alone is enough
    state, effects = step(OtaState(), Booted("b", "1.1.0", pending, None))
    assert state.phase == "trial" and state.target is not None and state.target.version == "1.1.0"


def test_outcomes_are_reported_by_the_next_boot() -> None:
    last = {"outcome": "committed", "from": "1.0.0", "to": "1.1.0", "reported": False}
    state, effects = step(OtaState(phase="trial"), Booted("b", "1.1.0", None, last))
    assert kinds(effects) == ["ota.healthy", "ota.committed", "MarkReported"] and state.phase == "idle"
    rolled = {
        "outcome": "rolled_back",
        "from": "1.0.0",
        "to": "1.1.0",
        "reason": "crashed",
        "reported": False,
    }
    state, effects = step(OtaState(phase="restarting"), Booted("a", "1.0.0", None, rolled))
    assert kinds(effects) == ["ota.rolled_back", "MarkReported"]
    assert isinstance(effects[0], Emit) and effects[0].data["reason"] == "crashed"
    assert state.blocked is not None and state.blocked["version"] == "1.1.0"
    # reported already: nothing emitted twice
    assert step(OtaState(), Booted("a", "1.0.0", None, {**rolled, "reported": True}))[1] == []


def test_boot_resumes_interrupted_work() -> None:
    phases: tuple[Phase, ...] = ("downloading", "verifying", "installing", "restarting")
    for phase in phases:
        state = OtaState(phase=phase, target=V2, from_version="1.0.0")
        assert step(state, Booted("a", "1.0.0", None, None)) == (state, [Run(phase)])


def test_a_new_desired_release_supersedes_work_in_progress() -> None:
    state, _ = step(OtaState(), Evaluate(V2, "1.0.0", 0.0))
    v3 = Target("1.2.0", "releases/1.2.0/manifest.json")
    state, effects = step(state, Evaluate(v3, "1.0.0", 1.0))
    assert effects == [Cancel(), Run("downloading")] and state.target == v3
    state, effects = step(state, Evaluate(None, "1.0.0", 2.0))
    assert effects == [Cancel()] and state.phase == "idle" and state.target is None
    # a completion of the cancelled work is ignored
    assert step(state, PhaseDone("downloading")) == (state, [])


def test_state_round_trips_through_json_form() -> None:
    state = OtaState(
        phase="installing", target=V2, from_version="1.0.0", bytes_total=9, blocked={"version": "x"}
    )
    assert OtaState.from_dict(state.to_dict()) == state
    assert OtaState.from_dict({}) == OtaState()


targets = st.sampled_from([None, V2, Target("1.2.0", "t2"), Target("0.1.0", "t0"), Target("1.0.0", "t1")])
events: st.SearchStrategy[Event] = st.one_of(
    st.builds(
        Evaluate, targets, st.just("1.0.0"), st.floats(0, 1e6), st.builds(Gate, st.booleans()), st.booleans()
    ),
    st.builds(Progress, st.integers(0, 10**6), st.integers(0, 10**6)),
    st.builds(
        PhaseDone, st.sampled_from(["downloading", "verifying", "installing"]), st.sampled_from([None, "b"])
    ),
    st.builds(
        Failed,
        st.sampled_from(["network", "integrity"]),
        st.text(max_size=10),
        st.booleans(),
        st.floats(0, 1e6),
    ),
    st.builds(
        Booted,
        st.sampled_from([None, "a", "b"]),
        st.just("1.0.0"),
        st.sampled_from([None, {"slot": "b", "from": "1.0.0", "to": "1.1.0"}]),
        st.sampled_from([None, {"outcome": "committed", "reported": False}, {"outcome": "rolled_back"}]),
    ),
    st.just(Healthy()),
    st.builds(Unhealthy, st.text(max_size=5)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(events, max_size=25))
def test_random_event_sequences_keep_the_machine_consistent(seq: list[Event]) -> None:
    state = OtaState()
    for event in seq:
        state, effects = step(state, event)
        assert state.phase in ("idle", "downloading", "verifying", "installing", "restarting", "trial")
        if state.phase in ("downloading", "verifying", "installing", "restarting"):
            assert state.target is not None  # work always knows what it installs
        for effect in effects:
            if isinstance(effect, Emit):
                assert effect.kind.startswith("ota.") and "from" in effect.data and "to" in effect.data
            assert not isinstance(effect, MarkReported) or state.phase == "idle"
        assert OtaState.from_dict(state.to_dict()) == state
