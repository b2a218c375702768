"""HTTP routes of the kiosk (Starlette): the shell page, screen fragments, actions, SSE, fonts.

The page keeps its session id in a JavaScript variable and sends it in ``X-Kiosk-Session``; no
cookie is ever set. Every response forbids caching and carries a CSP that allows this server
only, so nothing a resident does can make the page talk to anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiosk_ui.config import KioskSettings
from kiosk_ui.core import KioskCore
from kiosk_ui.fonts import FontCache
from kiosk_ui.i18n import normalise_lang
from kiosk_ui.sessions import Session, SessionGone
from kiosk_ui.speech import SpeechError
from kiosk_ui.views import SCREENS

SESSION_HEADER = "x-kiosk-session"
MAX_BODY = 32 * 1024
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; font-src 'self'; "
    "connect-src 'self'; media-src 'self'; object-src 'none'; frame-src 'none'; worker-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


class SecurityHeaders:
    """Pure ASGI middleware (works with streaming responses): CSP and no caching of anything dynamic."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith(("/static/", "/font/"))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"cache-control"]
                headers += SECURITY_HEADERS
                headers.append((b"cache-control", b"no-cache" if static else b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


@dataclass
class AppState:
    settings: KioskSettings
    core: KioskCore
    fonts: FontCache
    loop_beat: list[float] = field(default_factory=lambda: [0.0])
    on_startup: list[Callable[[asyncio.AbstractEventLoop], None]] = field(default_factory=list)


def _sid(request: Request) -> str | None:
    return request.headers.get(SESSION_HEADER)


async def _json(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > MAX_BODY:
        return {}
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _fragment(html: str, screen: str) -> HTMLResponse:
    return HTMLResponse(html, headers={"x-kiosk-screen": screen})


def _gone() -> JSONResponse:
    return JSONResponse({"error": "session ended"}, status_code=410)


Handler = Callable[[Request], Awaitable[Response]]


def _session_route(fn: Callable[[Request], Awaitable[Response]]) -> Handler:
    """Answer 410 when the page's session is unknown (ended, expired, app restarted)."""

    async def handler(request: Request) -> Response:
        try:
            return await fn(request)
        except SessionGone:
            return _gone()

    return handler


def build_routes(state: AppState) -> list[Route | Mount]:
    core, settings = state.core, state.settings
    timing = {
        "idle_s": settings.idle_s,
        "warn_s": settings.warn_s,
        "signage_s": settings.signage_s,
        "heartbeat_s": settings.heartbeat_s,
    }

    async def shell(request: Request) -> Response:
        lang = normalise_lang(request.query_params.get("lang"))
        screen = "signage" if request.query_params.get("screen") == "signage" else "home"
        fragment = core.render(Session(sid="", lang=lang), screen)  # the page opens its session next
        return HTMLResponse(core.renderer.shell(lang, fragment, timing))

    async def open_session(request: Request) -> Response:
        data = await _json(request)
        session = core.open_session(normalise_lang(data.get("lang")))
        return JSONResponse({"sid": session.sid})

    async def end_session(request: Request) -> Response:
        data = await _json(request)
        await run_in_threadpool(core.end_session, _sid(request), str(data.get("reason", "reset"))[:16])
        return JSONResponse({"ok": True})

    @_session_route
    async def touch(request: Request) -> Response:
        core.store.touch(_sid(request))
        return Response(status_code=204)

    async def heartbeat(request: Request) -> Response:
        data = await _json(request)
        w, h = data.get("w"), data.get("h")
        core.metrics.heartbeat(w if isinstance(w, int) else None, h if isinstance(h, int) else None)
        sid = data.get("sid")
        core.store.keep_idle_alive(sid if isinstance(sid, str) else None)
        return Response(status_code=204)

    @_session_route
    async def screen(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in SCREENS:
            return Response("unknown screen", status_code=404)
        lang = normalise_lang(request.query_params.get("lang"))
        params = {k: v[:200] for k, v in request.query_params.items() if k in ("q", "id")}
        try:
            html = await run_in_threadpool(core.show, _sid(request), name, lang, params)
        except KeyError:
            return Response("unknown item", status_code=404)
        return _fragment(html, name)

    @_session_route
    async def results(request: Request) -> Response:
        lang = normalise_lang(request.query_params.get("lang"))
        query = request.query_params.get("q", "")[:200]
        return HTMLResponse(await run_in_threadpool(core.results, _sid(request), query, lang))

    def action(fn: Callable[..., str], screen_name: str, *fields: str) -> Handler:
        @_session_route
        async def handler(request: Request) -> Response:
            data = await _json(request)
            args = [data.get(f) for f in fields]
            try:
                html = await run_in_threadpool(fn, _sid(request), *args)
            except KeyError:
                return Response("unknown item", status_code=404)
            return _fragment(html, screen_name)

        return handler

    async def lookup(request: Request) -> Response:
        data = await _json(request)
        code = data.get("code")
        try:
            html = await run_in_threadpool(core.lookup, _sid(request), code if isinstance(code, str) else "")
        except SessionGone:
            return _gone()
        return _fragment(html, "lookup")

    async def page_image(request: Request) -> Response:
        """A photographed page of the dossier being prepared (from the session's memory)."""
        try:
            index = int(request.path_params["index"])
            data = core.flow.page_jpeg(request.query_params.get("sid"), request.path_params["doc"], index)
        except (SessionGone, ValueError):
            return Response(status_code=404)
        if data is None:
            return Response(status_code=404)
        return Response(data, media_type="image/jpeg")

    async def speak(request: Request) -> Response:
        """Spoken guidance: the WAV of one ``guide.*`` text (never anything a resident gave)."""
        lang = normalise_lang(request.query_params.get("lang"))
        try:
            audio = await run_in_threadpool(core.voice.audio, request.path_params["key"], lang)
        except KeyError:
            return Response(status_code=404)
        except SpeechError:
            return Response(status_code=503)
        return Response(audio, media_type="audio/wav")

    async def events(request: Request) -> Response:
        sid = request.query_params.get("sid", "")
        if not core.store.alive(sid):
            return _gone()
        return StreamingResponse(
            core.bus.stream(sid), media_type="text/event-stream", headers={"x-accel-buffering": "no"}
        )

    async def dev_scan(request: Request) -> Response:
        scanner = core.devices.scanner
        feed = getattr(scanner, "feed", None)
        if not settings.simulate_peripherals or not callable(feed):
            return Response(status_code=404)
        data = await _json(request)
        await run_in_threadpool(feed, str(data.get("text", "")))
        return Response(status_code=204)

    async def healthz(request: Request) -> Response:
        metrics, _ = core.metrics.snapshot()
        return JSONResponse({"ok": True, "pid": os.getpid(), "sessions": len(core.store), **metrics})

    async def font_css(request: Request) -> Response:
        return Response(state.fonts.css(), media_type="text/css")

    async def font_file(request: Request) -> Response:
        data = await run_in_threadpool(state.fonts.get, request.path_params["name"])
        if data is None:
            return Response(status_code=404)
        return Response(data, media_type="font/woff")

    return [
        Route("/", shell),
        Route("/healthz", healthz),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Route("/screen/{name}", screen),
        Route("/part/results", results),
        Route("/api/session", open_session, methods=["POST"]),
        Route("/api/session/end", end_session, methods=["POST"]),
        Route("/api/session/touch", touch, methods=["POST"]),
        Route("/api/heartbeat", heartbeat, methods=["POST"]),
        Route("/api/events", events),
        Route("/api/lookup", lookup, methods=["POST"]),
        Route("/api/lookup/reset", action(core.lookup_reset, "lookup"), methods=["POST"]),
        Route("/api/print", action(core.print_receipt, "lookup"), methods=["POST"]),
        Route("/api/identity/consent", action(core.consent, "identity"), methods=["POST"]),
        Route("/api/identity/clear", action(core.clear_identity, "identity"), methods=["POST"]),
        Route("/api/rating", action(core.rate, "rating", "score", "reasons"), methods=["POST"]),
        Route("/api/submit/start", action(core.flow.start, "submit", "procedure"), methods=["POST"]),
        Route("/api/submit/card-consent", action(core.flow.card_consent, "submit"), methods=["POST"]),
        Route("/api/submit/skip-card", action(core.flow.skip_card, "submit"), methods=["POST"]),
        Route("/api/submit/form", action(core.flow.save_form, "submit", "values"), methods=["POST"]),
        Route("/api/submit/keep", action(core.flow.keep_form, "submit", "values"), methods=["POST"]),
        Route("/api/submit/back", action(core.flow.back, "submit", "step"), methods=["POST"]),
        Route(
            "/api/submit/capture",
            action(core.flow.capture, "submit", "document", "replace"),
            methods=["POST"],
        ),
        Route(
            "/api/submit/page",
            action(core.flow.page_op, "submit", "document", "index", "op"),
            methods=["POST"],
        ),
        Route("/api/submit/documents", action(core.flow.documents_done, "submit"), methods=["POST"]),
        Route("/api/submit/review", action(core.flow.review_done, "submit"), methods=["POST"]),
        Route("/api/submit/send", action(core.flow.send, "submit"), methods=["POST"]),
        Route("/api/submit/payment", action(core.flow.payment, "submit"), methods=["POST"]),
        Route("/api/submit/print", action(core.flow.print_receipt, "submit"), methods=["POST"]),
        Route("/part/page/{doc}/{index}", page_image),
        Route("/api/speak/{key}", speak),
        Route("/api/dev/scan", dev_scan, methods=["POST"]),
        Route("/font/fonts.css", font_css),
        Route("/font/{name}.woff", font_file),
        Mount("/static", StaticFiles(packages=[("kiosk_ui", "static")]), name="static"),
    ]


def create_app(state: AppState) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        state.core.bus.bind(loop)
        for hook in state.on_startup:
            hook(loop)
        try:
            yield
        finally:
            state.core.bus.close_all()

    app = Starlette(routes=build_routes(state), lifespan=lifespan)
    app.add_middleware(SecurityHeaders)
    return app
