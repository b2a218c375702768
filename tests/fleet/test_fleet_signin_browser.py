"""Sign-in in a real Chromium: through the test's OIDC issuer to the device list, a ping sent with
the form, the same form refused (403) once its CSRF token is taken out, and sign-out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet_helpers import MakeDevice, wait_for
from oidc_issuer import AUDIENCE, CLIENT_ID, CLIENT_SECRET, LocalIssuer, running_issuer, serve_on

from fleet.api import create_app
from fleet.auth.oidc import OidcConfig
from fleet.auth.ratelimit import install_signin_limit
from fleet.auth.session import install_oidc
from fleet.broker import free_port
from fleet.service import FleetService

CHROMIUM = "/usr/bin/chromium"
DEVICE = "cam-signin-0001"
pytestmark = pytest.mark.browser


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'fleet.db'}"


@pytest.fixture
def site(fleet: FleetService) -> Iterator[tuple[str, LocalIssuer]]:
    with running_issuer() as issuer:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        issuer.redirect_uris.append(f"{base}/auth/callback")
        config = OidcConfig.model_validate(
            {
                "issuer": issuer.url,
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "audience": AUDIENCE,
                "roles_claim": "realm_access.roles",
                "roles": {"fleet-operators": "operator"},
                "redirect_url": f"{base}/auth/callback",
            }
        )
        app = create_app(fleet)
        install_oidc(app, config)
        install_signin_limit(app)
        with serve_on(app, port) as url:
            yield url, issuer


@pytest.fixture
def browser_page() -> Iterator[tuple[Any, Any, list[str]]]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed: sudo apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            context = browser.new_context()
            tab = context.new_page()
            errors: list[str] = []
            tab.on("pageerror", lambda e: errors.append(str(e)))
            yield context, tab, errors
        finally:
            browser.close()


def test_sign_in_ping_csrf_and_sign_out(
    site: tuple[str, LocalIssuer],
    browser_page: tuple[Any, Any, list[str]],
    fleet: FleetService,
    make_device: MakeDevice,
) -> None:
    url, issuer = site
    context, tab, errors = browser_page
    make_device(DEVICE).connect()
    wait_for(lambda: fleet.store.device(DEVICE), what="device registered")

    # Not signed in: the dashboard sends the browser through the issuer and back.
    tab.goto(url + "/")
    row = tab.locator(f'tr[data-device="{DEVICE}"]')
    row.wait_for(timeout=10_000)
    assert tab.url == url + "/"
    assert "online" in row.inner_text()
    assert "Lan Pham · operator" in tab.locator("header.top").inner_text()
    (cookie,) = [c for c in context.cookies() if c["name"] == "cityedge_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert len(issuer.token_requests) == 1

    # Every form that posts carries the session's CSRF token.
    tab.click(f"text={DEVICE}")
    tab.locator("text=Send ping").wait_for()
    tokens = tab.evaluate(
        "Array.from(document.querySelectorAll('form[method=post]'))"
        ".map(f => (f.querySelector('input[name=csrf_token]') || {}).value || '')"
    )
    assert len(tokens) == 2 and all(tokens)  # the ping form and the sign-out form

    tab.click("text=Send ping")
    tab.locator(".badge.cmd-ok").first.wait_for(timeout=10_000)  # the result and the history row
    assert errors == []

    # The same form without its token (removed and submitted at once, before a refresh puts it back).
    with tab.expect_navigation() as navigation:
        tab.evaluate(
            "() => { const form = document.querySelector('form.actions');"
            " form.querySelector('input[name=csrf_token]').remove(); form.submit(); }"
        )
    response = navigation.value
    assert response is not None and response.status == 403
    assert "CSRF" in tab.content()

    # Sign out: the session ends here and at the issuer, and the browser lands on /signed-out.
    tab.goto(url + "/")
    tab.click("text=Sign out")
    tab.wait_for_url(url + "/signed-out")
    assert issuer.logouts and issuer.logouts[-1]["post_logout_redirect_uri"] == url + "/signed-out"
    assert not [c for c in context.cookies() if c["name"] == "cityedge_session"]
