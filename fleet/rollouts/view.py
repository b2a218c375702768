"""What the API, the CLI and the dashboard show of one rollout (one function, so all three agree):
per wave the counts of each outcome and the failure reasons grouped, and the failed devices."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from fleet.rollouts import store
from fleet.rollouts.backend import RolloutBackend
from fleet.rollouts.driver import count_waves, device_outcomes, failure_reason
from fleet.rollouts.plan import FAILED, DeviceFact, failure_reasons

MAX_FAILED_SHOWN = 200
COLUMNS = ("pending", "downloading", "committed", "rolled_back", "failed", "waiting", "offline")
"""The outcomes a page shows per wave, in this order (targeted comes first)."""


def grouped(reasons: Iterable[str]) -> dict[str, int]:
    """Reasons -> how many, most frequent first."""
    out = Counter(reasons)
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def rollout_status(engine: Engine, backend: RolloutBackend, rollout_id: str, now: datetime) -> dict[str, Any]:
    """A rollout as a JSON-able dict; raises ``store.RolloutNotFound``."""
    rollout = store.load(engine, rollout_id)
    planned_rows = store.targets(engine, rollout_id)

    def facts(names: Sequence[str]) -> Mapping[str, DeviceFact]:
        return backend.facts(rollout.release, names)

    outcomes = device_outcomes(engine, rollout, facts, now)
    counts = count_waves(outcomes)
    failed = [o for o in outcomes if o.outcome in FAILED]
    planned_waves = max((w for _, w, _, _ in planned_rows), default=-1) + 1
    policy = rollout.policy
    return {
        "id": rollout.id,
        "release": rollout.release,
        "selector": rollout.selector,
        "state": rollout.state,
        "reason": rollout.reason,
        "backend": backend.name,
        "created_at": rollout.created_at,
        "planned": len(planned_rows),
        "planned_waves": planned_waves,
        "wave_sizes": [sum(1 for _, w, _, _ in planned_rows if w == i) for i in range(planned_waves)],
        "policy": {
            "waves": list(policy.waves),
            "max_failure": policy.max_failure,
            "min_executed": policy.min_executed,
            "soak_s": policy.soak_s,
            "deadline_s": policy.deadline_s,
        },
        "waves": [
            {
                "wave": i,
                "targeted": w.targeted,
                "counts": w.counts,
                "reasons": failure_reasons([failure_reason(o) for o in failed if o.wave == i]),
                "waiting": grouped(
                    o.reason or "no reason given" for o in outcomes if o.wave == i and o.outcome == "waiting"
                ),
            }
            for i, w in enumerate(counts)
        ],
        "failed_devices": [
            {"device": o.device, "wave": o.wave, "outcome": o.outcome, "reason": failure_reason(o)}
            for o in failed[:MAX_FAILED_SHOWN]
        ],
    }
