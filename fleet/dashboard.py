"""Server-rendered dashboard for the operations centre, built for a city of 20,000 devices.

- ``/``: totals, the fleet by site and by version, one page of devices (server-side paging, sorting
  and filters: the same query parameters as ``GET /api/devices``) and recent events. Live updates
  come over one server-sent-event stream (``/ui/stream``, fleet/livestream.py) that sends only what
  changed: the rows of the page whose data changed, the page when its membership changed, totals.
- ``/alerts``: the open (or all) alerts, acknowledge with a note.
- ``/rollouts``: staged rollouts, a page per rollout with its waves (fleet/rollouts/pages.py).
- ``/devices/{id}``: facts, 24 h telemetry charts (inline SVG), desired beside reported state,
  command history with results, events with their payloads, evidence thumbnails (for roles that
  may see evidence; each image fetch is on the audit trail) and a ping button.

Jinja2 templates and a little hand-written JS (``static/fleet.js``); no build step, nothing from
the internet.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from fleet.alerts import KINDS, acknowledge, list_alerts, open_counts
from fleet.auth.deps import principal_of, require
from fleet.auth.permissions import COMMANDS_SEND, DEVICES_READ, EVIDENCE_READ, allowed
from fleet.auth.session import csrf_token, signed_in
from fleet.charts import sparkline_svg
from fleet.commands import CommandError
from fleet.devicequery import SORTS, STATES, DeviceFilter
from fleet.otastate import ota_label, ota_states, ota_tone
from fleet.paging import device_filter
from fleet.privacy import redact_event
from fleet.service import FleetService
from fleet.snapshots import CONTENT_TYPE, SNAPSHOT
from protocol.timefmt import format_ts, utc_now

TEMPLATE_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"
PAGE_SIZES = (50, 100, 200, 500)  # within the API's MAX_LIMIT


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


def duration(seconds: float) -> str:
    """600 -> "10 min", 5400 -> "1 h 30 min", 45 -> "45 s"."""
    total = round(seconds)
    if total < 60:
        return f"{total} s"
    hours, minutes = divmod(total // 60, 60)
    if not hours:
        return f"{minutes} min"
    return f"{hours} h" + (f" {minutes} min" if minutes else "")


def clock(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment is not None else ""


def iso(moment: datetime | None) -> str:
    return format_ts(moment) if moment is not None else ""


def metric(telemetry: dict[str, Any] | None, key: str, unit: str) -> str:
    value = (telemetry or {}).get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "–"
    return f"{value:.0f}{unit}" if unit == "%" else f"{value:.1f}{unit}"


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATE_DIR))
    templates.env.filters["ago"] = ago
    templates.env.filters["clock"] = clock
    templates.env.filters["duration"] = duration
    templates.env.filters["iso"] = iso
    templates.env.filters["pretty"] = pretty
    templates.env.globals["metric"] = metric
    templates.env.filters["ota_label"] = ota_label
    templates.env.filters["ota_tone"] = ota_tone
    templates.env.globals["signed_in"] = signed_in  # the session (name, role, CSRF token) or None
    templates.env.globals["csrf_token"] = csrf_token
    return templates


def filter_params(flt: DeviceFilter) -> dict[str, str]:
    """The query parameters that reproduce ``flt`` (defaults left out)."""
    params = {
        "q": flt.q,
        "status": flt.state,
        "role": flt.role,
        "site": flt.site,
        "version": flt.version,
        "health": flt.health,
    }
    out = {k: v for k, v in params.items() if v}
    if flt.online is not None:
        out["online"] = str(flt.online).lower()
    sort = ("-" if flt.descending else "") + flt.sort
    if sort != "id":
        out["sort"] = sort
    if flt.limit is not None and flt.limit != 100:
        out["limit"] = str(flt.limit)
    if flt.offset:
        out["offset"] = str(flt.offset)
    return out


def page_links(flt: DeviceFilter, total: int) -> dict[str, Any]:
    """URLs and numbers of the pager and the sortable column headers."""
    limit = flt.limit or 100
    base = filter_params(flt)

    def url(**changes: Any) -> str:
        params = {**base, **{k: str(v) for k, v in changes.items() if v is not None}}
        for key, value in changes.items():
            if value is None:
                params.pop(key, None)
        if params.get("offset") == "0":
            params.pop("offset")
        return "/?" + urlencode(params) if params else "/"

    current = ("-" if flt.descending else "") + flt.sort
    sort_urls = {key: url(sort=f"-{key}" if current == key else key, offset=None) for key in SORTS}
    last_offset = max(0, (total - 1) // limit * limit)
    return {
        "first": url(offset=None) if flt.offset else None,
        "prev": url(offset=max(0, flt.offset - limit)) if flt.offset else None,
        "next": url(offset=flt.offset + limit) if flt.offset + limit < total else None,
        "last": url(offset=last_offset) if flt.offset + limit < total else None,
        "page": flt.offset // limit + 1,
        "pages": max(1, (total + limit - 1) // limit),
        "from": flt.offset + 1 if total else 0,
        "to": min(total, flt.offset + limit),
        "sort": sort_urls,
        "current_sort": current,
    }


def row_fingerprint(row: dict[str, Any], ota: Any) -> str:
    """What a device row shows, as a short hash: a row is re-sent only when this changes."""
    shown = [row.get(k) for k in ("state", "role", "version", "last_seen", "telemetry", "revoked_at", "site")]
    return hashlib.sha256(json.dumps([shown, ota], default=str, sort_keys=True).encode()).hexdigest()[:16]


def page_fingerprint(rows: list[dict[str, Any]], ota: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(row["id"].encode() + row_fingerprint(row, ota.get(row["id"])).encode())
    return digest.hexdigest()[:16]


class DashboardData:
    """The queries behind the pages and the live stream (one place, so both show the same)."""

    def __init__(self, service: FleetService) -> None:
        self.service = service
        self.store = service.store

    def page(self, flt: DeviceFilter) -> dict[str, Any]:
        rows, total = self.store.device_page(flt)
        ota = ota_states(self.store.reader, [r["id"] for r in rows]) if rows else {}
        return {
            "devices": rows,
            "ota": ota,
            "total": total or 0,
            "links": page_links(flt, total or 0),
            "page_version": page_fingerprint(rows, ota),
        }

    def summary(self) -> dict[str, Any]:
        return {
            "counts": self.store.counts(),
            "rate": self.service.stats.rate(5.0),
            "alerts": open_counts(self.store),
        }

    def events(self) -> dict[str, Any]:
        return {"events": self.store.events(None, limit=25), "show_device": True}

    def overview(self) -> dict[str, Any]:
        return {"overview": self.store.overview()}


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

    def filter_choices(service: FleetService, overview: dict[str, Any]) -> dict[str, Any]:
        return {
            "states": STATES,
            "roles": service.store.roles(),
            "sites": [s["site"] for s in overview["sites"] if s["site"]],
            "versions": [v["version"] for v in overview["versions"] if v["version"]],
            "kinds": KINDS,
            "page_sizes": PAGE_SIZES,
        }

    @router.get("/", response_class=HTMLResponse, dependencies=[Depends(require(DEVICES_READ))])
    def index(request: Request, flt: Annotated[DeviceFilter, Depends(device_filter)]) -> Response:
        service = fleet(request)
        data = DashboardData(service)
        overview = data.overview()
        context = {
            **data.page(flt),
            **data.summary(),
            **data.events(),
            **overview,
            "filter": flt,
            "params": filter_params(flt),
            "query": urlencode(filter_params(flt)),
            "choices": filter_choices(service, overview["overview"]),
        }
        return templates.TemplateResponse(request, "index.html", context)

    @router.get("/ui/devices", response_class=HTMLResponse, dependencies=[Depends(require(DEVICES_READ))])
    def devices_fragment(request: Request, flt: Annotated[DeviceFilter, Depends(device_filter)]) -> Response:
        context = {**DashboardData(fleet(request)).page(flt), "filter": flt}
        return templates.TemplateResponse(request, "_devices.html", context)

    @router.get("/ui/events", response_class=HTMLResponse, dependencies=[Depends(require(DEVICES_READ))])
    def events_fragment(request: Request) -> Response:
        return templates.TemplateResponse(request, "_events.html", DashboardData(fleet(request)).events())

    @router.get("/ui/summary", response_class=HTMLResponse, dependencies=[Depends(require(DEVICES_READ))])
    def summary_fragment(request: Request) -> Response:
        return templates.TemplateResponse(request, "_summary.html", DashboardData(fleet(request)).summary())

    @router.get("/ui/stream", dependencies=[Depends(require(DEVICES_READ))])
    def stream(
        request: Request,
        flt: Annotated[DeviceFilter, Depends(device_filter)],
        v: Annotated[str, Query(max_length=64, description="Fingerprint of the page shown")] = "",
        max_s: Annotated[float, Query(gt=0, le=600)] = 120.0,
    ) -> Response:
        from fleet.livestream import LiveStream

        live = LiveStream(DashboardData(fleet(request)), templates.env, flt, page_version=v)
        return StreamingResponse(
            live.events(request, max_s=max_s),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @router.get("/alerts", response_class=HTMLResponse, dependencies=[Depends(require(DEVICES_READ))])
    def alerts_page(
        request: Request,
        kind: Annotated[str | None, Query(max_length=32)] = None,
        device: Annotated[str | None, Query(max_length=64)] = None,
        show: Annotated[str, Query(pattern="^(open|all)$")] = "open",
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    ) -> Response:
        store = fleet(request).store
        rows, total = list_alerts(
            store,
            open_only=show == "open",
            kind=kind or None,
            device=device or None,
            limit=100,
            offset=offset,
        )
        principal = principal_of(request)
        context = {
            "alerts": rows,
            "total": total,
            "offset": offset,
            "counts": open_counts(store),
            "kinds": KINDS,
            "kind": kind or "",
            "device": device or "",
            "show": show,
            "can_ack": principal is not None and allowed(principal.role, COMMANDS_SEND),
            "query": urlencode(
                {k: v for k, v in {"kind": kind, "device": device, "show": show}.items() if v}
            ),
        }
        return templates.TemplateResponse(request, "alerts.html", context)

    @router.post("/alerts/{alert_id}/ack", dependencies=[Depends(require(COMMANDS_SEND))])
    async def ack(request: Request, alert_id: Annotated[int, PathParam(ge=1, le=2**31 - 1)]) -> Response:
        """The alerts page's form (url-encoded ``note``); the route is on the audit trail."""
        body = await request.body()
        if len(body) > 65_536:
            raise HTTPException(413, "the note is too long")
        note = (parse_qs(body.decode("utf-8", "replace")).get("note") or [""])[0].strip()[:2000]
        if not note:
            raise HTTPException(422, "write a note: what was done, or why the alert can wait")
        principal = principal_of(request)
        by = principal.name if principal is not None else "unknown"
        done = await run_in_threadpool(acknowledge, fleet(request).store, alert_id, by=by, note=note)
        if done is None:
            raise HTTPException(404, f"no alert with id {alert_id}")
        back = request.headers.get("referer") or ""
        return RedirectResponse(
            back if back.startswith(str(request.base_url)) else "/alerts", status_code=303
        )

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
        device = device_or_404(request, device_id)
        events = service.store.events(device_id, limit=50)
        history = service.store.telemetry_history(device_id, hours=24)
        principal = principal_of(request)
        may_see_evidence = principal is not None and allowed(principal.role, EVIDENCE_READ)
        evidence = {}
        if may_see_evidence:
            for event in events:
                found = service.store.evidence(event["id"])
                if found is not None:
                    evidence[event["id"]] = found
        alerts, _ = list_alerts(service.store, open_only=False, device=device_id, limit=20)
        commands = service.store.commands_of(device_id, limit=20)
        return {
            "device": device,
            "ota_state": ota_states(service.store.reader, [device_id]).get(device_id),
            "events": [redact_event(e) for e in events],
            "gaps": service.store.gaps(device_id),
            "command": service.store.command(cmd) if cmd else None,
            "commands": commands,
            "snapshot": next((c for c in commands if (c["result"] or {}).get("image")), None)
            if may_see_evidence
            else None,
            "charts": [
                (label, sparkline_svg(history, key, unit=unit, label=label))
                for key, label, unit in (
                    ("cpu_pct", "CPU", "%"),
                    ("mem_pct", "Memory", "%"),
                    ("disk_pct", "Disk", "%"),
                    ("temp_c", "Temperature", "°C"),
                )
            ],
            "history_points": len(history),
            "alerts": alerts,
            "evidence": evidence,
            "may_see_evidence": may_see_evidence,
            "show_device": False,
            "show_payload": True,
        }

    def send(request: Request, device_id: str, name: str) -> Response:
        device_or_404(request, device_id)
        try:
            row = fleet(request).commands.issue(device_id, name, {}, None)
        except CommandError as exc:
            raise HTTPException(400, str(exc)) from exc
        return RedirectResponse(f"/devices/{device_id}?cmd={row['id']}", status_code=303)

    @router.post("/devices/{device_id}/ping", dependencies=[Depends(require(COMMANDS_SEND))])
    def ping(request: Request, device_id: str) -> Response:
        return send(request, device_id, "ping")

    @router.post("/devices/{device_id}/snapshot", dependencies=[Depends(require(COMMANDS_SEND))])
    def snapshot(request: Request, device_id: str) -> Response:
        """Ask a camera for a picture of its view (people and plates blurred on the device)."""
        return send(request, device_id, SNAPSHOT)

    @router.get(
        "/devices/{device_id}/snapshot/{command_id}",
        dependencies=[Depends(require(EVIDENCE_READ, personal_data=True))],
    )
    def snapshot_image(request: Request, device_id: str, command_id: str) -> Response:
        """The picture a camera answered (a view of it is on the audit trail)."""
        found = fleet(request).store.snapshot_image(command_id)
        if found is None or found[0] != device_id:
            raise HTTPException(404, f"no snapshot {command_id} of device {device_id}")
        return Response(found[1], media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})

    return router
