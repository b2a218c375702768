"""The fleet REST API (FastAPI): devices, events, gaps, commands, stats, metrics, health.

``create_app(service, extra_routers=...)`` builds the application; other parts (enrolment,
evidence) add their routers there and reach the service as ``request.app.state.fleet``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.staticfiles import StaticFiles

from fleet.alerts import acknowledge, list_alerts, open_counts
from fleet.apimodels import (
    AckIn,
    AlertOut,
    CommandCreated,
    CommandIn,
    CommandOut,
    DesiredOut,
    DesiredView,
    DeviceOut,
    EventOut,
    GapOut,
    HealthOut,
    IngestErrorOut,
    IngestOut,
    OverviewOut,
    ReleaseIn,
    StatsOut,
    TelemetryPoint,
)
from fleet.auth.deps import AuthContext, check_routes, principal_of, public_mount, require
from fleet.auth.permissions import COMMANDS_SEND, DEVICES_READ, METRICS_READ, PUBLIC, RELEASES_MANAGE
from fleet.auth.routes import parse_since
from fleet.commands import InvalidCommand, SigningFailed, UnknownDevice
from fleet.desired import (
    DesiredError,
    DesiredNotPublished,
    DesiredSigningFailed,
    DeviceNotFound,
    DowngradeRefused,
    InvalidDesired,
)
from fleet.devicequery import DeviceFilter
from fleet.inbound import OVERSIZED
from fleet.metrics import render_metrics
from fleet.paging import device_filter, refuse_nul, set_page_headers
from fleet.privacy import redact_event
from fleet.service import FleetService


def fleet_of(request: Request) -> FleetService:
    service: FleetService = request.app.state.fleet
    return service


def _device_or_404(service: FleetService, device_id: str) -> dict[str, Any]:
    row = service.store.device(device_id)
    if row is None:
        raise HTTPException(404, f"device {device_id!r} is not known to the fleet")
    return row


def api_router() -> APIRouter:
    router = APIRouter(prefix="/api", tags=["fleet"])

    @router.get("/devices", response_model=list[DeviceOut], dependencies=[Depends(require(DEVICES_READ))])
    def list_devices(
        request: Request,
        response: Response,
        flt: Annotated[DeviceFilter, Depends(device_filter)],
    ) -> Any:
        """One page of devices. The total matching the filter is in ``X-Total-Count``; the next
        page, when there is one, in ``Link: <...>; rel="next"`` (and ``X-Next-Offset``)."""
        rows, total = fleet_of(request).store.device_page(flt)
        set_page_headers(request, response, flt, len(rows), total or 0)
        return rows

    @router.get("/overview", response_model=OverviewOut, dependencies=[Depends(require(DEVICES_READ))])
    def overview(request: Request) -> Any:
        """Devices by site (online, silent, offline, revoked, alerting) and by version."""
        store = fleet_of(request).store
        return {**store.overview(), "alerts": open_counts(store)}

    @router.get("/alerts", response_model=list[AlertOut], dependencies=[Depends(require(DEVICES_READ))])
    def get_alerts(
        request: Request,
        response: Response,
        open: bool = True,
        device: Annotated[str | None, Query(max_length=64)] = None,
        kind: Annotated[str | None, Query(max_length=32)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    ) -> Any:
        """Alerts computed by the fleet, newest first (open ones only unless ``open=false``);
        the total is in ``X-Total-Count``."""
        refuse_nul(device=device, kind=kind)
        rows, total = list_alerts(
            fleet_of(request).store, open_only=open, device=device, kind=kind, limit=limit, offset=offset
        )
        response.headers["X-Total-Count"] = str(total)
        return rows

    @router.post(
        "/alerts/{alert_id}/ack", response_model=AlertOut, dependencies=[Depends(require(COMMANDS_SEND))]
    )
    def ack_alert(request: Request, alert_id: Annotated[int, Path(ge=1, le=2**31 - 1)], body: AckIn) -> Any:
        """Acknowledge an alert with a note (on the audit trail; a latched alert is resolved)."""
        principal = principal_of(request)
        by = principal.name if principal is not None else "unknown"
        row = acknowledge(fleet_of(request).store, alert_id, by=by, note=body.note)
        if row is None:
            raise HTTPException(404, f"no alert with id {alert_id}")
        return row

    @router.get(
        "/devices/{device_id}/commands",
        response_model=list[CommandOut],
        dependencies=[Depends(require(DEVICES_READ))],
    )
    def device_commands(
        request: Request, device_id: str, limit: Annotated[int, Query(ge=1, le=1000)] = 50
    ) -> Any:
        """Commands sent to the device, newest first, with their results."""
        service = fleet_of(request)
        _device_or_404(service, device_id)
        return service.store.commands_of(device_id, limit=limit)

    @router.get(
        "/devices/{device_id}/telemetry",
        response_model=list[TelemetryPoint],
        dependencies=[Depends(require(DEVICES_READ))],
    )
    def device_telemetry(
        request: Request, device_id: str, hours: Annotated[float, Query(gt=0, le=168)] = 24
    ) -> Any:
        """Telemetry history in 1-minute rollups (mean of each value in that minute)."""
        service = fleet_of(request)
        _device_or_404(service, device_id)
        return service.store.telemetry_history(device_id, hours=hours)

    @router.get(
        "/devices/{device_id}", response_model=DeviceOut, dependencies=[Depends(require(DEVICES_READ))]
    )
    def get_device(request: Request, device_id: str) -> Any:
        return _device_or_404(fleet_of(request), device_id)

    @router.get(
        "/devices/{device_id}/events",
        response_model=list[EventOut],
        dependencies=[Depends(require(DEVICES_READ))],
    )
    def device_events(
        request: Request,
        device_id: str,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        kind: str | None = None,
        since: Annotated[str | None, Query(description="RFC 3339 time; events at or after it")] = None,
    ) -> Any:
        service = fleet_of(request)
        _device_or_404(service, device_id)
        rows = service.store.events(device_id, limit=limit, kind=kind, since=parse_since(since))
        return [redact_event(row) for row in rows]

    @router.get("/events", response_model=list[EventOut], dependencies=[Depends(require(DEVICES_READ))])
    def recent_events(
        request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 50, kind: str | None = None
    ) -> Any:
        return [redact_event(row) for row in fleet_of(request).store.events(None, limit=limit, kind=kind)]

    @router.get(
        "/devices/{device_id}/gaps",
        response_model=list[GapOut],
        dependencies=[Depends(require(DEVICES_READ))],
    )
    def device_gaps(request: Request, device_id: str, open_only: bool = False) -> Any:
        service = fleet_of(request)
        _device_or_404(service, device_id)
        rows = service.store.gaps(device_id, open_only=open_only)
        return [{**r, "open": r["closed_at"] is None} for r in rows]

    @router.post(
        "/devices/{device_id}/commands",
        response_model=CommandCreated,
        status_code=201,
        dependencies=[Depends(require(COMMANDS_SEND))],
    )
    def send_command(request: Request, device_id: str, body: CommandIn) -> Any:
        try:
            row = fleet_of(request).commands.issue(device_id, body.name, body.args, body.ttl_s)
        except UnknownDevice as exc:
            raise HTTPException(404, str(exc)) from exc
        except InvalidCommand as exc:
            raise HTTPException(422, str(exc)) from exc
        except SigningFailed as exc:
            raise HTTPException(503, str(exc)) from exc
        return {"id": row["id"]}

    @router.get(
        "/commands/{command_id}", response_model=CommandOut, dependencies=[Depends(require(DEVICES_READ))]
    )
    def get_command(request: Request, command_id: str) -> Any:
        row = fleet_of(request).commands.get(command_id)
        if row is None:
            raise HTTPException(404, f"no command with id {command_id!r}")
        return row

    @router.put(
        "/devices/{device_id}/release",
        response_model=DesiredOut,
        dependencies=[Depends(require(RELEASES_MANAGE))],
    )
    def set_release(request: Request, device_id: str, body: ReleaseIn) -> Any:
        """Ask the device to run a release: returns the signed desired state, published retained."""
        desired = fleet_of(request).desired
        return _desired_call(
            lambda: desired.set_release(
                device_id,
                body.version,
                target=body.target,
                allow_downgrade=body.allow_downgrade,
                force=body.force,
            )
        )

    @router.delete(
        "/devices/{device_id}/release",
        response_model=DesiredOut,
        dependencies=[Depends(require(RELEASES_MANAGE))],
    )
    def clear_release(request: Request, device_id: str) -> Any:
        """Release null: the device stays on what it runs. Returns the signed desired state."""
        desired = fleet_of(request).desired
        return _desired_call(lambda: desired.clear_release(device_id))

    @router.get(
        "/devices/{device_id}/desired",
        response_model=DesiredView,
        dependencies=[Depends(require(DEVICES_READ))],
    )
    def get_desired(request: Request, device_id: str) -> Any:
        """The signed desired state beside the running version and the latest OTA progress."""
        desired = fleet_of(request).desired
        return _desired_call(lambda: desired.view(device_id))

    @router.get("/stats", response_model=StatsOut, dependencies=[Depends(require(DEVICES_READ))])
    def stats(request: Request) -> Any:
        return build_stats(fleet_of(request))

    return router


def _desired_call(call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run a desired-state change or read, answering its errors with the right HTTP status."""
    try:
        return call()
    except DeviceNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except DowngradeRefused as exc:
        raise HTTPException(409, str(exc)) from exc
    except InvalidDesired as exc:
        raise HTTPException(422, str(exc)) from exc
    except (DesiredSigningFailed, DesiredNotPublished) as exc:
        raise HTTPException(503, str(exc)) from exc
    except DesiredError as exc:
        raise HTTPException(400, str(exc)) from exc


def build_stats(service: FleetService) -> StatsOut:
    counts = service.store.counts()
    errors = [IngestErrorOut.model_validate(r) for r in service.store.ingest_errors()]
    snapshot = service.stats.snapshot()
    ingest = IngestOut(worker_id=service.config.worker_id, group=service.config.group, **snapshot)
    return StatsOut(
        **counts,
        ingest_errors=errors,
        malformed_total=sum(e.count for e in errors if e.reason != OVERSIZED),
        oversized_total=sum(e.count for e in errors if e.reason == OVERSIZED),
        ingest=ingest,
        db=service.store.dialect,
    )


def ops_router() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", response_model=HealthOut, dependencies=[Depends(require(PUBLIC))])
    def healthz(request: Request, response: Response) -> Any:
        health = fleet_of(request).health()
        if not health["ok"]:
            response.status_code = 503
        return health

    @router.get("/metrics", response_class=Response, dependencies=[Depends(require(METRICS_READ))])
    def metrics(request: Request) -> Response:
        body, content_type = render_metrics(fleet_of(request))
        return Response(content=body, media_type=content_type)

    return router


def create_app(
    service: FleetService,
    *,
    extra_routers: Sequence[APIRouter] = (),
    dashboard: bool = True,
    auth: AuthContext | None = None,
) -> FastAPI:
    """The fleet HTTP application for ``service`` (which the caller starts and stops).

    Every route requires authentication except those declared PUBLIC (health, enrolment, /tuf,
    static files). ``auth`` defaults to API tokens and the audit trail in the service's store;
    sign-in (OIDC, sessions) adds its authenticators to ``app.state.auth``.
    """
    from fleet.auth.routes import annotate_openapi, audit_router, default_context, openapi_router

    app = FastAPI(
        title="cityedge fleet",
        version="1",
        description="Devices, events, commands and ingest statistics of the cityedge fleet.",
        docs_url=None,  # the interactive docs load their scripts from a CDN; the fleet runs offline
        redoc_url=None,
        openapi_url=None,  # served by openapi_router behind a permission
    )
    app.state.fleet = service
    app.state.auth = auth or default_context(service.store.reader, service.store.writer)
    app.include_router(api_router())
    app.include_router(ops_router())
    app.include_router(audit_router())
    from fleet.rollouts.api import rollout_router

    app.include_router(rollout_router())
    app.include_router(openapi_router(app))
    for router in extra_routers:
        app.include_router(router)
    if dashboard:
        from fleet.apidocs import api_docs_router
        from fleet.dashboard import STATIC_DIR, dashboard_router, make_templates
        from fleet.errorpages import install_error_pages

        templates = make_templates()
        app.include_router(dashboard_router())
        from fleet.rollouts.pages import rollout_pages_router

        app.include_router(rollout_pages_router(templates))
        app.include_router(api_docs_router(app, templates))
        install_error_pages(app, templates)
        app.router.routes.append(public_mount("/static", StaticFiles(directory=STATIC_DIR), name="static"))
    annotate_openapi(app)
    check_routes(app.routes)  # fail closed: a route without a declared permission is never served
    return app
