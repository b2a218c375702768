"""Role × operation matrix, generated from the OpenAPI document (and, for the dashboard, /tuf and
the other routes outside it, from the route declarations), against a served fleet on both databases.

Every operation × {no token, expired, revoked, unknown, garbage, sign-in JWTs with a wrong
signature, a wrong audience or expired, each role} must answer 401 (bad or missing credential,
with ``WWW-Authenticate: Bearer``), 403 (a role without the permission) or anything else but
401/403/5xx (allowed: 2xx, or a 4xx such as 404 for the unknown device used here). Each
mutating or personal-data request leaves exactly one trail entry, and the trail still verifies
afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from access_helpers import full_app
from fastapi import FastAPI
from fleet_helpers import bearer, make_token, serve_http
from oidc_issuer import LocalIssuer, new_key, running_issuer

from fleet.auth import trail
from fleet.auth.deps import MUTATING_METHODS, Requirement, requirements_of, routes_of
from fleet.auth.permissions import PUBLIC, ROLES, allowed
from fleet.auth.tokens import issue, revoke
from fleet.service import FleetService
from protocol.timefmt import utc_now

OIDC_CLIENT = "fleet"  # client_id (and so the access tokens' audience) of full_app's sign-in

PATH_VALUES = {
    "device_id": "nobody-0001",
    "command_id": "01NOSUCHCOMMAND0000000000",
    "event_id": "01NOSUCHEVENT000000000000",
    "alert_id": "999999",
    "sha256": "0" * 64,
    "name": "root.json",
    "path": "objects/" + "0" * 64,
    "rollout_id": "nosuchrollout",
}


QUERY = {"/ui/stream": "?max_s=0.5"}  # the live stream ends on its own (else it runs for minutes)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    permission: str
    personal_data: bool
    body: Any = None

    @property
    def recorded(self) -> bool:
        return self.permission != PUBLIC and (self.method in MUTATING_METHODS or self.personal_data)

    def url(self) -> str:
        path = self.path
        for name, value in PATH_VALUES.items():
            path = path.replace(f"{{{name}}}", value).replace(f"{{{name}:path}}", value)
        assert "{" not in path, f"no test value for a parameter of {self.path}"
        return path + QUERY.get(path, "")


@dataclass(frozen=True)
class Credential:
    label: str
    headers: dict[str, str]
    role: str | None = None  # None: must be refused with 401


def example(schema: dict[str, Any], doc: dict[str, Any]) -> Any:
    """A small value of ``schema`` (required properties only)."""
    if "$ref" in schema:
        return example(doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]], doc)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return example(schema[key][0], doc)
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {name: example(props[name], doc) for name in schema.get("required", [])}
    return {"string": "1.0.0", "integer": 1, "number": 1.0, "boolean": False, "array": []}.get(str(kind))


def operations(app: Any, doc: dict[str, Any]) -> list[Operation]:
    """The OpenAPI operations, then the routes the document leaves out (dashboard, /tuf, ...)."""
    registry: dict[tuple[str, str], Requirement] = {}
    for route in routes_of(app.routes):
        found = requirements_of(route)
        for method in getattr(route, "methods", None) or {"GET"}:
            path = str(route.path_format) if getattr(route, "methods", None) else f"{route.path}/fleet.css"
            registry[(method, path)] = found[0]
    ops = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            body_schema = (op.get("requestBody") or {}).get("content", {}).get("application/json", {})
            body = example(body_schema["schema"], doc) if body_schema else None
            requirement = registry.pop((method.upper(), path))
            assert op["x-permission"] == requirement.permission
            ops.append(
                Operation(method.upper(), path, requirement.permission, requirement.personal_data, body)
            )
    for (method, path), requirement in sorted(registry.items()):
        if method != "HEAD":
            ops.append(Operation(method, path, requirement.permission, requirement.personal_data))
    return ops


def credentials(fleet: FleetService, issuer: LocalIssuer) -> list[Credential]:
    engine = fleet.store.writer
    earlier = utc_now() - timedelta(hours=2)
    expired, _ = issue(engine, name="matrix-expired", role="admin", expires=timedelta(hours=1), now=earlier)
    revoked, _ = issue(engine, name="matrix-revoked", role="admin", expires=timedelta(hours=1))
    revoke(engine, "matrix-revoked")
    cases = [
        Credential("no credential", {}),
        Credential("expired token", bearer(expired)),
        Credential("revoked token", bearer(revoked)),
        Credential("unknown token", bearer("cet_" + "A" * 43)),
        Credential("garbage bearer", bearer("garbage")),
        Credential("basic auth", {"Authorization": "Basic YWRtaW46YWRtaW4="}),
    ]
    # Access tokens of the sign-in issuer (OIDC) that must be refused with 401.
    cases += [
        Credential("JWT, wrong signature", bearer(issuer.mint(audience=OIDC_CLIENT, key=new_key()))),
        Credential("JWT, wrong audience", bearer(issuer.mint(audience="another-service"))),
        Credential("JWT, expired", bearer(issuer.mint(audience=OIDC_CLIENT, expires_in=-3600))),
    ]
    cases += [Credential(f"role {role}", bearer(make_token(fleet, role)), role) for role in ROLES]
    return cases


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    with running_issuer() as running:
        yield running


@pytest.fixture
def served(
    fleet: FleetService, tmp_path: Path, issuer: LocalIssuer
) -> Iterator[tuple[str, dict[str, Any], FastAPI]]:
    app = full_app(fleet, tmp_path, issuer=issuer.url)
    with serve_http(app) as url:
        doc = httpx.get(f"{url}/openapi.json", headers=bearer(make_token(fleet, "viewer"))).json()
        yield url, doc, app


def expected(op: Operation, cred: Credential) -> str:
    if cred.role is None:
        return "401"
    return "served" if allowed(cred.role, op.permission) else "403"


def outcome(response: httpx.Response) -> str:
    if response.status_code == 401:
        assert response.headers.get("www-authenticate") == "Bearer", response.text
        return "401"
    if response.status_code == 403:
        return "403"
    assert response.status_code < 500, response.text
    return "served"


def last_seq(fleet: FleetService) -> int:
    entries = trail.read(fleet.store.reader)
    return int(entries[-1]["seq"]) if entries else 0


def test_role_operation_matrix(
    served: tuple[str, dict[str, Any], FastAPI], fleet: FleetService, issuer: LocalIssuer
) -> None:
    url, doc, app = served
    ops = operations(app, doc)
    assert len(ops) >= 25 and {op.method for op in ops} >= {"GET", "POST", "PUT", "DELETE"}
    creds = credentials(fleet, issuer)
    wrong: list[str] = []
    with httpx.Client(base_url=url, timeout=10, follow_redirects=False) as client:
        for op in ops:
            public_answers = set()
            for cred in creds:
                before = last_seq(fleet)
                response = client.request(op.method, op.url(), json=op.body, headers=cred.headers)
                if op.permission == PUBLIC:  # the credential makes no difference at all
                    public_answers.add(response.status_code)
                    continue
                got, want = outcome(response), expected(op, cred)
                if got != want:
                    wrong.append(
                        f"{op.method} {op.path} with {cred.label}: {response.status_code}, want {want}"
                    )
                entries = trail.read_after(fleet.store.reader, before)
                if not op.recorded:
                    assert entries == [], (op, cred.label)
                    continue
                assert len(entries) == 1, (op, cred.label, entries)
                entry = entries[0]
                assert entry["action"] == f"{op.method} {op.path}"
                assert entry["devices"] == (["nobody-0001"] if "{device_id}" in op.path else [])
                assert entry["source"] == "127.0.0.1"
                if want == "served":
                    assert entry["outcome"] == "allowed" and entry["role"] == cred.role
                    assert entry["subject"].startswith("token:test-")
                else:
                    assert entry["outcome"].startswith("denied: "), entry
            if op.permission == PUBLIC:
                assert len(public_answers) == 1, (op, public_answers)
    assert wrong == []
    assert trail.verify(fleet.store.reader) == []
