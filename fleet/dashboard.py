"""Server-rendered dashboard: device table (with each device's OTA state), recent events, a device
page with desired release beside running version and a ping button.

Jinja2 templates and a few lines of hand-written JS (``static/fleet.js``) that re-fetch HTML
fragments every 2 s; no build step, nothing from the internet.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from fleet.auth.deps import require
from fleet.auth.permissions import COMMANDS_SEND, DEVICES_READ
from fleet.auth.session import csrf_token, signed_in
from fleet.commands import CommandError
from fleet.otastate import ota_label, ota_states, ota_tone
from fleet.service import FleetService
from protocol.timefmt import utc_now

TEMPLATE_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"


def ago(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    seconds = int((utc_now() - moment).total_seconds())
    if seconds < 2:
        return "just now"
    for size, unit in ((86_400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def clock(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment is not None else ""


def metric(telemetry: dict[str, Any] | None, key: str, unit: str) -> str:
    value = (telemetry or {}).get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "–"
    return f"{value:.0f}{unit}" if unit == "%" else f"{value:.1f}{unit}"


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATE_DIR))
    templates.env.filters["ago"] = ago
    templates.env.filters["clock"] = clock
    templates.env.globals["metric"] = metric
    templates.env.filters["ota_label"] = ota_label
    templates.env.filters["ota_tone"] = ota_tone
    templates.env.globals["signed_in"] = signed_in  # the session (name, role, CSRF token) or None
    templates.env.globals["csrf_token"] = csrf_token
    return templates


def dashboard_router() -> APIRouter:
    templates = make_templates()
    router = APIRouter(include_in_schema=False)

    def fleet(request: Request) -> FleetService:
        service: FleetService = request.app.state.fleet
        return service

    def device_or_404(request: Request, device_id: str) -> dict[str, Any]:
        row = fleet(request).store.device(device_id)
        if row is None:
            raise HTTPException(404, f"device {device_id!r} is not known to the fleet")
        return row

    @router.get("/", response_class=HTMLResponse, dependencies=[Depends(require(DEVICES_READ))])
    def index(request: Request) -> Response:
        service = fleet(request)
        context = {
            "devices": service.store.devices(),
            "ota": ota_states(service.store.reader),
            "events": service.store.events(None, limit=25),
            "counts": service.store.counts(),
            "rate": service.stats.rate(5.0),
        }
        return templates.TemplateResponse(request, "index.html", context)

    @router.get("/ui/devices", response_class=HTMLResponse, dependencies=[Depends(require(DEVICES_READ))])
    def devices_fragment(request: Request) -> Response:
        store = fleet(request).store
        context = {"devices": store.devices(), "ota": ota_states(store.reader)}
        return templates.TemplateResponse(request, "_devices.html", context)

    @router.get("/ui/events", response_class=HTMLResponse, dependencies=[Depends(require(DEVICES_READ))])
    def events_fragment(request: Request) -> Response:
        context = {"events": fleet(request).store.events(None, limit=25), "show_device": True}
        return templates.TemplateResponse(request, "_events.html", context)

    @router.get("/ui/summary", response_class=HTMLResponse, dependencies=[Depends(require(DEVICES_READ))])
    def summary_fragment(request: Request) -> Response:
        service = fleet(request)
        context = {"counts": service.store.counts(), "rate": service.stats.rate(5.0)}
        return templates.TemplateResponse(request, "_summary.html", context)

    @router.get(
        "/devices/{device_id}", response_class=HTMLResponse, dependencies=[Depends(require(DEVICES_READ))]
    )
    def device_page(request: Request, device_id: str, cmd: str | None = None) -> Response:
        return templates.TemplateResponse(request, "device.html", _device_context(request, device_id, cmd))

    @router.get(
        "/ui/devices/{device_id}", response_class=HTMLResponse, dependencies=[Depends(require(DEVICES_READ))]
    )
    def device_fragment(request: Request, device_id: str, cmd: str | None = None) -> Response:
        context = _device_context(request, device_id, cmd)
        return templates.TemplateResponse(request, "_device_body.html", context)

    def _device_context(request: Request, device_id: str, cmd: str | None) -> dict[str, Any]:
        service = fleet(request)
        return {
            "device": device_or_404(request, device_id),
            "ota_state": ota_states(service.store.reader, [device_id]).get(device_id),
            "events": service.store.events(device_id, limit=50),
            "gaps": service.store.gaps(device_id),
            "command": service.store.command(cmd) if cmd else None,
            "show_device": False,
        }

    @router.post("/devices/{device_id}/ping", dependencies=[Depends(require(COMMANDS_SEND))])
    def ping(request: Request, device_id: str) -> Response:
        device_or_404(request, device_id)
        try:
            row = fleet(request).commands.issue(device_id, "ping", {}, None)
        except CommandError as exc:
            raise HTTPException(400, str(exc)) from exc
        return RedirectResponse(f"/devices/{device_id}?cmd={row['id']}", status_code=303)

    return router
