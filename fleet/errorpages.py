"""What a person sees on an error: a page (or a sentence) for browsers, JSON for API clients.

A request whose ``Accept`` prefers ``text/html`` (a browser following a link or posting a form)
gets a small page saying what went wrong in words, with the way back; every other client gets
FastAPI's JSON (``{"detail": ...}``) unchanged, so scripts and the CLI keep working.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

SENTENCES = {
    401: "You are not signed in, or your session has ended.",
    403: "Your role may not do this. Ask for a role that may (see the central team's guide).",
    404: "There is nothing at this address.",
    405: "This address does not accept that kind of request.",
    422: "Some of what was sent is not acceptable.",
}


def wants_html(request: Request) -> bool:
    """True for browsers: ``text/html`` accepted and preferred over JSON."""
    accept = request.headers.get("accept", "").lower()
    if "text/html" not in accept:
        return False
    json_at = accept.find("application/json")
    return json_at < 0 or accept.find("text/html") < json_at


def describe_validation(errors: Any) -> list[str]:
    """Pydantic's validation errors as sentences: ``body → ttl_s: Input should be greater than 0``."""
    out = []
    for error in errors:
        where = " → ".join(str(p) for p in error.get("loc", ()) if p != "body") or "the request"
        out.append(f"{where}: {error.get('msg', 'not acceptable')}")
    return out


def install_error_pages(app: FastAPI, templates: Jinja2Templates) -> None:
    def page(request: Request, status: int, detail: str, reasons: list[str], headers: Any = None) -> Response:
        context = {
            "status": status,
            "title": HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error",
            "sentence": SENTENCES.get(status, "The fleet could not do this."),
            "detail": detail,
            "reasons": reasons,
        }
        response = templates.TemplateResponse(request, "problem.html", context, status_code=status)
        for key, value in (headers or {}).items():
            response.headers[key] = value
        return response

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if not wants_html(request):
            return await http_exception_handler(request, exc)
        detail = exc.detail if isinstance(exc.detail, str) else ""
        return page(request, exc.status_code, detail, [], getattr(exc, "headers", None))

    async def on_invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        if not wants_html(request):
            return await request_validation_exception_handler(request, exc)
        return page(request, 422, "", describe_validation(exc.errors()))

    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_invalid)
