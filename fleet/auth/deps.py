"""The one dependency every route declares: ``require(PERMISSION)``.

``require`` authenticates the request with the authenticators of ``request.app.state.auth`` (an
``AuthContext``), checks the principal's role, writes the decision on the audit trail when the route
is mutating (POST/PUT/PATCH/DELETE) or shows personal data, and only then lets the handler run::

    @router.get("/api/devices", dependencies=[Depends(require(DEVICES_READ))])

``permissions_of(route)`` finds the declarations again, so a test can walk ``app.routes`` and fail
for any route that declares none, or more than one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import RouteContext, iter_route_contexts
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.routing import BaseRoute, Mount

from fleet.auth.permissions import ALL_DECLARABLE, PUBLIC, allowed
from fleet.auth.principal import AuthError, Principal

if TYPE_CHECKING:
    from fleet.auth.tokens import TokenStore

Authenticator = Callable[[Request], Principal | None]
"""Returns None when the request carries no credential of its kind, a Principal when it carries a
good one, and raises ``AuthError(401, reason)`` when it carries a bad one."""

MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ANONYMOUS = "anonymous"


class AuthContext:
    """What ``require`` needs at request time: the authenticators (in order) and the trail's store.

    ``engine`` is where the audit trail lives (the fleet store's writer engine); None keeps no
    trail (only for tests of the permission logic itself).
    """

    def __init__(self, authenticators: Iterable[Authenticator] = (), *, engine: Engine | None = None) -> None:
        self.authenticators: list[Authenticator] = list(authenticators)
        self.engine = engine
        self.tokens: TokenStore | None = None  # the API-token lookups (their cache), when used

    def add(self, authenticator: Authenticator, *, first: bool = False) -> None:
        """Add an authenticator at the end (or, with ``first``, before the others)."""
        if first:
            self.authenticators.insert(0, authenticator)
        else:
            self.authenticators.append(authenticator)

    def authenticate(self, request: Request) -> Principal:
        """The request's principal, or AuthError(401) when it has no acceptable credential."""
        for authenticator in self.authenticators:
            principal = authenticator(request)
            if principal is not None:
                return principal
        if request.headers.get("authorization"):
            raise AuthError(401, "the Authorization header holds no credential this fleet accepts")
        raise AuthError(401, "sign in or send 'Authorization: Bearer <token>'")

    def record(
        self,
        request: Request,
        principal: Principal | None,
        outcome: str,
        *,
        action: str | None = None,
        devices: Sequence[str] | None = None,
    ) -> int | None:
        """Append one trail entry for ``request``; returns its seq (None when no trail is kept)."""
        if self.engine is None:
            return None
        from fleet.auth import trail

        entry = trail.TrailEntry(
            subject=principal.subject if principal else ANONYMOUS,
            role=principal.role if principal else "",
            kind=principal.kind if principal else ANONYMOUS,
            action=action or action_of(request),
            devices=list(devices) if devices is not None else devices_of(request),
            source=source_of(request),
            outcome=outcome,
        )
        return trail.append(self.engine, entry)


def action_of(request: Request) -> str:
    """``METHOD /path/{template}`` of the matched route (the template: ids are in ``devices``)."""
    # FastAPI keeps the route as included (with the prefix of include_router) in its own scope
    # entry; the plain "route" entry is the route as its router declared it.
    route = (request.scope.get("fastapi") or {}).get("effective_route_context") or request.scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None) or request.url.path
    return f"{request.method} {path}"


def devices_of(request: Request) -> list[str]:
    device = request.path_params.get("device_id")
    return [str(device)] if device is not None else []


def source_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def principal_of(request: Request) -> Principal | None:
    """The principal ``require`` authenticated for this request (None on PUBLIC routes)."""
    principal: Principal | None = getattr(request.state, "principal", None)
    return principal


def auth_of(request: Request) -> AuthContext:
    context = getattr(request.app.state, "auth", None)
    if not isinstance(context, AuthContext):
        # A misconfigured application must fail closed, never serve without authentication.
        raise HTTPException(503, "the fleet's access control is not configured (app.state.auth)")
    return context


class Requirement:
    """The dependency ``require`` returns; FastAPI calls it with the request."""

    def __init__(self, permission: str, *, personal_data: bool = False) -> None:
        if permission not in ALL_DECLARABLE:
            raise ValueError(f"unknown permission {permission!r}; see fleet/auth/permissions.py")
        self.permission = permission
        self.personal_data = personal_data

    def __repr__(self) -> str:
        return f"require({self.permission!r}{', personal_data=True' if self.personal_data else ''})"

    def __call__(self, request: Request) -> Principal | None:
        if self.permission == PUBLIC:
            return None
        context = auth_of(request)
        recorded = request.method in MUTATING_METHODS or self.personal_data
        try:
            principal = context.authenticate(request)
        except AuthError as exc:
            if recorded:
                _record_or_503(context, request, None, f"denied: {exc.reason}")
            raise _http_error(exc) from exc
        if not allowed(principal.role, self.permission):
            reason = f"role {principal.role!r} does not have permission {self.permission!r}"
            if recorded:
                _record_or_503(context, request, principal, f"denied: {reason}")
            raise HTTPException(403, reason)
        if recorded:
            _record_or_503(context, request, principal, "allowed")
        request.state.principal = principal
        return principal


def require(permission: str, *, personal_data: bool = False) -> Requirement:
    """The dependency declaring that a route needs ``permission`` (or PUBLIC).

    ``personal_data`` marks routes that show personal data (evidence images, plate text): every
    view is written on the audit trail, like every mutating request.
    """
    return Requirement(permission, personal_data=personal_data)


def _http_error(exc: AuthError) -> HTTPException:
    if exc.status == 401:
        return HTTPException(401, exc.reason, headers={"WWW-Authenticate": "Bearer"})
    return HTTPException(exc.status, exc.reason)


def _record_or_503(context: AuthContext, request: Request, principal: Principal | None, outcome: str) -> None:
    """Record before the action takes effect: when the trail cannot be written, nothing happens."""
    try:
        context.record(request, principal, outcome)
    except SQLAlchemyError as exc:
        raise HTTPException(
            503, "the audit trail cannot be written (database unavailable); nothing was done, try again"
        ) from exc


# -- the route-permission registry -------------------------------------------------------------


def _requirements(dependant: Dependant) -> list[Requirement]:
    found: list[Requirement] = []
    for sub in dependant.dependencies:
        if isinstance(sub.call, Requirement):
            found.append(sub.call)
        found += _requirements(sub)
    return found


def routes_of(routes: Iterable[BaseRoute]) -> list[RouteContext]:
    """Every route of an application, included routers flattened (with their dependencies)."""
    return list(iter_route_contexts(list(routes)))


def requirements_of(route: BaseRoute | RouteContext) -> list[Requirement]:
    """Every ``require(...)`` a route declares (its own, its router's and nested ones)."""
    dependant: Dependant | None = getattr(route, "dependant", None)
    if dependant is not None:
        return _requirements(dependant)
    declared = getattr(route, "permission", None)
    if isinstance(declared, Requirement):
        return [declared]
    return []


def permissions_of(route: BaseRoute | RouteContext) -> list[str]:
    """The permissions ``route`` declares: exactly one for a correct route."""
    return [r.permission for r in requirements_of(route)]


def public_mount(path: str, app: Any, *, name: str | None = None) -> Mount:
    """A Mount (static files, /tuf) declared PUBLIC: mounted applications cannot take FastAPI
    dependencies, so they may only serve what anyone may read."""
    mount = Mount(path, app=app, name=name)
    mount.permission = require(PUBLIC)  # type: ignore[attr-defined]
    return mount


class UndeclaredPermission(Exception):
    """A route declares no permission, or more than one (the fleet refuses to serve it)."""


def route_name(route: BaseRoute | RouteContext) -> str:
    methods = ",".join(sorted(getattr(route, "methods", None) or ())) or "MOUNT"
    return f"{methods} {getattr(route, 'path', route)!s}"


def route_problems(routes: Iterable[BaseRoute]) -> list[str]:
    """One line per route that does not declare exactly one permission."""
    problems = []
    for route in routes_of(routes):
        declared = permissions_of(route)
        if len(declared) != 1:
            what = "no permission" if not declared else f"{len(declared)} permissions ({', '.join(declared)})"
            problems.append(f"{route_name(route)} declares {what}")
    return problems


def check_routes(routes: Iterable[BaseRoute]) -> None:
    """Raise UndeclaredPermission unless every route declares exactly one permission."""
    problems = route_problems(routes)
    if problems:
        raise UndeclaredPermission(
            "every route must declare exactly one permission with "
            "dependencies=[Depends(require(PERMISSION))] (fleet/auth/permissions.py): " + "; ".join(problems)
        )
