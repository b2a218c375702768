"""schemathesis over the fleet's OpenAPI document with an operator token, against the real app
served over HTTP (a real fleet service, broker and SQLite store): no 5xx, and no response that breaks
the schema the document promises."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from access_helpers import full_app
from fleet_helpers import bearer, make_token, serve_http
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from fleet.service import FleetService


def test_no_5xx_and_every_response_matches_the_document(fleet: FleetService, tmp_path: Path) -> None:
    app = full_app(fleet, tmp_path)
    headers = bearer(make_token(fleet, "operator"))
    with serve_http(app) as base:
        document = httpx.get(f"{base}/openapi.json", headers=headers, timeout=10).json()
        schema = schemathesis.openapi.from_dict(document)
        schema.config.base_url = base
        failures: list[str] = []
        calls: dict[str, int] = {}
        for result in schema.get_all_operations():
            operation = result.ok()  # type: ignore[union-attr]  # an invalid operation raises here

            @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            @given(case=operation.as_strategy())
            def check(case: schemathesis.Case[Any]) -> None:
                response = case.call(base_url=base, headers=headers, timeout=10)
                key = f"{case.method} {case.path}"
                calls[key] = calls.get(key, 0) + 1
                try:
                    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
                except AssertionError as exc:  # schemathesis' failures are AssertionError subclasses
                    failures.append(f"{case.method} {case.formatted_path}: {str(exc)[:300]}")

            check()
    assert failures == [], "\n".join(failures[:20])
    assert len(calls) == len(document_operations(document)) and min(calls.values()) >= 1, calls


def document_operations(document: dict[str, object]) -> list[str]:
    paths = document["paths"]
    assert isinstance(paths, dict)
    return [f"{method.upper()} {path}" for path, item in paths.items() for method in item]


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
