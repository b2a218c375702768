"""Rollout state in a real SQLite fleet database: restart-safe targeting and overlap refusal."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine

from fleet.db import create_schema, make_engine
from fleet.rollouts.plan import Policy, RolloutError
from fleet.rollouts.store import (
    RolloutNotFound,
    RolloutOverlap,
    create_rollout,
    load,
    mark_targeted,
    set_state,
    started_waves,
    targets,
    untargeted,
)

NOW = datetime(2026, 12, 5, 6, 0, tzinfo=timezone.utc)


def _engine(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    create_schema(engine)
    return engine


def test_create_and_reopen_carries_on(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    previous: dict[str, str | None] = {f"cam-{i:03d}": "1.0.0" for i in range(100)}
    waves = create_rollout(engine, "r1", "1.1.0", "role=camera", Policy(), previous, NOW)
    assert [len(w) for w in waves] == [1, 9, 40, 50]
    first = untargeted(engine, "r1", 1)
    mark_targeted(engine, "r1", first[:4], NOW)
    engine.dispose()
    # a second worker on the same database sees exactly the rest of wave 1
    again = _engine(tmp_path)
    assert untargeted(again, "r1", 1) == first[4:]
    assert started_waves(again, "r1") == 2
    rollout = load(again, "r1")
    assert rollout.state == "running"
    assert rollout.policy == Policy()
    assert {d for d, *_ in targets(again, "r1")} == set(previous)


def test_overlapping_rollout_refused_until_aborted(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    create_rollout(engine, "r1", "1.1.0", "", Policy(), {"a": None, "b": None}, NOW)
    with pytest.raises(RolloutOverlap, match="rollout r1 is still active"):
        create_rollout(engine, "r2", "1.2.0", "", Policy(), {"b": None, "c": None}, NOW)
    create_rollout(engine, "r3", "1.2.0", "", Policy(), {"c": None}, NOW)
    set_state(engine, "r1", "aborted", "operator")
    create_rollout(engine, "r2", "1.2.0", "", Policy(), {"b": None}, NOW)
    with pytest.raises(RolloutNotFound):
        set_state(engine, "nope", "paused")
    with pytest.raises(RolloutError):
        create_rollout(engine, "r4", "1.2.0", "site=none", Policy(), {}, NOW)
