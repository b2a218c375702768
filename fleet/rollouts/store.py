"""Rollout state in the fleet database (the I/O shell's storage half).

A rollout and every planned device (with its wave) are written in one transaction when it starts;
``targeted_at`` is set per device after its signed desired state carries the release. A restarted
or second fleet worker therefore reads which devices still need targeting instead of re-planning.
A rollout whose devices overlap a running or paused one is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select, update

from fleet.db import rollout_targets, rollouts
from fleet.rollouts.plan import Policy, RolloutError, plan_waves

ACTIVE = ("running", "paused")
STATES = ("running", "paused", "halted", "aborted", "complete")


class RolloutOverlap(RolloutError):
    """Another active rollout already covers some of the selected devices."""


class RolloutNotFound(RolloutError):
    pass


@dataclass(frozen=True)
class Rollout:
    id: str
    release: str
    selector: str
    policy: Policy
    state: str
    reason: str
    created_at: datetime
    wave_settled_at: datetime | None


def _policy(data: Mapping[str, Any]) -> Policy:
    return Policy(
        waves=tuple(float(w) for w in data["waves"]),
        max_failure=float(data["max_failure"]),
        min_executed=int(data["min_executed"]),
        soak_s=float(data["soak_s"]),
        deadline_s=float(data["deadline_s"]),
    )


def create_rollout(
    engine: Engine,
    rollout_id: str,
    release: str,
    selector: str,
    policy: Policy,
    previous: Mapping[str, str | None],
    now: datetime,
) -> list[list[str]]:
    """Plan and store a rollout over the devices of ``previous`` (device -> release it runs now).
    Returns the planned waves; raises ``RolloutOverlap`` naming the other rollout."""
    devices = sorted(previous)
    if not devices:
        raise RolloutError(f"the selector {selector!r} matches no device")
    waves = plan_waves(rollout_id, devices, policy.waves)
    with engine.begin() as conn:
        busy = conn.execute(
            select(rollout_targets.c.rollout, rollout_targets.c.device)
            .join(rollouts, rollouts.c.id == rollout_targets.c.rollout)
            .where(rollouts.c.state.in_(ACTIVE), rollout_targets.c.device.in_(devices))
            .limit(5)
        ).all()
        if busy:
            names = ", ".join(sorted({row.device for row in busy}))
            raise RolloutOverlap(
                f"rollout {busy[0].rollout} is still active on overlapping devices ({names}); "
                "abort or finish it first"
            )
        conn.execute(
            rollouts.insert().values(
                id=rollout_id,
                release=release,
                selector=selector,
                policy=dataclasses.asdict(policy),
                state="running",
                reason="",
                created_at=now,
            )
        )
        conn.execute(
            rollout_targets.insert(),
            [
                {"rollout": rollout_id, "device": d, "wave": i, "previous": previous[d]}
                for i, wave in enumerate(waves)
                for d in wave
            ],
        )
    return waves


def load(engine: Engine, rollout_id: str) -> Rollout:
    with engine.connect() as conn:
        row = conn.execute(select(rollouts).where(rollouts.c.id == rollout_id)).first()
    if row is None:
        raise RolloutNotFound(f"no rollout {rollout_id!r}")
    return Rollout(
        id=row.id,
        release=row.release,
        selector=row.selector,
        policy=_policy(row.policy),
        state=row.state,
        reason=row.reason,
        created_at=row.created_at,
        wave_settled_at=row.wave_settled_at,
    )


def set_state(engine: Engine, rollout_id: str, state: str, reason: str = "") -> None:
    if state not in STATES:
        raise RolloutError(f"unknown rollout state {state!r}")
    with engine.begin() as conn:
        done = conn.execute(
            update(rollouts).where(rollouts.c.id == rollout_id).values(state=state, reason=reason)
        )
    if done.rowcount == 0:
        raise RolloutNotFound(f"no rollout {rollout_id!r}")


def move(engine: Engine, rollout_id: str, allowed: Sequence[str], state: str) -> str:
    """Set ``state`` only while the rollout is in one of ``allowed`` (in one statement, so a
    worker halting it meanwhile is not overwritten). Returns the state it has afterwards; raises
    ``RolloutError`` naming the state it was in when that was not allowed."""
    with engine.begin() as conn:
        done = conn.execute(
            update(rollouts)
            .where(rollouts.c.id == rollout_id, rollouts.c.state.in_(list(allowed)))
            .values(state=state, reason="")
        )
        if done.rowcount == 1:
            return state
        current = conn.execute(select(rollouts.c.state).where(rollouts.c.id == rollout_id)).scalar()
    if current is None:
        raise RolloutNotFound(f"no rollout {rollout_id!r}")
    raise RolloutError(f"rollout {rollout_id} is {current}; cannot set it {state}")


def set_wave_settled(engine: Engine, rollout_id: str, moment: datetime | None) -> None:
    with engine.begin() as conn:
        conn.execute(update(rollouts).where(rollouts.c.id == rollout_id).values(wave_settled_at=moment))


def targets(engine: Engine, rollout_id: str) -> list[tuple[str, int, str | None, datetime | None]]:
    """``(device, wave, previous release, targeted_at)`` of every planned device."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                rollout_targets.c.device,
                rollout_targets.c.wave,
                rollout_targets.c.previous,
                rollout_targets.c.targeted_at,
            )
            .where(rollout_targets.c.rollout == rollout_id)
            .order_by(rollout_targets.c.wave, rollout_targets.c.device)
        ).all()
    return [(r.device, r.wave, r.previous, r.targeted_at) for r in rows]


def untargeted(engine: Engine, rollout_id: str, wave: int) -> list[str]:
    """Devices of ``wave`` whose desired state does not carry the release yet."""
    return [d for d, w, _, at in targets(engine, rollout_id) if w == wave and at is None]


def mark_targeted(engine: Engine, rollout_id: str, devices: Sequence[str], now: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(rollout_targets)
            .where(
                rollout_targets.c.rollout == rollout_id,
                rollout_targets.c.device.in_(list(devices)),
                rollout_targets.c.targeted_at.is_(None),
            )
            .values(targeted_at=now)
        )


def started_waves(engine: Engine, rollout_id: str) -> int:
    """How many waves have at least one targeted device."""
    waves = {w for _, w, _, at in targets(engine, rollout_id) if at is not None}
    return max(waves) + 1 if waves else 0


def running(engine: Engine) -> list[tuple[str, str]]:
    """``(id, release)`` of every running rollout, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(rollouts.c.id, rollouts.c.release)
            .where(rollouts.c.state == "running")
            .order_by(rollouts.c.created_at, rollouts.c.id)
        ).all()
    return [(row.id, row.release) for row in rows]


def all_ids(engine: Engine) -> list[str]:
    """Every rollout id, newest first."""
    with engine.connect() as conn:
        rows = conn.execute(select(rollouts.c.id).order_by(rollouts.c.created_at.desc(), rollouts.c.id)).all()
    return [row.id for row in rows]
