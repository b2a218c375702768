"""Dashboard sign-in end to end over real HTTP: the fleet, an OIDC issuer started by the test,
and an httpx client that follows redirects with a cookie jar as a browser does.

Authorization code with PKCE, role mapping, the session cookie, idle timeout and lifetime, logout
at the issuer, CSRF on every form, the failed-sign-in limit, and nothing secret in the logs.
"""

from __future__ import annotations

import contextlib
import html
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fleet_helpers import MakeDevice, wait_for
from hypothesis import given
from hypothesis import strategies as st
from oidc_issuer import AUDIENCE, CLIENT_ID, CLIENT_SECRET, LocalIssuer, running_issuer, serve_on

from fleet.api import create_app
from fleet.auth import trail
from fleet.auth.deps import permissions_of, routes_of
from fleet.auth.oidc import OidcConfig
from fleet.auth.permissions import PUBLIC
from fleet.auth.ratelimit import install_signin_limit
from fleet.auth.session import SignIn, install_oidc, local_path
from fleet.broker import free_port
from fleet.service import FleetService
from protocol.timefmt import utc_now

HTML = {"Accept": "text/html,application/xhtml+xml"}
DEVICE = "kiosk-signin-0001"


@pytest.fixture
def db_url(tmp_path: Path) -> str:  # sessions do not depend on the database: SQLite is enough
    return f"sqlite:///{tmp_path / 'fleet.db'}"


class FakeClock:
    """The sessions' clock, moved by the test instead of waiting."""

    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Site:
    url: str
    app: FastAPI
    issuer: LocalIssuer
    signin: SignIn
    fleet: FleetService
    clock: FakeClock


def make_config(issuer: LocalIssuer, base: str, **overrides: Any) -> OidcConfig:
    settings: dict[str, Any] = {
        "issuer": issuer.url,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "audience": AUDIENCE,
        "roles_claim": "realm_access.roles",
        "roles": {"fleet-operators": "operator", "fleet-viewers": "viewer"},
        "redirect_url": f"{base}/auth/callback",
    }
    settings.update(overrides)
    return OidcConfig.model_validate(settings)


@contextlib.contextmanager
def running_site(fleet: FleetService, clock: FakeClock, **overrides: Any) -> Iterator[Site]:
    with running_issuer() as issuer:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        issuer.redirect_uris.append(f"{base}/auth/callback")
        app = create_app(fleet)
        signin = install_oidc(app, make_config(issuer, base, **overrides), clock=clock)
        install_signin_limit(app, 5, 300)
        with serve_on(app, port) as url:
            yield Site(url, app, issuer, signin, fleet, clock)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def site(fleet: FleetService, clock: FakeClock) -> Iterator[Site]:
    with running_site(fleet, clock) as running:
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


def meta_refresh(page: httpx.Response) -> str:
    found = re.search(r'http-equiv="refresh" content="0;url=([^"]+)"', page.text)
    assert found, page.text
    return html.unescape(found.group(1))


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text)
    assert found, "the page has no CSRF token"
    return found.group(1)


def sign_in(browser: httpx.Client, site: Site, path: str = "/") -> httpx.Response:
    """Open ``path`` without a session and sign in; returns the page shown after sign-in."""
    landed = browser.get(site.url + path, headers=HTML, follow_redirects=True)
    assert landed.status_code == 200, landed.text
    assert "Signed in as" in landed.text
    return browser.get(site.url + meta_refresh(landed), headers=HTML)


def session_cookie(site: Site, browser: httpx.Client) -> str:
    value = browser.cookies.get(site.signin.cookie_name)
    assert value
    return value


def trail_actions(site: Site) -> list[tuple[str, str, str, str]]:
    rows = trail.read(site.fleet.store.writer)
    return [(r["action"], r["subject"], r["kind"], r["outcome"]) for r in rows]


# -- sign-in ------------------------------------------------------------------------------------------
def test_sign_in_end_to_end(site: Site, browser: httpx.Client, device: str) -> None:
    landed = browser.get(site.url + "/", headers=HTML, follow_redirects=True)
    hops = [str(r.url) for r in landed.history] + [str(landed.url)]
    # dashboard -> /login -> the issuer's authorize -> /auth/callback (a page: see session.py)
    assert hops[0] == site.url + "/"
    assert hops[1] == site.url + "/login?next=%2F"
    authorize = urlsplit(hops[2])
    assert f"{authorize.scheme}://{authorize.netloc}{authorize.path}" == site.issuer.url + "/authorize"
    asked = {k: v[0] for k, v in parse_qs(authorize.query).items()}
    assert asked["code_challenge_method"] == "S256" and asked["code_challenge"]
    assert asked["state"] and asked["nonce"] and asked["response_type"] == "code"
    assert asked["redirect_uri"] == site.url + "/auth/callback"
    assert hops[3].startswith(site.url + "/auth/callback?code=")
    assert landed.status_code == 200 and "Signed in as Lan Pham (operator)" in landed.text

    # The code was exchanged with the PKCE verifier and the client's credentials.
    (exchange,) = site.issuer.token_requests
    assert exchange["code_verifier"] and exchange["grant_type"] == "authorization_code"
    assert "client_secret" not in exchange  # sent as HTTP basic, not in the body

    cookie = landed.headers["set-cookie"].lower()
    assert cookie.startswith("cityedge_session=")
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert "secure" not in cookie  # plain-http loopback: a Secure cookie would never come back

    page = browser.get(site.url + meta_refresh(landed), headers=HTML)
    assert page.status_code == 200
    assert f'data-device="{device}"' in page.text
    assert "Lan Pham · operator" in page.text and 'action="/logout"' in page.text
    assert browser.get(site.url + "/api/devices").json()[0]["id"] == device  # the API too
    assert ("session.login", "u-1001", "session", "allowed") in trail_actions(site)


def test_sign_in_returns_to_the_page_asked_for(site: Site, browser: httpx.Client, device: str) -> None:
    page = sign_in(browser, site, f"/devices/{device}")
    assert page.url.path == f"/devices/{device}"
    assert "Send ping" in page.text


def test_api_clients_get_401_not_a_redirect(site: Site, browser: httpx.Client) -> None:
    answer = browser.get(site.url + "/api/devices")
    assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
    refresh = browser.get(site.url + "/ui/devices", headers={**HTML, "X-Fleet-Refresh": "1"})
    assert refresh.status_code == 401  # the page script reloads itself on this


def test_role_mapping_limits_what_a_viewer_may_do(site: Site, browser: httpx.Client, device: str) -> None:
    site.issuer.roles = ["fleet-viewers"]
    page = sign_in(browser, site, f"/devices/{device}")
    assert "Lan Pham · viewer" in page.text
    refused = browser.post(
        site.url + f"/devices/{device}/ping", data={"csrf_token": csrf_of(page)}, headers=HTML
    )
    assert refused.status_code == 403
    assert "commands:send" in refused.text


def test_person_without_fleet_role_gets_no_session(site: Site, browser: httpx.Client) -> None:
    site.issuer.roles = ["payroll-clerks"]
    landed = browser.get(site.url + "/", headers=HTML, follow_redirects=True)
    assert landed.status_code == 403
    assert "payroll-clerks" in landed.text and "fleet-operators" in landed.text
    assert site.signin.cookie_name not in browser.cookies
    assert len(site.signin.sessions) == 0
    assert any(a[0] == "session.login" and a[3].startswith("denied") for a in trail_actions(site))


def test_callback_is_one_use_and_bound_to_the_browser(site: Site, browser: httpx.Client) -> None:
    start = browser.get(site.url + "/login")
    authorize = browser.get(start.headers["location"])
    callback = authorize.headers["location"]
    # Finished in another browser (no login cookie): refused, as a forged sign-in link would be.
    with httpx.Client() as other:
        assert other.get(callback).status_code == 400
    assert browser.get(callback).status_code == 200
    assert browser.get(callback).status_code == 400  # replayed


def test_secure_cookies_when_configured(fleet: FleetService, clock: FakeClock, browser: httpx.Client) -> None:
    """With https (here forced by cookie_secure): Secure, host-only (__Host-) cookies.

    httpx, like a browser, keeps Secure cookies away from plain http, so the test carries the
    login cookie to the callback by hand.
    """
    with running_site(fleet, clock, cookie_secure=True) as secure_site:
        start = browser.get(secure_site.url + "/login")
        login_cookie = start.headers["set-cookie"]
        assert login_cookie.lower().startswith("__host-cityedge_login=")
        assert "; secure" in login_cookie.lower() and "samesite=lax" in login_cookie.lower()
        callback = browser.get(start.headers["location"]).headers["location"]
        landed = browser.get(callback, headers={"Cookie": login_cookie.split(";")[0]})
    assert landed.status_code == 200, landed.text
    cookies = landed.headers.get_list("set-cookie")
    session = next(c.lower() for c in cookies if c.lower().startswith("__host-cityedge_session="))
    assert "; secure" in session and "httponly" in session and "samesite=strict" in session


def test_login_when_issuer_is_down_is_503(
    fleet: FleetService, clock: FakeClock, browser: httpx.Client
) -> None:
    with running_site(fleet, clock) as down:
        with running_issuer() as gone:
            url = gone.url
        down.signin.provider.config.__dict__["issuer"] = url  # the configured issuer stops answering
        answer = browser.get(down.url + "/login")
    assert answer.status_code == 503
    assert "identity provider cannot be reached" in answer.text


# -- the session's life -----------------------------------------------------------------------------
def test_idle_timeout(site: Site, browser: httpx.Client) -> None:
    sign_in(browser, site)
    site.clock.advance(600)
    assert browser.get(site.url + "/", headers=HTML).status_code == 200  # activity: the timer restarts
    site.clock.advance(600)
    assert browser.get(site.url + "/", headers=HTML).status_code == 200
    # The page's own 2-second refreshes are not activity: they must not keep a session alive.
    site.clock.advance(600)
    refresh = {**HTML, "X-Fleet-Refresh": "1"}
    assert browser.get(site.url + "/ui/devices", headers=refresh).status_code == 200
    site.clock.advance(301)  # 901 s since the last activity: more than the 15-minute default
    assert browser.get(site.url + "/ui/devices", headers=refresh).status_code == 401
    answer = browser.get(site.url + "/", headers=HTML)
    assert answer.status_code == 303 and answer.headers["location"] == "/login?next=%2F"


def test_absolute_lifetime(site: Site, browser: httpx.Client) -> None:
    sign_in(browser, site)
    for _ in range(47):  # busy for 7 h 50 min
        site.clock.advance(600)
        assert browser.get(site.url + "/", headers=HTML).status_code == 200
    site.clock.advance(600)  # 8 h 0 min after sign-in
    assert browser.get(site.url + "/", headers=HTML).status_code == 303


def test_logout_ends_the_session_at_the_fleet_and_the_issuer(site: Site, browser: httpx.Client) -> None:
    page = sign_in(browser, site)
    old_session = session_cookie(site, browser)
    out = browser.post(site.url + "/logout", data={"csrf_token": csrf_of(page)})
    assert out.status_code == 303
    end_session = urlsplit(out.headers["location"])
    assert f"{end_session.scheme}://{end_session.netloc}{end_session.path}" == site.issuer.url + "/logout"
    params = {k: v[0] for k, v in parse_qs(end_session.query).items()}
    assert params == {
        "client_id": CLIENT_ID,
        "post_logout_redirect_uri": site.url + "/signed-out",
        "id_token_hint": site.issuer.issued[-1]["id_token"],
    }
    assert site.signin.cookie_name not in browser.cookies  # the cookie is cleared
    done = browser.get(out.headers["location"], follow_redirects=True)
    assert done.url == site.url + "/signed-out" and "signed out" in done.text
    assert site.issuer.logouts
    # The old session id is dead at the fleet, even if someone kept the cookie.
    browser.cookies.set(site.signin.cookie_name, old_session)
    assert browser.get(site.url + "/", headers=HTML).status_code == 303
    assert ("session.logout", "u-1001", "session", "allowed") in trail_actions(site)


def test_logout_without_csrf_is_refused(site: Site, browser: httpx.Client) -> None:
    sign_in(browser, site)
    assert browser.post(site.url + "/logout", data={}).status_code == 403
    assert browser.post(site.url + "/logout", data={"csrf_token": "forged"}).status_code == 403
    assert browser.get(site.url + "/", headers=HTML).status_code == 200  # still signed in


# -- CSRF ---------------------------------------------------------------------------------------------
def test_csrf_token_required_on_every_post(site: Site, browser: httpx.Client, device: str) -> None:
    page = sign_in(browser, site, f"/devices/{device}")
    token = csrf_of(page)
    assert f'name="csrf_token" value="{token}"' in page.text  # the ping form carries it
    ping = f"{site.url}/devices/{device}/ping"
    assert browser.post(ping, data={}).status_code == 403
    assert browser.post(ping, data={"csrf_token": "x" + token}).status_code == 403
    assert browser.post(ping, headers={"X-CSRF-Token": token[:-1]}).status_code == 403
    sent = browser.post(ping, data={"csrf_token": token})
    assert sent.status_code == 303 and sent.headers["location"].startswith(f"/devices/{device}?cmd=")
    assert browser.post(ping, headers={"X-CSRF-Token": token}).status_code == 303  # as fleet.js sends it
    api = f"{site.url}/api/devices/{device}/commands"
    assert browser.post(api, json={"name": "ping"}).status_code == 403
    assert browser.post(api, json={"name": "ping"}, headers={"X-CSRF-Token": token}).status_code == 201
    denied = [a for a in trail_actions(site) if a[3].startswith("denied")]
    assert len(denied) == 4 and all("CSRF" in a[3] for a in denied)
    # The token belongs to that session: a new sign-in gets a new one.
    with httpx.Client() as second:
        other = sign_in(second, site, f"/devices/{device}")
        assert csrf_of(other) != token
        assert second.post(ping, data={"csrf_token": token}).status_code == 403


def test_rollout_buttons_need_the_role_and_the_csrf_token(
    fleet: FleetService, clock: FakeClock, browser: httpx.Client, device: str
) -> None:
    from fleet.rollouts import store
    from fleet.rollouts.plan import Policy

    store.create_rollout(
        fleet.store.writer, "r-csrf", "9.9.9", "", Policy(soak_s=3600), {device: None}, utc_now()
    )
    roles = {"fleet-operators": "operator", "fleet-releases": "release-manager"}
    with running_site(fleet, clock, roles=roles) as site:
        page = sign_in(browser, site, "/rollouts/r-csrf")
        assert "Rollout <code>r-csrf</code>" in page.text and "action-abort" not in page.text  # operator
        site.issuer.roles = ["fleet-releases"]
        with httpx.Client(timeout=10) as manager:
            page = sign_in(manager, site, "/rollouts/r-csrf")
            token = csrf_of(page)
            assert f'name="csrf_token" value="{token}"' in page.text and "action-pause" in page.text
            pause = f"{site.url}/rollouts/r-csrf/pause"
            assert manager.post(pause, data={}).status_code == 403
            assert manager.post(pause, data={"csrf_token": "x" + token}).status_code == 403
            assert store.load(fleet.store.writer, "r-csrf").state == "running"
            sent = manager.post(pause, data={"csrf_token": token})
            assert sent.status_code == 303 and sent.headers["location"] == "/rollouts/r-csrf"
            assert store.load(fleet.store.writer, "r-csrf").state == "paused"
            again = manager.post(pause, data={"csrf_token": token}, headers=HTML)
            assert again.status_code == 409 and "is paused" in again.text
        actions = [a for a in trail_actions(site) if a[0] == "POST /rollouts/{rollout_id}/pause"]
        assert [a[3].startswith("denied") for a in actions] == [True, True, False, False]


# -- failed sign-ins -----------------------------------------------------------------------------------
def test_failed_callbacks_are_rate_limited(site: Site, browser: httpx.Client) -> None:
    for n in range(5):
        answer = browser.get(f"{site.url}/auth/callback", params={"state": f"made-up-{n}", "code": "x"})
        assert answer.status_code == 400
    blocked = browser.get(f"{site.url}/auth/callback", params={"state": "another", "code": "x"})
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) > 0
    # A page without credentials is not a sign-in attempt: still the usual redirect to /login.
    assert browser.get(site.url + "/", headers=HTML).status_code == 303


def test_no_secret_in_logs(
    site: Site, browser: httpx.Client, device: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    page = sign_in(browser, site, f"/devices/{device}")
    token = csrf_of(page)
    session_id = session_cookie(site, browser)
    browser.post(f"{site.url}/devices/{device}/ping", data={})  # refused: logged
    browser.get(f"{site.url}/auth/callback", params={"state": "made-up", "code": "guess"})  # refused: logged
    browser.post(site.url + "/logout", data={"csrf_token": token})
    issued = site.issuer.issued[-1]
    secrets = [CLIENT_SECRET, issued["access_token"], issued["id_token"], token]
    secrets += [r["code_verifier"] for r in site.issuer.token_requests]
    secrets.append(session_id)
    # What the fleet logs: every record but those of this test's own client (its request log shows
    # the URLs it follows, the issuer's redirect with the authorization code included).
    records = [r for r in caplog.records if r.thread != threading.get_ident()]
    text = "\n".join(r.getMessage() for r in records)
    assert "sign-in failed" in text and "CSRF token missing" in text and "signed in as operator" in text
    code = site.issuer.token_requests[0]["code"]
    for secret in [*secrets, code]:
        assert secret not in text


def test_signin_routes_declare_public(site: Site) -> None:
    declared = {route.path: permissions_of(route) for route in routes_of(site.app.routes)}
    for path in ("/login", "/auth/callback", "/logout", "/signed-out"):
        assert declared[path] == [PUBLIC], path
    assert all(len(permissions) == 1 for permissions in declared.values()), declared


@given(st.text(max_size=40))
def test_next_path_never_leaves_the_site(value: str) -> None:
    path = local_path(value)
    assert path.startswith("/") and not path.startswith("//") and "\\" not in path[:2]
    assert not urlsplit(path).netloc and not urlsplit(path).scheme


@pytest.mark.parametrize(
    "value",
    ["//evil.example/x", "/\\evil.example", "https://evil.example/", "/login?next=/x", "javascript:1"],
)
def test_next_path_rejects_other_sites_and_loops(value: str) -> None:
    assert local_path(value) == "/"
