"""The HTTP side of access control: ``GET /api/audit``, the OpenAPI document behind a permission,
and ``install(app, ...)`` which puts the ``AuthContext`` on ``app.state.auth``."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import Engine
from starlette.routing import BaseRoute

from fleet.auth import trail
from fleet.auth.deps import AuthContext, Authenticator, auth_of, permissions_of, require, routes_of
from fleet.auth.permissions import AUDIT_READ, DEVICES_READ, PUBLIC
from fleet.auth.tokens import DEFAULT_CACHE_S, TokenStore, bearer_authenticator
from protocol.timefmt import parse_ts


class AuditEntryOut(BaseModel):
    seq: int
    ts: str
    subject: str
    role: str
    kind: str
    action: str
    devices: list[str]
    source: str
    outcome: str
    prev_hash: str
    hash: str


def parse_since(value: str | None) -> datetime | None:
    """A ``since`` query parameter (RFC 3339); 422 naming the expected form when it is not one."""
    if value is None:
        return None
    try:
        return parse_ts(value)
    except ValueError as exc:
        raise HTTPException(422, f"since: {exc} (use e.g. 2026-11-22T21:30:00Z)") from exc


def audit_router() -> APIRouter:
    router = APIRouter(prefix="/api", tags=["audit"])

    @router.get("/audit", response_model=list[AuditEntryOut], dependencies=[Depends(require(AUDIT_READ))])
    def audit(
        request: Request,
        since: Annotated[str | None, Query(description="RFC 3339 time; entries at or after it")] = None,
        after: Annotated[int | None, Query(ge=0, description="Only entries after this seq")] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> Any:
        """Trail entries, oldest first: page with ``after`` (the last seq seen)."""
        engine = auth_of(request).engine
        if engine is None:
            return []
        rows = trail.read(engine, parse_since(since), after_seq=after, limit=limit)
        return [trail.to_json(row) for row in rows]

    return router


def openapi_router(app: FastAPI) -> APIRouter:
    """``/openapi.json`` behind ``devices:read`` (create the app with ``openapi_url=None``)."""
    router = APIRouter(include_in_schema=False)

    @router.get("/openapi.json", dependencies=[Depends(require(DEVICES_READ))])
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    return router


def annotate_openapi(app: FastAPI) -> None:
    """Each operation of the OpenAPI document names its permission (``x-permission``) and, unless
    PUBLIC, the bearer security scheme."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = plain()
        by_op = _route_permissions(app.routes)
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token (`cityedge fleet token create`) or an OIDC access token.",
        }
        for path, item in schema.get("paths", {}).items():
            for method, operation in item.items():
                permission = by_op.get((path, method.upper()))
                if permission is None:
                    continue
                operation["x-permission"] = permission
                operation["security"] = [] if permission == PUBLIC else [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _route_permissions(routes: Iterable[BaseRoute]) -> dict[tuple[str, str], str]:
    found: dict[tuple[str, str], str] = {}
    for route in routes_of(routes):
        declared = permissions_of(route)
        path = getattr(route, "path_format", None)
        if len(declared) != 1 or path is None:
            continue
        for method in getattr(route, "methods", None) or ():
            found[(path, method)] = declared[0]
    return found


def default_context(
    reader: Engine, writer: Engine, *, cache_s: float = DEFAULT_CACHE_S, extra: Iterable[Authenticator] = ()
) -> AuthContext:
    """The fleet's AuthContext: API tokens looked up on ``reader``, the trail on ``writer``."""
    tokens = TokenStore(reader, writer=writer, cache_s=cache_s)
    context = AuthContext([*extra, bearer_authenticator(tokens)], engine=writer)
    context.tokens = tokens
    return context
