"""The dashboard's rollout pages (server-rendered like fleet/dashboard.py).

- ``/rollouts``: every rollout, newest first, with its progress.
- ``/rollouts/{id}``: per wave targeted, downloading, committed, rolled back, failed, waiting for a
  lock or window, offline; the failure reasons grouped; the halt reason; the failed devices; and,
  for roles with ``releases:manage``, pause / resume / abort buttons. The body is re-fetched every
  2 s (``/ui/rollouts/{id}``, ``data-refresh`` in static/fleet.js).
- ``POST /rollouts/{id}/pause|resume|abort``: the buttons' forms (with the session's CSRF token
  like every form of the dashboard); ``require`` writes each on the audit trail before it acts.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from fleet.auth.deps import principal_of, require
from fleet.auth.permissions import DEVICES_READ, RELEASES_MANAGE, allowed
from fleet.rollouts import store
from fleet.rollouts.backend import RolloutBackend
from fleet.rollouts.balena import BalenaError
from fleet.rollouts.driver import abort
from fleet.rollouts.plan import RolloutError
from fleet.rollouts.view import COLUMNS, rollout_status
from protocol.timefmt import utc_now

LABELS = {
    "pending": "pending",
    "downloading": "downloading",
    "committed": "committed",
    "rolled_back": "rolled back",
    "failed": "failed",
    "waiting": "waiting (lock / window)",
    "offline": "offline",
}
MOVES = {"pause": "paused", "resume": "running"}
ACTIONS = {"running": ("pause", "abort"), "paused": ("resume", "abort"), "halted": ("abort",)}


def actions_for(state: str) -> tuple[str, ...]:
    """The buttons a rollout in ``state`` offers."""
    return ACTIONS.get(state, ())


def rollout_pages_router(templates: Jinja2Templates) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    def backend(request: Request) -> RolloutBackend:
        found: RolloutBackend = request.app.state.fleet.rollout_backend
        return found

    def status(request: Request, rollout_id: str) -> dict[str, Any]:
        engine = request.app.state.fleet.store.writer
        try:
            return rollout_status(engine, backend(request), rollout_id, utc_now())
        except store.RolloutNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except BalenaError as exc:
            raise HTTPException(502, str(exc)) from exc

    def context(request: Request, rollout_id: str) -> dict[str, Any]:
        principal = principal_of(request)
        rollout = status(request, rollout_id)
        failed = sum(w["counts"].get(k, 0) for w in rollout["waves"] for k in ("failed", "rolled_back"))
        executed = failed + sum(w["counts"].get("committed", 0) for w in rollout["waves"])
        return {
            "rollout": rollout,
            "columns": COLUMNS,
            "labels": LABELS,
            "executed": executed,
            "failed": failed,
            "actions": actions_for(rollout["state"]),
            "can_manage": principal is not None and allowed(principal.role, RELEASES_MANAGE),
        }

    @router.get("/rollouts", response_class=HTMLResponse, dependencies=[Depends(require(DEVICES_READ))])
    def listing(request: Request) -> Response:
        ids = store.all_ids(request.app.state.fleet.store.writer)
        rollouts = [status(request, rid) for rid in ids]
        return templates.TemplateResponse(request, "rollouts.html", {"rollouts": rollouts, "labels": LABELS})

    @router.get(
        "/rollouts/{rollout_id}", response_class=HTMLResponse, dependencies=[Depends(require(DEVICES_READ))]
    )
    def page(request: Request, rollout_id: str) -> Response:
        return templates.TemplateResponse(request, "rollout.html", context(request, rollout_id))

    @router.get(
        "/ui/rollouts/{rollout_id}",
        response_class=HTMLResponse,
        dependencies=[Depends(require(DEVICES_READ))],
    )
    def fragment(request: Request, rollout_id: str) -> Response:
        return templates.TemplateResponse(request, "_rollout_body.html", context(request, rollout_id))

    def button(action: str) -> None:
        # one route per action, so the audit trail's entry names it (POST /rollouts/{id}/abort)
        @router.post(f"/rollouts/{{rollout_id}}/{action}", dependencies=[Depends(require(RELEASES_MANAGE))])
        async def act(request: Request, rollout_id: str) -> Response:
            await run_in_threadpool(_apply, request, rollout_id, action)
            return RedirectResponse(f"/rollouts/{rollout_id}", status_code=303)

        act.__doc__ = f"The rollout page's {action} button (url-encoded form with ``csrf_token``)."

    for name in ("pause", "resume", "abort"):
        button(name)

    def _apply(request: Request, rollout_id: str, action: str) -> None:
        engine = request.app.state.fleet.store.writer
        try:
            state = store.load(engine, rollout_id).state
        except store.RolloutNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        if action not in actions_for(state):
            raise HTTPException(409, f"rollout {rollout_id} is {state}; it cannot {action}")
        if action == "abort":
            principal = principal_of(request)
            who = principal.name if principal is not None else "unknown"
            try:
                abort(
                    engine, rollout_id, backend(request).restore, reason=f"aborted by {who} on the dashboard"
                )
            except BalenaError as exc:
                raise HTTPException(502, str(exc)) from exc
            return
        try:
            store.move(engine, rollout_id, ("running",) if action == "pause" else ("paused",), MOVES[action])
        except store.RolloutNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except RolloutError as exc:
            raise HTTPException(409, str(exc)) from exc

    return router
