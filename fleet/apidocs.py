"""``/api/docs``: the API documentation as a plain server-rendered page, from the OpenAPI document.

FastAPI's interactive docs load Swagger UI from a CDN; the fleet runs where there is no internet,
so this page lists every route (method, path, summary, parameters, body, answers, permission) and
every schema with nothing but HTML and the dashboard's stylesheet.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from fleet.auth.deps import require
from fleet.auth.permissions import DEVICES_READ

METHODS = ("get", "post", "put", "patch", "delete")


def schema_type(spec: dict[str, Any]) -> str:
    """A JSON schema in a few words: ``string``, ``array of DeviceOut``, ``integer or null``."""
    if "$ref" in spec:
        return str(spec["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in spec:
        return " or ".join(schema_type(s) for s in spec["anyOf"])
    if spec.get("type") == "array":
        return f"array of {schema_type(spec.get('items', {}))}"
    return str(spec.get("type", "any"))


def operations(doc: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The routes of ``doc`` grouped by tag (in the document's order)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for path, item in doc.get("paths", {}).items():
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            groups.setdefault((op.get("tags") or ["other"])[0], []).append(
                {
                    "id": op.get("operationId", f"{method}-{path}"),
                    "method": method.upper(),
                    "path": path,
                    "summary": op.get("summary", ""),
                    "description": op.get("description", ""),
                    "permission": op.get("x-permission", ""),
                    "params": [
                        {
                            "name": p["name"],
                            "where": p.get("in", ""),
                            "required": p.get("required", False),
                            "type": schema_type(p.get("schema", {})),
                            "description": p.get("description", "")
                            or p.get("schema", {}).get("description", ""),
                        }
                        for p in op.get("parameters", [])
                    ],
                    "body": schema_type(body) if body else "",
                    "responses": [
                        (code, _answer(spec)) for code, spec in sorted(op.get("responses", {}).items())
                    ],
                }
            )
    return list(groups.items())


def _answer(spec: dict[str, Any]) -> str:
    schema = spec.get("content", {}).get("application/json", {}).get("schema")
    words = str(spec.get("description", ""))
    return f"{words}: {schema_type(schema)}" if schema else words


def api_docs_router(app: FastAPI, templates: Jinja2Templates) -> APIRouter:
    templates.env.filters["schema_type"] = schema_type
    router = APIRouter(include_in_schema=False)

    @router.get("/api/docs", response_class=HTMLResponse, dependencies=[Depends(require(DEVICES_READ))])
    def docs(request: Request) -> Response:
        doc = app.openapi()
        schemas = sorted(doc.get("components", {}).get("schemas", {}).items())
        context = {"doc": doc, "groups": operations(doc), "schemas": schemas}
        return templates.TemplateResponse(request, "api_docs.html", context)

    return router
