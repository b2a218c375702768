"""Dashboard sign-in with an API token (no identity provider), end to end over real HTTP.

The full fleet application (every router ``fleet serve`` mounts) with ``install_token_signin``,
served by uvicorn on a free port; an httpx client with a cookie jar plays the browser.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from access_helpers import full_app
from fastapi import FastAPI
from fleet_helpers import MakeDevice, serve_http, wait_for

from fleet.api import create_app
from fleet.auth import tokens, trail
from fleet.auth.deps import permissions_of, route_problems, routes_of
from fleet.auth.oidc import OidcConfig
from fleet.auth.permissions import PUBLIC
from fleet.auth.ratelimit import install_signin_limit
from fleet.auth.session import install_oidc
from fleet.auth.tokensignin import BAD_TOKEN, TokenSignIn, install_token_signin, signin_link
from fleet.service import FleetService
from protocol.timefmt import utc_now

HTML = {"Accept": "text/html,application/xhtml+xml"}
DEVICE = "kiosk-tokensignin-0001"


@pytest.fixture
def db_url(tmp_path: Path) -> str:  # sessions do not depend on the database: SQLite is enough
    return f"sqlite:///{tmp_path / 'fleet.db'}"


class FakeClock:
    """The sessions' clock, moved by the test instead of waiting."""

    def __init__(self) -> None:
        self.now = 50_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Site:
    url: str
    app: FastAPI
    signin: TokenSignIn
    fleet: FleetService
    clock: FakeClock

    def token(self, name: str, role: str, *, expires: timedelta | None = timedelta(hours=1)) -> str:
        token, _info = tokens.issue(self.fleet.store.writer, name=name, role=role, expires=expires)
        return token

    def trail(self) -> list[tuple[str, str, str, str]]:
        rows = trail.read(self.fleet.store.writer)
        return [(r["action"], r["subject"], r["kind"], r["outcome"]) for r in rows]


@contextlib.contextmanager
def running_site(fleet: FleetService, tmp_path: Path, *, secure_cookies: bool = False) -> Iterator[Site]:
    clock = FakeClock()
    app = full_app(
        fleet,
        tmp_path,
        signin=lambda app: install_token_signin(app, secure_cookies=secure_cookies, clock=clock),
    )
    install_signin_limit(app, 5, 300)
    with serve_http(app) as url:
        yield Site(url, app, app.state.token_signin, fleet, clock)


@pytest.fixture
def site(fleet: FleetService, tmp_path: Path) -> Iterator[Site]:
    with running_site(fleet, tmp_path) as running:
        yield running


@pytest.fixture
def browser() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


@pytest.fixture
def device(fleet: FleetService, make_device: MakeDevice) -> str:
    make_device(DEVICE, role="kiosk").connect()
    wait_for(lambda: fleet.store.device(DEVICE), what="device registered")
    return DEVICE


def field(page: httpx.Response, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page.text)
    assert found, f"the page has no field {name!r}"
    return found.group(1)


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text)
    assert found, "the page has no CSRF token"
    return found.group(1)


def post_login(browser: httpx.Client, site: Site, token: str, next_path: str = "/") -> httpx.Response:
    """Open the sign-in form as a browser does, fill in ``token`` and submit it (no redirects)."""
    form = browser.get(site.url + "/login", headers=HTML)
    assert form.status_code == 200
    data = {"token": token, "next": next_path, "form_nonce": field(form, "form_nonce")}
    return browser.post(site.url + "/login", data=data, headers=HTML)


def sign_in(browser: httpx.Client, site: Site, token: str, path: str = "/") -> httpx.Response:
    """Sign in with ``token`` and return the page ``path`` as the browser then shows it."""
    answer = post_login(browser, site, token, path)
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == path
    return browser.get(site.url + path, headers=HTML)


# -- signing in ---------------------------------------------------------------------------------------
def test_sign_in_with_a_token_opens_the_dashboard(site: Site, browser: httpx.Client, device: str) -> None:
    token = site.token("night-shift", "operator")
    # Not signed in: a page sends the browser to the form, which keeps the page asked for.
    asked = browser.get(site.url + "/", headers=HTML)
    assert asked.status_code == 303 and asked.headers["location"] == "/login?next=%2F"
    form = browser.get(site.url + asked.headers["location"], headers=HTML)
    assert form.status_code == 200 and form.headers["cache-control"] == "no-store"
    assert '<label for="token">API token</label>' in form.text
    assert 'type="password" id="token" name="token"' in form.text
    assert field(form, "next") == "/"
    assert '<script src="/static/login.js" defer></script>' in form.text and "<script>" not in form.text
    policy = form.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe" not in policy
    assert browser.get(site.url + "/static/login.js").status_code == 200

    answer = browser.post(
        site.url + "/login",
        data={"token": token, "next": "/", "form_nonce": field(form, "form_nonce")},
        headers=HTML,
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("cityedge_session="))
    attributes = [part.strip().lower() for part in cookie.split(";")]
    assert "httponly" in attributes and "samesite=strict" in attributes and "path=/" in attributes
    assert "secure" not in attributes  # plain-http loopback: a Secure cookie would never come back

    page = browser.get(site.url + "/", headers=HTML)
    assert page.status_code == 200
    assert f'data-device="{device}"' in page.text
    assert "night-shift · operator" in page.text and 'action="/logout"' in page.text
    assert browser.get(site.url + "/api/devices").json()[0]["id"] == device  # the API too
    (session,) = site.signin.sessions._sessions.values()
    assert session.principal.kind == "session" and session.principal.subject == "token:night-shift"
    assert ("session.login", "token:night-shift", "session", "allowed") in site.trail()


def test_the_sessions_role_applies(site: Site, browser: httpx.Client, device: str) -> None:
    viewer = sign_in(browser, site, site.token("wall-screen", "viewer"), f"/devices/{device}")
    assert "wall-screen · viewer" in viewer.text
    ping = f"{site.url}/devices/{device}/ping"
    refused = browser.post(ping, data={"csrf_token": csrf_of(viewer)})
    assert refused.status_code == 403 and "commands:send" in refused.text

    with httpx.Client(timeout=10) as second:
        operator = sign_in(second, site, site.token("duty-operator", "operator"), f"/devices/{device}")
        token = csrf_of(operator)
        assert second.post(ping, data={}).status_code == 403  # no CSRF token
        assert second.post(ping, data={"csrf_token": "x" + token}).status_code == 403
        sent = second.post(ping, data={"csrf_token": token})
        assert sent.status_code == 303 and sent.headers["location"].startswith(f"/devices/{device}?cmd=")
    outcomes = [(a[1], a[3]) for a in site.trail() if a[0] == "POST /devices/{device_id}/ping"]
    assert outcomes[0] == (
        "token:wall-screen",
        "denied: role 'viewer' does not have permission 'commands:send'",
    )
    assert outcomes[-1] == ("token:duty-operator", "allowed")


@pytest.mark.parametrize("case", ["unknown", "expired", "revoked", "not-a-token", "empty"])
def test_bad_tokens_get_the_form_again_and_no_session(site: Site, browser: httpx.Client, case: str) -> None:
    if case == "expired":
        token, _info = tokens.issue(
            site.fleet.store.writer,
            name="old",
            role="admin",
            expires=timedelta(hours=1),
            now=utc_now() - timedelta(hours=2),
        )
    elif case == "revoked":
        token = site.token("gone", "admin")
        tokens.revoke(site.fleet.store.writer, "gone")
    else:
        token = {"unknown": tokens.new_token(), "not-a-token": "password123", "empty": ""}[case]
    answer = post_login(browser, site, token, "/devices/x")
    assert answer.status_code == 401
    assert BAD_TOKEN in answer.text and '<form method="post" action="/login"' in answer.text
    assert field(answer, "next") == "/devices/x"  # the next try still goes where the person wanted
    if token:
        assert token not in answer.text
    assert site.signin.cookie_name not in browser.cookies and len(site.signin.sessions) == 0
    denied = [a for a in site.trail() if a[0] == "session.login"]
    assert len(denied) == 1 and denied[0][1] == "anonymous" and denied[0][3].startswith("denied: ")
    assert browser.get(site.url + "/", headers=HTML).status_code == 303  # still not signed in


def test_next_never_leaves_the_site(site: Site, browser: httpx.Client) -> None:
    token = site.token("ops", "viewer")
    for asked, landed in [
        ("//evil.example/x", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("/logout", "/"),
        ("/devices/kiosk-1?tab=ota", "/devices/kiosk-1?tab=ota"),
    ]:
        answer = post_login(browser, site, token, asked)
        assert answer.status_code == 303 and answer.headers["location"] == landed, asked
    form = browser.get(site.url + "/login", params={"next": "https://evil.example/"}, headers=HTML)
    assert field(form, "next") == "/"
    form = browser.get(site.url + "/login", params={"next": '/x"><script>alert(1)</script>'}, headers=HTML)
    assert field(form, "next") == "/x&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"  # escaped


def test_a_form_posted_from_elsewhere_signs_nobody_in(site: Site, browser: httpx.Client) -> None:
    """Another site cannot sign a browser in with a token of its choosing: the form's one-time
    value must match the SameSite=Strict cookie set when this browser opened the form."""
    token = site.token("planted", "admin")
    no_form = browser.post(site.url + "/login", data={"token": token, "next": "/"}, headers=HTML)
    assert no_form.status_code == 400 and "sign-in form has expired" in no_form.text
    form = browser.get(site.url + "/login", headers=HTML)
    with httpx.Client(timeout=10) as elsewhere:  # the value, without this browser's cookie
        data = {"token": token, "next": "/", "form_nonce": field(form, "form_nonce")}
        assert elsewhere.post(site.url + "/login", data=data).status_code == 400
        assert site.signin.cookie_name not in elsewhere.cookies
    assert site.signin.cookie_name not in browser.cookies and len(site.signin.sessions) == 0


def test_secure_cookies_over_https(fleet: FleetService, tmp_path: Path, browser: httpx.Client) -> None:
    """With ``secure_cookies`` (https): Secure, host-only ``__Host-`` cookies. httpx, like a
    browser, keeps Secure cookies away from plain http, so the test carries the form's cookie."""
    with running_site(fleet, tmp_path, secure_cookies=True) as secure_site:
        form = browser.get(secure_site.url + "/login", headers=HTML)
        form_cookie = form.headers["set-cookie"]
        assert form_cookie.lower().startswith("__host-cityedge_login=") and "; secure" in form_cookie.lower()
        data = {
            "token": secure_site.token("tls", "viewer"),
            "next": "/",
            "form_nonce": field(form, "form_nonce"),
        }
        answer = browser.post(
            secure_site.url + "/login", data=data, headers={"Cookie": form_cookie.split(";")[0]}
        )
    assert answer.status_code == 303, answer.text
    cookies = [c.lower() for c in answer.headers.get_list("set-cookie")]
    session = next(c for c in cookies if c.startswith("__host-cityedge_session="))
    assert "; secure" in session and "httponly" in session and "samesite=strict" in session


# -- the session's life ---------------------------------------------------------------------------------
def test_logout_needs_csrf_and_ends_the_session(site: Site, browser: httpx.Client) -> None:
    page = sign_in(browser, site, site.token("shift-lead", "operator"))
    old_session = browser.cookies[site.signin.cookie_name]
    assert browser.post(site.url + "/logout", data={}).status_code == 403
    assert browser.post(site.url + "/logout", data={"csrf_token": "forged"}).status_code == 403
    assert browser.get(site.url + "/", headers=HTML).status_code == 200  # still signed in
    out = browser.post(site.url + "/logout", data={"csrf_token": csrf_of(page)})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert site.signin.cookie_name not in browser.cookies
    browser.cookies.set(site.signin.cookie_name, old_session)  # someone kept the cookie: dead anyway
    answer = browser.get(site.url + "/", headers=HTML)
    assert answer.status_code == 303 and answer.headers["location"] == "/login?next=%2F"
    assert ("session.logout", "token:shift-lead", "session", "allowed") in site.trail()


def test_idle_timeout_and_lifetime(site: Site, browser: httpx.Client) -> None:
    sign_in(browser, site, site.token("idle", "viewer"))
    site.clock.advance(600)
    assert browser.get(site.url + "/", headers=HTML).status_code == 200  # activity restarts the timer
    refresh = {**HTML, "X-Fleet-Refresh": "1"}
    site.clock.advance(600)
    assert browser.get(site.url + "/ui/devices", headers=refresh).status_code == 200  # not activity
    site.clock.advance(301)  # 901 s since the last activity
    assert browser.get(site.url + "/ui/devices", headers=refresh).status_code == 401
    assert browser.get(site.url + "/", headers=HTML).status_code == 303

    with httpx.Client(timeout=10) as busy:
        sign_in(busy, site, site.token("busy", "viewer"))
        for _ in range(47):  # busy for 7 h 50 min
            site.clock.advance(600)
            assert busy.get(site.url + "/", headers=HTML).status_code == 200
        site.clock.advance(600)  # 8 h after sign-in
        assert busy.get(site.url + "/", headers=HTML).status_code == 303


def test_revoking_the_token_ends_its_sessions(site: Site, browser: httpx.Client) -> None:
    sign_in(browser, site, site.token("borrowed", "admin"))
    assert browser.get(site.url + "/api/audit").status_code == 200
    tokens.revoke(site.fleet.store.writer, "borrowed")
    site.signin.tokens.invalidate()  # what the token cache does by itself within DEFAULT_CACHE_S
    assert browser.get(site.url + "/api/audit").status_code == 401
    assert len(site.signin.sessions) == 0
    assert browser.get(site.url + "/", headers=HTML).status_code == 303


def test_a_new_sign_in_replaces_the_browsers_session(site: Site, browser: httpx.Client) -> None:
    sign_in(browser, site, site.token("first", "viewer"))
    first = browser.cookies[site.signin.cookie_name]
    page = sign_in(browser, site, site.token("second", "operator"))
    assert "second · operator" in page.text
    assert browser.cookies[site.signin.cookie_name] != first
    assert len(site.signin.sessions) == 1


# -- failed sign-ins and secrets ------------------------------------------------------------------------
def test_failed_sign_ins_are_rate_limited(site: Site, browser: httpx.Client) -> None:
    good = site.token("after-the-flood", "viewer")
    for _ in range(5):
        assert post_login(browser, site, tokens.new_token()).status_code == 401
    blocked = post_login(browser, site, good)
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
    assert site.signin.cookie_name not in browser.cookies
    # Showing the form is no sign-in attempt; nor is a page without credentials.
    assert browser.get(site.url + "/login", headers=HTML).status_code == 200
    assert browser.get(site.url + "/", headers=HTML).status_code == 303


def test_no_token_in_logs_or_trail(
    site: Site, browser: httpx.Client, device: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = site.token("logged", "operator")
    revoked = site.token("revoked", "operator")
    tokens.revoke(site.fleet.store.writer, "revoked")
    made_up = tokens.new_token()
    page = sign_in(browser, site, good, f"/devices/{device}")
    csrf = csrf_of(page)
    session_id = browser.cookies[site.signin.cookie_name]
    browser.post(f"{site.url}/devices/{device}/ping", data={})  # refused (no CSRF): logged
    assert post_login(browser, site, made_up).status_code == 401
    assert post_login(browser, site, revoked).status_code == 401
    browser.post(site.url + "/logout", data={"csrf_token": csrf})
    # What the fleet logs (the test's own httpx client logs the cookies it receives).
    fleet_records = [r for r in caplog.records if r.name.partition(".")[0] not in ("httpx", "httpcore")]
    text = "\n".join(r.getMessage() for r in fleet_records)
    assert "logged signed in as operator with an API token" in text
    assert "token sign-in failed" in text and "'revoked' was revoked" in text
    entries = str(trail.read(site.fleet.store.writer))
    for secret in (good, revoked, made_up, csrf, session_id):
        assert secret not in text
        assert secret not in entries


# -- wiring ---------------------------------------------------------------------------------------------
def test_every_route_declares_one_permission_and_the_signin_routes_are_public(site: Site) -> None:
    assert route_problems(site.app.routes) == []
    declared = {
        (route.path, method): permissions_of(route)
        for route in routes_of(site.app.routes)
        for method in getattr(route, "methods", None) or ()
    }
    for key in [("/login", "GET"), ("/login", "POST"), ("/logout", "POST")]:
        assert declared[key] == [PUBLIC], key
    assert not any(path in ("/auth/callback", "/signed-out") for path, _method in declared)


def test_oidc_and_token_sign_in_are_alternatives(fleet: FleetService) -> None:
    app = create_app(fleet)
    install_token_signin(app, secure_cookies=False)
    config = OidcConfig(
        issuer="http://127.0.0.1:9/realms/city",
        client_id="fleet",
        roles={"v": "viewer"},
        redirect_url="http://127.0.0.1:8080/auth/callback",
    )
    with pytest.raises(RuntimeError, match="sign-in already"):
        install_oidc(app, config)
    other = create_app(fleet)
    install_oidc(other, config)
    with pytest.raises(RuntimeError, match="sign-in already"):
        install_token_signin(other, secure_cookies=False)


def test_signin_link() -> None:
    assert signin_link("http://127.0.0.1:8080", "cet_abc") == "http://127.0.0.1:8080/login#cet_abc"
    assert signin_link("https://fleet.city.example/", "cet_abc") == "https://fleet.city.example/login#cet_abc"
