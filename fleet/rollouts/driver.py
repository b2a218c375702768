"""One step of a running rollout: read facts, decide (``plan``), act, store (``store``).

``tick`` is what a fleet worker calls periodically (and a test calls once). Its I/O comes in as
functions: ``set_release(device, version)`` sets the release in the device's signed desired state
(``DesiredService.set_release`` in the fleet), ``facts(devices)`` gives each device's
``DeviceFact`` (online state and latest ``ota.*`` report about the release). Devices are marked
targeted only after their desired state was set, so a worker killed in between re-sends at most
that one idempotent desired state and never skips a device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Engine

from fleet.rollouts import store
from fleet.rollouts.backend import RolloutBackend
from fleet.rollouts.plan import (
    FAILED,
    DeviceFact,
    Outcome,
    RolloutError,
    WaveCount,
    count_wave,
    decide,
    failure_reasons,
    outcome,
)

SetRelease = Callable[[str, str], None]
SetReleases = Callable[[Sequence[str], str], None]
"""``set_releases(devices, version)``: ``set_release`` for a batch at once (one transaction)."""
Restore = Callable[[str, "str | None"], None]
Facts = Callable[[Sequence[str]], Mapping[str, DeviceFact]]
Confirm = Callable[[Sequence[str]], bool]
"""``confirm(devices)``: the broker acknowledged the desired states just set for ``devices``."""
BATCH = 500
"""Devices targeted between two confirmations (and marked targeted in one transaction)."""


def _confirmed(devices: Sequence[str]) -> bool:
    return True


@dataclass(frozen=True)
class TickResult:
    state: str
    started_waves: int
    waves: list[WaveCount]
    reason: str = ""


def _ts(moment: datetime) -> float:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


@dataclass(frozen=True)
class DeviceOutcome:
    device: str
    wave: int
    outcome: Outcome
    reason: str | None


def device_outcomes(
    engine: Engine, rollout: store.Rollout, facts: Facts, now: datetime
) -> list[DeviceOutcome]:
    """The outcome of every device targeted so far, in wave then device order."""
    rows = [r for r in store.targets(engine, rollout.id) if r[3] is not None]
    known = facts([r[0] for r in rows])
    out: list[DeviceOutcome] = []
    for device, wave, _previous, targeted_at in rows:
        assert targeted_at is not None
        fact = known.get(device, DeviceFact(online=False))
        result = outcome(fact, _ts(targeted_at), _ts(now), rollout.policy.deadline_s)
        out.append(DeviceOutcome(device, wave, result, fact.reason))
    return out


def count_waves(outcomes: Sequence[DeviceOutcome]) -> list[WaveCount]:
    by_wave: dict[int, list[Outcome]] = {}
    for item in outcomes:
        by_wave.setdefault(item.wave, []).append(item.outcome)
    top = max(by_wave) + 1 if by_wave else 0
    return [count_wave(by_wave.get(i, [])) for i in range(top)]


def wave_counts(engine: Engine, rollout: store.Rollout, facts: Facts, now: datetime) -> list[WaveCount]:
    """Counts per started wave (devices targeted so far)."""
    return count_waves(device_outcomes(engine, rollout, facts, now))


def failure_reason(item: DeviceOutcome) -> str | None:
    """The words a failed device's outcome is grouped under (None: no report within deadline)."""
    if item.outcome == "rolled_back":
        return f"rolled back: {item.reason or 'no reason given'}"
    return item.reason


def halt_details(outcomes: Sequence[DeviceOutcome], shown: int = 10) -> str:
    """Which devices failed and why, for the halt reason: grouped reasons, then the first devices."""
    failed = [o for o in outcomes if o.outcome in FAILED]
    if not failed:
        return ""
    grouped = failure_reasons([failure_reason(o) for o in failed])
    reasons = "; ".join(f"{n} × {why}" for why, n in grouped.items())
    names = ", ".join(o.device for o in failed[:shown])
    more = f" and {len(failed) - shown} more" if len(failed) > shown else ""
    return f"{reasons} (devices: {names}{more})"


def tick(
    engine: Engine,
    rollout_id: str,
    set_release: SetRelease,
    facts: Facts,
    now: datetime,
    confirm: Confirm = _confirmed,
    set_releases: SetReleases | None = None,
) -> TickResult:
    rollout = store.load(engine, rollout_id)
    planned = max((w for _, w, _, _ in store.targets(engine, rollout_id)), default=-1) + 1
    started = store.started_waves(engine, rollout_id)
    # finish targeting a wave a killed worker left half done
    if rollout.state == "running" and started:
        _target(engine, rollout, started - 1, _batched(set_release, set_releases), now, confirm)
    outcomes = device_outcomes(engine, rollout, facts, now)
    counts = count_waves(outcomes)
    if rollout.state != "running":
        return TickResult(rollout.state, started, counts, rollout.reason)
    if counts and counts[-1].settled and rollout.wave_settled_at is None:
        store.set_wave_settled(engine, rollout_id, now)
        rollout = store.load(engine, rollout_id)
    settled = None if rollout.wave_settled_at is None else _ts(rollout.wave_settled_at)
    decision = decide(rollout.policy, counts, planned, settled, _ts(now))
    if decision.action == "halt":
        reason = f"{decision.reason}: {halt_details(outcomes)}"
        store.set_state(engine, rollout_id, "halted", reason)
        return TickResult("halted", started, counts, reason)
    if decision.action == "complete":
        store.set_state(engine, rollout_id, "complete")
        return TickResult("complete", started, counts)
    if decision.action == "start_wave" and decision.wave is not None:
        store.set_wave_settled(engine, rollout_id, None)
        _target(engine, rollout, decision.wave, _batched(set_release, set_releases), now, confirm)
        started = decision.wave + 1
        counts = wave_counts(engine, rollout, facts, now)
    return TickResult("running", started, counts, decision.reason)


def _batched(set_release: SetRelease, set_releases: SetReleases | None) -> SetReleases:
    if set_releases is not None:
        return set_releases

    def each(devices: Sequence[str], version: str) -> None:
        for device in devices:
            set_release(device, version)

    return each


def _target(
    engine: Engine,
    rollout: store.Rollout,
    wave: int,
    set_releases: SetReleases,
    now: datetime,
    confirm: Confirm,
) -> None:
    """Set the release for the wave's untargeted devices, a batch at a time; a batch is marked
    targeted only once the broker has acknowledged its desired states, so a worker killed (or a
    broker lost) in between sends them again at the next tick instead of skipping them."""
    todo = store.untargeted(engine, rollout.id, wave)
    for start in range(0, len(todo), BATCH):
        batch = todo[start : start + BATCH]
        set_releases(batch, rollout.release)
        if not confirm(batch):
            return
        store.mark_targeted(engine, rollout.id, batch, now)


def abort(
    engine: Engine,
    rollout_id: str,
    restore: Restore,
    reason: str = "aborted by operator",
) -> int:
    """Abort: every targeted device gets back what it had (``restore(device, previous)``: its
    previous release, or previous pin on balena). Returns how many.

    A running rollout is paused first (no wave starts meanwhile) and marked aborted only once every
    device was restored: when ``restore`` raises (a backend that cannot be reached), the rollout
    stays paused or halted, and abort can be asked again (restoring twice is harmless)."""
    if store.load(engine, rollout_id).state == "running":
        with contextlib.suppress(RolloutError):  # halted or paused meanwhile: fine as well
            store.move(engine, rollout_id, ("running",), "paused")
    count = 0
    for device, _wave, previous, targeted_at in store.targets(engine, rollout_id):
        if targeted_at is None:
            continue
        restore(device, previous)
        count += 1
    store.set_state(engine, rollout_id, "aborted", reason)
    return count


def tick_all(engine: Engine, backend: RolloutBackend, now: datetime) -> dict[str, TickResult]:
    """One tick of every running rollout through the fleet's backend (what the fleet's
    rollout thread calls each second; a test calls it once)."""
    results: dict[str, TickResult] = {}
    for rollout_id, release in store.running(engine):

        def facts(names: Sequence[str], release: str = release) -> Mapping[str, DeviceFact]:
            return backend.facts(release, names)

        results[rollout_id] = tick(
            engine, rollout_id, backend.set_release, facts, now, backend.confirm, backend.set_releases
        )
    return results
