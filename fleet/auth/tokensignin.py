"""The dashboard's sign-in with an API token, for a fleet without an identity provider.

A demo, a small site or a break-glass administrator signs in to the dashboard with an API token
(``cityedge fleet token create``) instead of OpenID Connect; ``fleet serve`` uses this when it
runs without ``--oidc-config``. The sessions, their cookie, CSRF, the redirect to ``/login`` and
sign-out are those of ``fleet.auth.session``.

- ``GET /login`` shows a form with one password field, "API token". Its script
  (``static/login.js``) takes a token from the address's fragment, ``/login#cet_...`` (see
  ``signin_link``): a fragment never reaches the server, its logs or a proxy's. The script puts it
  into the form, removes it from the address bar and the history, and submits the form.
- ``POST /login`` checks the token (known, not expired, not revoked) and opens a session for it:
  kind "session", the token's role and name, subject ``token:<name>``; then 303 to ``next`` (a
  path on this site only). A bad token gets the form again with status 401, and counts as a
  failed sign-in for ``fleet.auth.ratelimit``. The form carries a one-time value also kept in a
  SameSite=Strict cookie, so another site cannot sign a browser in with a token of its choosing.
- ``POST /logout`` (CSRF-checked) ends the session and goes back to ``/login``.

A session lives while its token does: revoking the token (or its expiry) ends the sessions opened
with it at their next request (within the token cache's few seconds). Sign-ins, failed ones and
sign-outs are ``session.login`` / ``session.logout`` entries on the audit trail.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from fleet.auth.deps import require
from fleet.auth.oidc import client_address
from fleet.auth.permissions import PUBLIC
from fleet.auth.principal import AuthError, Principal
from fleet.auth.session import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    Clock,
    Session,
    SessionStore,
    clear_cookie,
    cookie_name,
    install_sessions,
    local_path,
    record_signin,
    set_cookie,
    sign_in_context,
    sign_out,
)
from fleet.auth.tokens import TOKEN_PREFIX, TokenStore, hash_token

log = logging.getLogger(__name__)

LOGIN_PATH = "/login"
TOKEN_FIELD = "token"
NEXT_FIELD = "next"
NONCE_FIELD = "form_nonce"
MAX_LOGIN_FORM_BYTES = 8192
BAD_TOKEN = "That token is not valid (expired, revoked or mistyped)"
STALE_FORM = "This sign-in form has expired or was opened in another browser: enter the token again."
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}


def signin_link(base_url: str, token: str) -> str:
    """A link that signs a browser in with ``token``: ``BASE/login#TOKEN`` (the token is in the
    fragment, which the browser keeps to itself; the page's script submits it)."""
    return f"{base_url.rstrip('/')}{LOGIN_PATH}#{token}"


@dataclass
class TokenSignIn:
    """What the token sign-in routes share; ``install_token_signin`` keeps it on app.state."""

    tokens: TokenStore
    sessions: SessionStore
    secure_cookies: bool

    @property
    def cookie_name(self) -> str:
        return cookie_name(SESSION_COOKIE, self.secure_cookies)

    @property
    def form_cookie_name(self) -> str:
        return cookie_name(LOGIN_COOKIE, self.secure_cookies)

    def still_valid(self, session: Session) -> bool:
        """False once the token the session was opened with is revoked, expired or deleted."""
        if session.api_token_hash is None:
            return True
        try:
            self.tokens.principal_of_hash(session.api_token_hash)
        except AuthError as exc:
            log.info("session of %s ended: %s", session.principal.name, exc.reason)
            return False
        return True


class FormTooLarge(Exception):
    """The posted sign-in form is larger than ``MAX_LOGIN_FORM_BYTES``."""


async def read_form(request: Request, limit: int = MAX_LOGIN_FORM_BYTES) -> dict[str, str]:
    """The first value of each field of a url-encoded form ({} for any other body)."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise FormTooLarge
    try:
        fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True, max_num_fields=10)
    except ValueError:  # more fields than a sign-in form has
        return {}
    return {name: values[0] for name, values in fields.items()}


def _session_principal(token_principal: Principal) -> Principal:
    return Principal(
        subject=token_principal.subject, role=token_principal.role, kind="session", name=token_principal.name
    )


def token_signin_router(signin: TokenSignIn) -> APIRouter:
    from fleet.dashboard import TEMPLATE_DIR

    templates = Jinja2Templates(directory=str(TEMPLATE_DIR))
    router = APIRouter(include_in_schema=False)
    secure = signin.secure_cookies

    def form_page(
        request: Request, next_path: str, *, error: str | None = None, status: int = 200
    ) -> Response:
        """The sign-in form, with a new one-time value bound to this browser by a cookie."""
        nonce = secrets.token_urlsafe(32)
        context = {"next_path": next_path, "nonce": nonce, "error": error}
        headers = dict(PAGE_HEADERS)
        if status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        response = templates.TemplateResponse(
            request, "login.html", context, status_code=status, headers=headers
        )
        set_cookie(response, signin.form_cookie_name, nonce, secure=secure, max_age=None, same_site="strict")
        return response

    def refused(request: Request, next_path: str, status: int, reason: str, shown: str) -> Response:
        log.info("token sign-in failed from %s: %s", client_address(request), reason)
        try:
            record_signin(request, None, f"denied: {reason}", "session.login")
        except SQLAlchemyError:
            log.warning("could not write a failed sign-in on the audit trail (database unavailable)")
        return form_page(request, next_path, error=shown, status=status)

    def unavailable(request: Request, next_path: str, what: str) -> Response:
        log.warning("token sign-in unavailable: %s (database unavailable)", what)
        return form_page(
            request,
            next_path,
            error=f"Sign-in is unavailable: {what} (the fleet's database cannot be reached). Try again.",
            status=503,
        )

    def open_session(request: Request, token: str, next_path: str) -> Response:
        """Check the token and open its session (blocking: runs in the thread pool)."""
        try:
            if not token.startswith(TOKEN_PREFIX):
                raise AuthError(401, f"not an API token (they start with {TOKEN_PREFIX})")
            principal = _session_principal(signin.tokens.principal(token))
        except AuthError as exc:
            return refused(request, next_path, 401, exc.reason, BAD_TOKEN)
        except SQLAlchemyError:
            return unavailable(request, next_path, "the token cannot be checked")
        try:
            record_signin(request, principal, "allowed", "session.login")
        except SQLAlchemyError:
            return unavailable(request, next_path, "the audit trail cannot be written")
        previous = request.cookies.get(signin.cookie_name)
        if previous:  # a new sign-in in this browser replaces its old session
            signin.sessions.end(previous)
        session = signin.sessions.create(principal, api_token_hash=hash_token(token))
        log.info(
            "%s signed in as %s with an API token from %s",
            principal.name,
            principal.role,
            client_address(request),
        )
        response = RedirectResponse(next_path, status_code=303, headers={"Cache-Control": "no-store"})
        set_cookie(response, signin.cookie_name, session.id, secure=secure, max_age=None, same_site="strict")
        clear_cookie(response, signin.form_cookie_name, secure=secure, same_site="strict")
        return response

    @router.get(LOGIN_PATH, dependencies=[Depends(require(PUBLIC))])
    def login_page(
        request: Request, next_path: Annotated[str | None, Query(alias="next")] = None
    ) -> Response:
        return form_page(request, local_path(next_path))

    @router.post(LOGIN_PATH, dependencies=[Depends(require(PUBLIC))])
    async def login(request: Request) -> Response:
        try:
            form = await read_form(request)
        except FormTooLarge:
            return await run_in_threadpool(
                refused, request, "/", 400, "the sign-in form was too large", STALE_FORM
            )
        next_path = local_path(form.get(NEXT_FIELD))
        bound = request.cookies.get(signin.form_cookie_name, "")
        sent = form.get(NONCE_FIELD, "")
        if not bound or not hmac.compare_digest(bound.encode(), sent.encode()):
            reason = "the sign-in form was not opened in this browser, or has expired"
            return await run_in_threadpool(refused, request, next_path, 400, reason, STALE_FORM)
        token = form.get(TOKEN_FIELD, "").strip()
        return await run_in_threadpool(open_session, request, token, next_path)

    @router.post("/logout", dependencies=[Depends(require(PUBLIC))])
    def logout(request: Request) -> Response:
        return sign_out(request, signin.sessions, signin.cookie_name, secure=secure, signed_out=LOGIN_PATH)

    return router


def install_token_signin(
    app: FastAPI,
    *,
    idle_timeout_s: float = 900.0,
    lifetime_s: float = 8 * 3600.0,
    secure_cookies: bool,
    clock: Clock = time.monotonic,
) -> TokenSignIn:
    """Add the sign-in with an API token to the fleet application (built by ``create_app``).

    ``secure_cookies``: mark the cookies Secure (and name them ``__Host-...``); true whenever
    browsers reach the fleet over https. A session ends after ``idle_timeout_s`` without activity
    and ``lifetime_s`` after sign-in. The API tokens are those of ``app.state.auth.tokens``.
    """
    context = sign_in_context(app, "install_token_signin")
    if context.tokens is None:
        raise RuntimeError(
            "install_token_signin needs the API tokens (app.state.auth.tokens): use create_app"
        )
    signin = TokenSignIn(
        tokens=context.tokens,
        sessions=SessionStore(idle_timeout_s, lifetime_s, clock=clock),
        secure_cookies=secure_cookies,
    )
    install_sessions(app, signin.sessions, signin.cookie_name, still_valid=signin.still_valid)
    app.state.token_signin = signin
    app.include_router(token_signin_router(signin))
    if not secure_cookies:  # plain http: loopback, or --insecure (which warns at every start)
        log.info(
            "the dashboard's session cookie is not marked Secure (the fleet is not served over https): "
            "fine on loopback; serve the fleet with --tls-cert/--tls-key for real use"
        )
    return signin
