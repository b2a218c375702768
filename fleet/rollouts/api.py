"""REST routes of staged rollouts (``/api/rollouts``); mutating ones are audited by ``require``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from fleet.auth.deps import principal_of, require
from fleet.auth.permissions import DEVICES_READ, RELEASES_MANAGE
from fleet.rollouts import store
from fleet.rollouts.backend import RolloutBackend
from fleet.rollouts.balena import BalenaError
from fleet.rollouts.driver import abort
from fleet.rollouts.plan import (
    Policy,
    RolloutError,
    Selector,
    parse_duration,
    parse_percent,
    parse_waves,
)
from fleet.rollouts.view import rollout_status
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
    wave: int = Field(description="Wave number, from 0.")
    targeted: int = Field(description="Devices of the wave whose desired state carries the release.")
    counts: dict[str, int] = Field(
        description="Devices per outcome: pending, downloading, committed, rolled_back, failed, "
        "waiting (for an update lock or an install window), offline."
    )
    reasons: dict[str, int] = Field(description="Failure reasons of the wave, grouped, most frequent first.")
    waiting: dict[str, int] = Field(
        description="Why devices wait (update lock, install window, byte budget), grouped."
    )


class PolicyOut(BaseModel):
    waves: list[float]
    max_failure: float
    min_executed: int
    soak_s: float
    deadline_s: float


class FailedDeviceOut(BaseModel):
    device: str
    wave: int
    outcome: str
    reason: str | None


class RolloutOut(BaseModel):
    id: str
    release: str
    selector: str
    state: str = Field(description="running, paused, halted, aborted or complete.")
    reason: str = Field(description="Why it halted (rate, reasons, devices) or was aborted.")
    backend: str = Field(description="ota (signed desired state) or balena (release pinning).")
    created_at: datetime
    planned: int
    planned_waves: int
    wave_sizes: list[int]
    policy: PolicyOut
    waves: list[WaveOut]
    failed_devices: list[FailedDeviceOut] = Field(description="Failed devices (the first 200).")


def backend_of(request: Request) -> RolloutBackend:
    backend: RolloutBackend = request.app.state.fleet.rollout_backend
    return backend


def status_of(request: Request, rollout_id: str) -> dict[str, Any]:
    try:
        engine = request.app.state.fleet.store.writer
        return rollout_status(engine, backend_of(request), rollout_id, utc_now())
    except store.RolloutNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except BalenaError as exc:
        raise HTTPException(502, str(exc)) from exc


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
                backend_of(request).select(selector),
                utc_now(),
            )
        except store.RolloutOverlap as exc:
            raise HTTPException(409, str(exc)) from exc
        except BalenaError as exc:
            raise HTTPException(502, str(exc)) from exc
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
        try:
            store.move(engine, rollout_id, allowed, state)
        except store.RolloutNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except RolloutError as exc:
            raise HTTPException(409, str(exc)) from exc
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
        principal = principal_of(request)
        reason = f"aborted by {principal.name if principal is not None else 'unknown'}"
        try:
            abort(request.app.state.fleet.store.writer, rollout_id, backend_of(request).restore, reason)
        except BalenaError as exc:
            raise HTTPException(502, str(exc)) from exc
        return status_of(request, rollout_id)

    return router
