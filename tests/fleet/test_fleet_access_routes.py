"""Every route of the fleet application declares exactly one permission, beside the route."""

from __future__ import annotations

from pathlib import Path

import pytest
from access_helpers import full_app
from fastapi import APIRouter, Depends, FastAPI
from fastapi.testclient import TestClient
from fleet_helpers import admin_headers

from fleet.api import create_app
from fleet.auth.deps import (
    UndeclaredPermission,
    permissions_of,
    require,
    requirements_of,
    route_name,
    route_problems,
    routes_of,
)
from fleet.auth.permissions import (
    ALL_DECLARABLE,
    AUDIT_READ,
    DEVICES_READ,
    EVIDENCE_READ,
    METRICS_READ,
    PERMISSIONS,
    PUBLIC,
    ROLES,
    allowed,
)
from fleet.service import FleetService


@pytest.fixture
def db_url(tmp_path: Path) -> str:  # routes do not depend on the database
    return f"sqlite:///{tmp_path / 'fleet.db'}"


@pytest.fixture
def app(fleet: FleetService, tmp_path: Path) -> FastAPI:
    return full_app(fleet, tmp_path)


def declared(app: FastAPI) -> dict[str, str]:
    return {route_name(r): permissions_of(r)[0] for r in routes_of(app.routes) if len(permissions_of(r)) == 1}


def test_every_route_declares_exactly_one_permission(app: FastAPI) -> None:
    routes = routes_of(app.routes)
    assert len(routes) >= 30  # API, dashboard, evidence, enrolment, /tuf, sign-in, docs, static
    assert route_problems(app.routes) == []
    for route in routes:
        assert permissions_of(route)[0] in ALL_DECLARABLE, route_name(route)


def test_the_permissions_the_issue_names(app: FastAPI) -> None:
    by_route = declared(app)
    assert by_route["GET /healthz"] == PUBLIC
    assert by_route["GET /metrics"] == METRICS_READ
    assert by_route["GET /openapi.json"] == DEVICES_READ
    assert by_route["GET /api/audit"] == AUDIT_READ
    assert by_route["POST /devices/{device_id}/ping"] == "commands:send"
    assert by_route["PUT /api/devices/{device_id}/release"] == "releases:manage"
    assert by_route["GET /api/evidence/{sha256}"] == EVIDENCE_READ
    for path in ("/api/enroll", "/api/renew", "/api/decommission"):
        assert by_route[f"POST {path}"] == PUBLIC
    assert by_route["GET /api/crl"] == PUBLIC
    assert by_route["GET,HEAD /tuf/metadata/{name}"] == PUBLIC
    assert by_route["MOUNT /static"] == PUBLIC
    # the interactive docs load scripts from a CDN: they are not served at all
    assert not any(name.endswith((" /docs", " /redoc")) for name in by_route)
    evidence = next(r for r in routes_of(app.routes) if r.path_format == "/api/evidence/{sha256}")
    assert requirements_of(evidence)[0].personal_data


def test_a_route_without_a_permission_or_with_two_is_refused(fleet: FleetService) -> None:
    bare = APIRouter()

    @bare.get("/api/forgotten")
    def forgotten() -> dict[str, str]:
        return {}

    with pytest.raises(UndeclaredPermission, match="GET /api/forgotten declares no permission"):
        create_app(fleet, extra_routers=[bare])
    twice = APIRouter(dependencies=[Depends(require(DEVICES_READ))])

    @twice.get("/api/doubled", dependencies=[Depends(require(PUBLIC))])
    def doubled() -> dict[str, str]:
        return {}

    with pytest.raises(UndeclaredPermission, match=r"GET /api/doubled declares 2 permissions"):
        create_app(fleet, extra_routers=[twice])
    with pytest.raises(ValueError, match="unknown permission 'devices:write'"):
        require("devices:write")


def test_openapi_names_each_operations_permission(app: FastAPI, fleet: FleetService) -> None:
    with TestClient(app, headers=admin_headers(fleet)) as client:
        doc = client.get("/openapi.json").json()
    operations = [(p, m, op) for p, item in doc["paths"].items() for m, op in item.items()]
    assert operations
    for path, method, op in operations:
        assert op.get("x-permission") in ALL_DECLARABLE, (method, path)
        assert op["security"] == ([] if op["x-permission"] == PUBLIC else [{"bearer": []}]), (method, path)
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_role_table_is_least_privilege() -> None:
    assert ROLES["admin"] == PERMISSIONS
    assert ROLES["viewer"] <= ROLES["operator"] <= ROLES["release-manager"]
    assert ROLES["auditor"] == {AUDIT_READ}
    assert not any(allowed(role, "evidence:upload") for role in ROLES)  # devices only
    assert allowed("device", "evidence:upload") and not allowed("device", DEVICES_READ)
    assert not allowed("nobody", DEVICES_READ) and allowed("nobody", PUBLIC)
    for role, permissions in ROLES.items():
        if role not in ("admin", "evidence-officer"):
            assert EVIDENCE_READ not in permissions, role


def test_the_documented_role_table_is_the_code() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "security-access.md").read_text()
    lines = [line for line in doc.splitlines() if line.startswith("| role |") or line.startswith("| `")]
    header = next(line for line in lines if line.startswith("| role |"))
    columns = [c.strip() for c in header.strip("|").split("|")][1:]
    assert set(columns) == PERMISSIONS
    documented = {}
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == len(columns) + 1 and cells[0].strip("`") in ROLES:
            documented[cells[0].strip("`")] = {p for p, mark in zip(columns, cells[1:], strict=True) if mark}
    assert documented == {role: set(permissions) for role, permissions in ROLES.items()}
