"""REST routes of staged rollouts (``/api/rollouts``); mutating ones are audited by ``require``."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from fleet.auth.deps import require
from fleet.auth.permissions import DEVICES_READ, RELEASES_MANAGE
from fleet.rollouts import store
from fleet.rollouts.driver import abort, wave_counts
from fleet.rollouts.facts import device_facts, select_devices
from fleet.rollouts.plan import (
    Policy,
    RolloutError,
    Selector,
    parse_duration,
    parse_percent,
    parse_waves,
)
from protocol.timefmt import utc_now


class RolloutIn(BaseModel):
    release: str = Field(min_length=1, max_length=128)
    select: str = Field(default="", max_length=500)
    waves: str = Field(default="1%,10%,50%,100%", max_length=200)
    max_failure: str = Field(default="5%", max_length=20)
    min_executed: int = Field(default=5, ge=1)
    soak: str = Field(default="10m", max_length=20)
    deadline: str = Field(default="30m", max_length=20)


class WaveOut(BaseModel):
    wave: int
    targeted: int
    counts: dict[str, int]


class RolloutOut(BaseModel):
    id: str
    release: str
    selector: str
    state: str
    reason: str
    planned: int
    waves: list[WaveOut]


def status_of(request: Request, rollout_id: str) -> dict[str, Any]:
    engine = request.app.state.fleet.store.writer
    try:
        rollout = store.load(engine, rollout_id)
    except store.RolloutNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    planned = len(store.targets(engine, rollout_id))

    def facts(names: Any) -> Any:
        return device_facts(engine, rollout.release, names)

    counts = wave_counts(engine, rollout, facts, utc_now())
    return {
        "id": rollout.id,
        "release": rollout.release,
        "selector": rollout.selector,
        "state": rollout.state,
        "reason": rollout.reason,
        "planned": planned,
        "waves": [{"wave": i, "targeted": w.targeted, "counts": w.counts} for i, w in enumerate(counts)],
    }


def rollout_router() -> APIRouter:
    router = APIRouter(prefix="/api/rollouts", tags=["rollouts"])

    @router.post(
        "", response_model=RolloutOut, status_code=201, dependencies=[Depends(require(RELEASES_MANAGE))]
    )
    def start(request: Request, body: RolloutIn) -> Any:
        """Start a staged rollout of a release over the selected devices."""
        engine = request.app.state.fleet.store.writer
        try:
            policy = Policy(
                waves=parse_waves(body.waves),
                max_failure=parse_percent(body.max_failure),
                min_executed=body.min_executed,
                soak_s=parse_duration(body.soak),
                deadline_s=parse_duration(body.deadline),
            )
            selector = Selector.parse(body.select)
            rollout_id = uuid.uuid4().hex[:12]
            store.create_rollout(
                engine,
                rollout_id,
                body.release,
                str(selector),
                policy,
                select_devices(engine, selector),
                utc_now(),
            )
        except store.RolloutOverlap as exc:
            raise HTTPException(409, str(exc)) from exc
        except RolloutError as exc:
            raise HTTPException(422, str(exc)) from exc
        return status_of(request, rollout_id)

    @router.get("", response_model=list[RolloutOut], dependencies=[Depends(require(DEVICES_READ))])
    def listing(request: Request) -> Any:
        """Every rollout with its per-wave counts."""
        engine = request.app.state.fleet.store.writer
        return [status_of(request, rid) for rid in store.all_ids(engine)]

    @router.get("/{rollout_id}", response_model=RolloutOut, dependencies=[Depends(require(DEVICES_READ))])
    def one(request: Request, rollout_id: str) -> Any:
        """One rollout with its per-wave counts and halt reason."""
        return status_of(request, rollout_id)

    def _move(request: Request, rollout_id: str, allowed: tuple[str, ...], state: str) -> Any:
        engine = request.app.state.fleet.store.writer
        current = status_of(request, rollout_id)["state"]
        if current not in allowed:
            raise HTTPException(409, f"rollout {rollout_id} is {current}; cannot set it {state}")
        store.set_state(engine, rollout_id, state)
        return status_of(request, rollout_id)

    @router.post(
        "/{rollout_id}/pause", response_model=RolloutOut, dependencies=[Depends(require(RELEASES_MANAGE))]
    )
    def pause(request: Request, rollout_id: str) -> Any:
        """Stop starting waves (devices already targeted carry on)."""
        return _move(request, rollout_id, ("running",), "paused")

    @router.post(
        "/{rollout_id}/resume", response_model=RolloutOut, dependencies=[Depends(require(RELEASES_MANAGE))]
    )
    def resume(request: Request, rollout_id: str) -> Any:
        """Carry on a paused rollout."""
        return _move(request, rollout_id, ("paused",), "running")

    @router.post(
        "/{rollout_id}/abort", response_model=RolloutOut, dependencies=[Depends(require(RELEASES_MANAGE))]
    )
    def abort_route(request: Request, rollout_id: str) -> Any:
        """Abort: every targeted device gets its previous release back."""
        status_of(request, rollout_id)
        desired = request.app.state.fleet.desired
        abort(
            request.app.state.fleet.store.writer,
            rollout_id,
            lambda device, version: desired.set_release(device, version, allow_downgrade=True),
            desired.clear_release,
        )
        return status_of(request, rollout_id)

    return router
