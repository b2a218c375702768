"""Sign-in with an API token in a real Chromium: the link ``/login#cet_...`` lands on the device
list signed in, and the token is gone from the address bar and the history."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from access_helpers import full_app
from fleet_helpers import MakeDevice, serve_http, wait_for

from fleet.auth import tokens
from fleet.auth.ratelimit import install_signin_limit
from fleet.auth.tokensignin import install_token_signin, signin_link
from fleet.service import FleetService

CHROMIUM = "/usr/bin/chromium"
DEVICE = "cam-tokensignin-0001"
pytestmark = pytest.mark.browser


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'fleet.db'}"


@pytest.fixture
def site(fleet: FleetService, tmp_path: Path) -> Iterator[str]:
    app = full_app(fleet, tmp_path, signin=lambda app: install_token_signin(app, secure_cookies=False))
    install_signin_limit(app)
    with serve_http(app) as url:
        yield url


@pytest.fixture
def browser_page() -> Iterator[tuple[Any, Any, list[str], list[tuple[str, str]]]]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed: sudo apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            context = browser.new_context()
            tab = context.new_page()
            errors: list[str] = []  # script errors and CSP violations (reported on the console)
            requests: list[tuple[str, str]] = []
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            tab.on("request", lambda r: requests.append((r.url, r.post_data or "")))
            yield context, tab, errors, requests
        finally:
            browser.close()


def test_signin_link_lands_on_the_device_list(
    site: str,
    browser_page: tuple[Any, Any, list[str], list[tuple[str, str]]],
    fleet: FleetService,
    make_device: MakeDevice,
) -> None:
    context, tab, errors, requests = browser_page
    make_device(DEVICE).connect()
    wait_for(lambda: fleet.store.device(DEVICE), what="device registered")
    token, _info = tokens.issue(fleet.store.writer, name="demo-admin", role="admin", expires=None)

    tab.goto(signin_link(site, token))
    row = tab.locator(f'tr[data-device="{DEVICE}"]')
    row.wait_for(timeout=10_000)
    assert tab.url == site + "/"
    assert "demo-admin · admin" in tab.locator("header.top").inner_text()
    (cookie,) = [c for c in context.cookies() if c["name"] == "cityedge_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]
    # The token went to the fleet once, in the form's body, never in a URL.
    assert all(token not in url for url, _body in requests)
    assert [url for url, body in requests if token in body] == [site + "/login"]
    assert errors == []

    # Back: no page of the history holds the token (the form, sent while the sign-in page was
    # still loading, took that page's place in the history: Chromium goes back to about:blank).
    tab.go_back()
    assert token not in tab.url

    # Whatever the fragment, the page takes it out of the address bar; only a token is submitted.
    tab.goto(site + "/login#not-a-token")
    assert tab.url == site + "/login"
    assert tab.locator("#token").input_value() == "" and tab.locator(".error").count() == 0
    assert errors == []
