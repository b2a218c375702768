"""The dashboard's sign-in: OIDC authorization code with PKCE, server-side sessions, CSRF, logout.

- ``GET /login`` sends the browser to the issuer with ``state``, ``nonce`` and a PKCE S256
  challenge; the state is also bound to the browser in a short-lived cookie.
- ``GET /auth/callback`` checks the state, exchanges the code (with the PKCE verifier) at the token
  endpoint (httpx; authlib builds the authorize URL and the S256 challenge), verifies the
  ID token (signature, issuer, audience, expiry, nonce), maps the role and creates a session.
- ``POST /logout`` (CSRF-checked) ends the session and sends the browser to the issuer's
  ``end_session_endpoint`` when it has one, else to ``/signed-out``.

Sessions live in memory, keyed by a random id in a cookie that is HttpOnly, SameSite=Strict and
Secure when the fleet is reached over https (``OidcConfig.secure_cookies``). A session ends after
``idle_timeout_s`` without activity (the dashboard's automatic 2-second refreshes do not count as
activity) and after ``session_lifetime_s`` in any case. Every request of a session that can change
something (POST, PUT, PATCH, DELETE) must carry the session's CSRF token, in the ``csrf_token``
field of a form or in the ``X-CSRF-Token`` header; otherwise it is refused with 403.

A dashboard page requested without a session (or after it ended) is redirected to ``/login``;
API clients still get 401 JSON.

The sessions, their cookie, CSRF, the middlewares and sign-out are shared with the sign-in with an
API token (``fleet.auth.tokensignin``), which a fleet without an identity provider uses instead:
``install_sessions`` puts them into an application, one kind of sign-in at a time.
"""

from __future__ import annotations

import hmac
import html
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import parse_qs, quote_plus, urlencode, urlsplit

import httpx
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleet.auth.deps import AuthContext, auth_of, require
from fleet.auth.oidc import (
    BearerJwtAuthenticator,
    IssuerUnavailable,
    NoFleetRole,
    OidcConfig,
    OidcProvider,
    TokenRejected,
    client_address,
    principal_from_claims,
)
from fleet.auth.permissions import PUBLIC
from fleet.auth.principal import AuthError, Principal

log = logging.getLogger(__name__)

Clock = Callable[[], float]

CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
REFRESH_HEADER = "X-Fleet-Refresh"
"""Sent by the dashboard's automatic refreshes: they do not keep a session alive."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOGIN_TTL_S = 600.0
MAX_FORM_BYTES = 1 << 20


@dataclass
class Session:
    """One signed-in person in one browser."""

    id: str = field(repr=False)
    principal: Principal
    csrf_token: str = field(repr=False)
    created: float
    last_active: float
    id_token: str | None = field(default=None, repr=False)
    api_token_hash: str | None = field(default=None, repr=False)
    """For a sign-in with an API token: its sha256, checked again while the session lives."""


class SessionStore:
    """Sessions in memory, keyed by a random id; idle timeout and absolute lifetime.

    One process keeps its own sessions: run the dashboard on one fleet worker (or route a
    browser back to the same worker); a restart signs everybody out.
    """

    def __init__(
        self,
        idle_timeout_s: float,
        lifetime_s: float,
        *,
        clock: Clock = time.monotonic,
        max_sessions: int = 10_000,
    ) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.lifetime_s = lifetime_s
        self.clock = clock
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(
        self, principal: Principal, id_token: str | None = None, *, api_token_hash: str | None = None
    ) -> Session:
        now = self.clock()
        session = Session(
            id=secrets.token_urlsafe(32),
            principal=principal,
            csrf_token=secrets.token_urlsafe(32),
            created=now,
            last_active=now,
            id_token=id_token,
            api_token_hash=api_token_hash,
        )
        with self._lock:
            self._sessions[session.id] = session
            while len(self._sessions) > self.max_sessions:  # the least recently active goes first
                self._sessions.popitem(last=False)
        return session

    def _alive(self, session: Session, now: float) -> bool:
        return now - session.last_active < self.idle_timeout_s and now - session.created < self.lifetime_s

    def get(self, session_id: str, *, touch: bool = True) -> Session | None:
        """The live session with this id (None when unknown, idle too long or too old)."""
        now = self.clock()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if not self._alive(session, now):
                del self._sessions[session_id]
                return None
            if touch:
                session.last_active = now
                self._sessions.move_to_end(session_id)
            return session

    def end(self, session_id: str) -> Session | None:
        with self._lock:
            return self._sessions.pop(session_id, None)


@dataclass(frozen=True)
class PendingLogin:
    """What /login remembers until the browser comes back to /auth/callback."""

    state: str
    nonce: str
    code_verifier: str
    next_path: str
    created: float


class PendingLogins:
    """Sign-ins started and not yet finished (one use each, ``LOGIN_TTL_S`` to finish)."""

    def __init__(self, *, clock: Clock = time.monotonic, max_pending: int = 10_000) -> None:
        self.clock = clock
        self.max_pending = max_pending
        self._pending: OrderedDict[str, PendingLogin] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, next_path: str) -> PendingLogin:
        login = PendingLogin(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            code_verifier=secrets.token_urlsafe(48),
            next_path=next_path,
            created=self.clock(),
        )
        with self._lock:
            self._pending[login.state] = login
            while len(self._pending) > self.max_pending:
                self._pending.popitem(last=False)
        return login

    def finish(self, state: str) -> PendingLogin | None:
        with self._lock:
            login = self._pending.pop(state, None)
        if login is None or self.clock() - login.created > LOGIN_TTL_S:
            return None
        return login


def local_path(value: str | None) -> str:
    """``value`` when it is a path on this site (no scheme, no host), else "/" (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or any(c in value for c in "\r\n\t"):
        return "/"
    if parts.path.startswith(("/login", "/logout", "/auth/", "/signed-out")):
        return "/"
    return value


def form_token(request: Request) -> str | None:
    """The ``csrf_token`` field of the request's form, read by ``FormTokenMiddleware``."""
    token: str | None = request.scope.get("state", {}).get("csrf_form_token")
    return token


def csrf_ok(request: Request, session: Session) -> bool:
    sent = request.headers.get(CSRF_HEADER) or form_token(request) or ""
    return hmac.compare_digest(sent.encode(), session.csrf_token.encode())


class SessionAuthenticator:
    """The session cookie -> the signed-in person's Principal (kind "session").

    None without a cookie or with one whose session has ended; AuthError 403 for a request that
    could change something and lacks the session's CSRF token. ``still_valid`` (optional) is asked
    on every request whether the credential the session was opened with still holds; when it
    answers False the session ends there.
    """

    def __init__(
        self, store: SessionStore, cookie_name: str, *, still_valid: Callable[[Session], bool] | None = None
    ) -> None:
        self.store = store
        self.cookie_name = cookie_name
        self.still_valid = still_valid

    def __call__(self, request: Request) -> Principal | None:
        session_id = request.cookies.get(self.cookie_name)
        if not session_id:
            return None
        session = self.store.get(session_id, touch=False)
        if session is None:
            return None
        if self.still_valid is not None and not self.still_valid(session):
            self.store.end(session_id)
            return None
        if request.method not in SAFE_METHODS and not csrf_ok(request, session):
            log.info(
                "CSRF token missing or wrong on %s %s from %s",
                request.method,
                request.url.path,
                client_address(request),
            )
            raise AuthError(403, "the form's CSRF token is missing or wrong: reload the page and try again")
        if request.headers.get(REFRESH_HEADER) != "1" and request.query_params.get("background") != "1":
            self.store.get(session_id, touch=True)
        request.state.session = session
        return session.principal


def signed_in(request: Request) -> Session | None:
    """The session that authenticated this request (for templates: name, role, CSRF token)."""
    session: Session | None = getattr(request.state, "session", None)
    return session


def csrf_token(request: Request) -> str:
    """The CSRF token to put into a form of this page ("" when not signed in with a session)."""
    session = signed_in(request)
    return session.csrf_token if session is not None else ""


# -- cookies ------------------------------------------------------------------------------------------
SESSION_COOKIE = "cityedge_session"
LOGIN_COOKIE = "cityedge_login"


def cookie_name(base: str, secure: bool) -> str:
    """``base``, or with ``secure`` ``__Host-`` + base: the prefix makes a browser refuse the cookie
    unless it is Secure, host-only and ``Path=/``."""
    return f"__Host-{base}" if secure else base


def set_cookie(
    response: Response, name: str, value: str, *, secure: bool, max_age: int | None, same_site: str
) -> None:
    """An HttpOnly cookie for the whole site (Secure when ``secure``)."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        secure=secure,
        httponly=True,
        samesite=same_site,  # type: ignore[arg-type]
    )


def clear_cookie(response: Response, name: str, *, secure: bool, same_site: str = "lax") -> None:
    response.delete_cookie(name, path="/", secure=secure, httponly=True, samesite=same_site)  # type: ignore[arg-type]


# -- ASGI middlewares ----------------------------------------------------------------------------------
def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return ""


class FormTokenMiddleware:
    """Reads the ``csrf_token`` field of url-encoded forms posted with a cookie, for the CSRF check.

    The body is read here (at most 1 MiB) and handed on unchanged to the application.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] in SAFE_METHODS
            or not _header(scope, b"cookie")
            or not _header(scope, b"content-type").startswith("application/x-www-form-urlencoded")
        ):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_FORM_BYTES:
                await _plain(send, 413, "form too large")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        values = parse_qs(body.decode("latin-1"), max_num_fields=100).get(CSRF_FIELD)
        if values:
            scope.setdefault("state", {})["csrf_form_token"] = values[0]
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class LoginRedirectMiddleware:
    """A page a browser navigates to without a session: 303 to /login instead of 401 JSON.

    Only GET/HEAD requests that accept text/html and are not the dashboard's background refreshes
    (those get the 401, and the page script reloads itself to sign in again).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in ("GET", "HEAD")
            or "text/html" not in _header(scope, b"accept")
            or _header(scope, REFRESH_HEADER.lower().encode()) == "1"
        ):
            await self.app(scope, receive, send)
            return
        redirected = False

        async def watch(message: Message) -> None:
            nonlocal redirected
            if message["type"] == "http.response.start" and message["status"] == 401:
                redirected = True
                target = scope.get("path", "/")
                if scope.get("query_string"):
                    target += "?" + bytes(scope["query_string"]).decode("latin-1")
                location = "/login?" + urlencode({"next": local_path(target)})
                await send(
                    {
                        "type": "http.response.start",
                        "status": 303,
                        "headers": [(b"location", location.encode()), (b"content-length", b"0")],
                    }
                )
                await send({"type": "http.response.body", "body": b""})
                return
            if not redirected:
                await send(message)

        await self.app(scope, receive, watch)


async def _plain(send: Send, status: int, text: str) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# -- routes -------------------------------------------------------------------------------------------
@dataclass
class SignIn:
    """Everything the sign-in routes share; ``install_oidc`` builds it and keeps it on app.state."""

    config: OidcConfig
    provider: OidcProvider
    sessions: SessionStore
    pending: PendingLogins

    @property
    def cookie_name(self) -> str:
        return cookie_name(SESSION_COOKIE, self.config.secure_cookies)

    @property
    def login_cookie_name(self) -> str:
        return cookie_name(LOGIN_COOKIE, self.config.secure_cookies)

    def authorization_url(self, endpoint: str, pending: PendingLogin) -> str:
        """The issuer's authorize URL for ``pending``: code flow, state, nonce, PKCE S256."""
        from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
        from authlib.oauth2.rfc7636 import create_s256_code_challenge

        url: str = prepare_grant_uri(
            endpoint,
            self.config.client_id,
            "code",
            redirect_uri=self.config.redirect_url,
            scope=" ".join(self.config.scopes),
            state=pending.state,
            nonce=pending.nonce,
            code_challenge=create_s256_code_challenge(pending.code_verifier),
            code_challenge_method="S256",
        )
        return url

    def exchange_code(self, endpoint: str, code: str, pending: PendingLogin) -> dict[str, Any]:
        """The token response for ``code`` (raises CodeRefused, or httpx.HTTPError when unreachable)."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.config.redirect_url,
            "code_verifier": pending.code_verifier,
            "client_id": self.config.client_id,
        }
        secret = self.config.secret()
        auth: httpx.Auth | None = None
        if secret is not None and self.config.token_endpoint_auth_method == "client_secret_post":
            form["client_secret"] = secret
        elif secret is not None:  # RFC 6749 2.3.1: both parts form-encoded before Basic
            auth = httpx.BasicAuth(quote_plus(self.config.client_id), quote_plus(secret))
        with self.provider.http_client(auth=auth) as client:
            response = client.post(endpoint, data=form, headers={"Accept": "application/json"})
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise CodeRefused(f"the token endpoint answered HTTP {response.status_code} without JSON")
        if response.status_code != 200 or "error" in body:
            error = str(body.get("error", f"HTTP {response.status_code}"))[:64]
            raise CodeRefused(f"the identity provider did not accept the code ({error})")
        return body


class CodeRefused(Exception):
    """The issuer's token endpoint refused the authorization code (the message says why)."""


def message_page(
    title: str,
    message: str,
    *,
    status: int = 200,
    link: tuple[str, str] | None = None,
    refresh_to: str | None = None,
) -> HTMLResponse:
    refresh = (
        f'<meta http-equiv="refresh" content="0;url={html.escape(refresh_to, quote=True)}">'
        if refresh_to
        else ""
    )
    anchor = f'<p><a href="{html.escape(link[0], quote=True)}">{html.escape(link[1])}</a></p>' if link else ""
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)} · cityedge fleet</title>{refresh}"
        '<link rel="icon" href="data:,"><link rel="stylesheet" href="/static/fleet.css"></head>'
        f'<body><header class="top"><a class="brand" href="/">cityedge <span>fleet</span></a></header>'
        f'<main><section class="card signin"><h2>{html.escape(title)}</h2><p>{html.escape(message)}</p>'
        f"{anchor}</section></main></body></html>"
    )
    return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


def record_signin(request: Request, principal: Principal | None, outcome: str, action: str) -> None:
    """Sign-ins and sign-outs go on the audit trail like every other change."""
    auth_of(request).record(request, principal, outcome, action=action, devices=[])


def signin_router(signin: SignIn) -> APIRouter:
    router = APIRouter(include_in_schema=False, dependencies=[Depends(require(PUBLIC))])
    config = signin.config

    def set_cookie_here(
        response: Response, name: str, value: str, *, max_age: int | None, same_site: str
    ) -> None:
        set_cookie(response, name, value, secure=config.secure_cookies, max_age=max_age, same_site=same_site)

    def failed(request: Request, status: int, reason: str, *, principal: Principal | None = None) -> Response:
        log.info("sign-in failed from %s: %s", client_address(request), reason)
        try:
            record_signin(request, principal, f"denied: {reason}", "session.login")
        except SQLAlchemyError:
            log.warning("could not write a failed sign-in on the audit trail (database unavailable)")
        response = message_page("Sign-in failed", reason, status=status, link=("/login", "Sign in again"))
        response.delete_cookie(
            signin.login_cookie_name, path="/", secure=config.secure_cookies, httponly=True
        )
        return response

    @router.get("/login")
    def login(request: Request, next_path: Annotated[str | None, Query(alias="next")] = None) -> Response:
        try:
            metadata = signin.provider.metadata()
        except IssuerUnavailable as exc:
            log.warning("sign-in unavailable: %s", exc)
            return message_page(
                "Sign-in unavailable",
                "The identity provider cannot be reached; try again in a "
                "minute, or tell the fleet's administrator.",
                status=503,
                link=("/login", "Try again"),
            )
        pending = signin.pending.start(local_path(next_path))
        url = signin.authorization_url(metadata.authorization_endpoint, pending)
        response = RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})
        # Lax, not Strict: it must come back with the issuer's (cross-site) redirect to the callback.
        set_cookie_here(
            response, signin.login_cookie_name, pending.state, max_age=int(LOGIN_TTL_S), same_site="lax"
        )
        return response

    @router.get("/auth/callback")
    def callback(request: Request, state: str = "", code: str = "", error: str | None = None) -> Response:
        bound = request.cookies.get(signin.login_cookie_name, "")
        if not state or not hmac.compare_digest(bound.encode(), state.encode()):
            return failed(
                request,
                400,
                "this sign-in was not started in this browser, or it was already used: start again",
            )
        pending = signin.pending.finish(state)
        if pending is None:
            return failed(request, 400, "this sign-in link has expired or was already used: start again")
        if error is not None:
            return failed(request, 401, f"the identity provider refused the sign-in ({error[:64]})")
        if not code:
            return failed(request, 400, "the identity provider sent no authorization code")
        try:
            metadata = signin.provider.metadata()
            tokens = signin.exchange_code(metadata.token_endpoint, code, pending)
            id_token = tokens.get("id_token")
            if not isinstance(id_token, str):
                return failed(request, 401, "the identity provider sent no ID token (is 'openid' in scopes?)")
            claims = signin.provider.verify_id_token(id_token, pending.nonce)
            principal = principal_from_claims(config, claims, "session")
        except CodeRefused as exc:
            return failed(request, 401, str(exc))
        except TokenRejected as exc:
            return failed(request, 401, f"the ID token was refused: {exc.reason}")
        except NoFleetRole as exc:
            return failed(request, 403, str(exc))
        except (IssuerUnavailable, httpx.HTTPError) as exc:
            log.warning("sign-in could not finish: %s", exc)
            return message_page(
                "Sign-in unavailable",
                "The identity provider cannot be reached; try again.",
                status=503,
                link=("/login", "Try again"),
            )
        try:
            record_signin(request, principal, "allowed", "session.login")
        except SQLAlchemyError:
            return message_page(
                "Sign-in unavailable",
                "The audit trail cannot be written (database unavailable); try again.",
                status=503,
                link=("/login", "Try again"),
            )
        session = signin.sessions.create(principal, id_token)
        log.info("%s signed in as %s from %s", principal.name, principal.role, client_address(request))
        # A page, not a redirect: a SameSite=Strict cookie set during the issuer's cross-site
        # redirect chain would not be sent on a redirect that continues that chain.
        response = message_page(
            "Signed in",
            f"Signed in as {principal.name} ({principal.role}).",
            link=(pending.next_path, "Continue"),
            refresh_to=pending.next_path,
        )
        set_cookie_here(response, signin.cookie_name, session.id, max_age=None, same_site="strict")
        response.delete_cookie(
            signin.login_cookie_name, path="/", secure=config.secure_cookies, httponly=True
        )
        return response

    @router.post("/logout")
    def logout(request: Request) -> Response:
        return sign_out(
            request,
            signin.sessions,
            signin.cookie_name,
            secure=config.secure_cookies,
            signed_out="/signed-out",
            elsewhere=lambda session: _end_session_url(signin, session),
        )

    @router.get("/signed-out")
    def signed_out() -> Response:
        return message_page(
            "Signed out", "You are signed out of the fleet dashboard.", link=("/login", "Sign in again")
        )

    return router


def sign_out(
    request: Request,
    sessions: SessionStore,
    session_cookie: str,
    *,
    secure: bool,
    signed_out: str,
    elsewhere: Callable[[Session], str | None] = lambda session: None,
) -> Response:
    """``POST /logout``: end the browser's session (CSRF-checked), clear its cookie and send the
    browser to ``elsewhere(session)`` (e.g. the issuer's logout) or else to ``signed_out``."""
    session_id = request.cookies.get(session_cookie, "")
    session = sessions.get(session_id, touch=False) if session_id else None
    target = signed_out
    if session is not None:
        if not csrf_ok(request, session):
            log.info("logout without a valid CSRF token from %s", client_address(request))
            return message_page(
                "Not signed out",
                "The form's CSRF token is missing or wrong: reload the page and try again.",
                status=403,
                link=("/", "Back to the dashboard"),
            )
        sessions.end(session_id)
        try:
            record_signin(request, session.principal, "allowed", "session.logout")
        except SQLAlchemyError:
            log.warning("could not write a sign-out on the audit trail (database unavailable)")
        log.info("%s signed out", session.principal.name)
        target = elsewhere(session) or target
    response = RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})
    clear_cookie(response, session_cookie, secure=secure, same_site="strict")
    return response


def _end_session_url(signin: SignIn, session: Session) -> str | None:
    try:
        endpoint = signin.provider.metadata().end_session_endpoint
    except IssuerUnavailable:
        return None
    if endpoint is None:
        return None
    params = {"client_id": signin.config.client_id, "post_logout_redirect_uri": signin.config.signed_out_url}
    if session.id_token:
        params["id_token_hint"] = session.id_token
    return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)


def sign_in_context(app: FastAPI, what: str) -> AuthContext:
    """The app's AuthContext, for installing a sign-in (``what`` names the caller in errors).

    Raises RuntimeError without one, or when a sign-in is installed already: OIDC and the sign-in
    with an API token are alternatives (both own /login and /logout).
    """
    context = getattr(app.state, "auth", None)
    if not isinstance(context, AuthContext):
        raise RuntimeError(f"{what} needs app.state.auth (an AuthContext): build the app with create_app")
    if getattr(app.state, "sessions", None) is not None:
        raise RuntimeError(
            f"{what}: this application has a dashboard sign-in already (OIDC or API token; one at a time)"
        )
    return context


def install_sessions(
    app: FastAPI,
    sessions: SessionStore,
    session_cookie: str,
    *,
    still_valid: Callable[[Session], bool] | None = None,
) -> None:
    """Sessions for the dashboard: the session authenticator goes first in ``app.state.auth``,
    the CSRF form reader and the redirect of browsers to /login around the application."""
    context = sign_in_context(app, "install_sessions")
    context.add(SessionAuthenticator(sessions, session_cookie, still_valid=still_valid), first=True)
    app.state.sessions = sessions
    app.add_middleware(FormTokenMiddleware)
    app.add_middleware(LoginRedirectMiddleware)


def install_oidc(app: FastAPI, config: OidcConfig, *, clock: Clock = time.monotonic) -> SignIn:
    """Add OIDC sign-in to the fleet application: authenticators, routes and middlewares.

    The app's ``state.auth`` (an AuthContext) gets the session authenticator first and the
    bearer-JWT authenticator second, before the API-token one.
    """
    context = sign_in_context(app, "install_oidc")
    provider = OidcProvider(config)
    signin = SignIn(
        config=config,
        provider=provider,
        sessions=SessionStore(config.idle_timeout_s, config.session_lifetime_s, clock=clock),
        pending=PendingLogins(clock=clock),
    )
    context.add(BearerJwtAuthenticator(provider), first=True)
    install_sessions(app, signin.sessions, signin.cookie_name)
    app.state.signin = signin
    app.include_router(signin_router(signin))
    if not config.secure_cookies:
        log.warning(
            "the session cookie is not marked Secure (redirect_url %s is plain http): browsers keep it "
            "only for this loopback demo; serve the fleet over https for real use",
            config.redirect_url,
        )
    return signin
