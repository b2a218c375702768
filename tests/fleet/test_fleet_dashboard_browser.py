"""The dashboard in a real Chromium: live refresh without reloading, the ping button, no CDN."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet_helpers import MakeDevice, admin_headers, serve_http, wait_for

from fleet.api import create_app
from fleet.service import FleetService

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.browser


@pytest.fixture
def db_url(tmp_path: Path) -> str:  # the page only sees the API: one database is enough
    return f"sqlite:///{tmp_path / 'fleet.db'}"


@pytest.fixture
def page(fleet: FleetService) -> Iterator[tuple[Any, str, list[str], list[str]]]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed: sudo apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with serve_http(create_app(fleet)) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            # Signed in with an admin API token (the sign-in flow itself is tested with the OIDC issuer).
            tab = browser.new_page(extra_http_headers=admin_headers(fleet))
            requests: list[str] = []
            errors: list[str] = []
            tab.on("request", lambda r: requests.append(r.url))
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: errors.append(str(e)))
            yield tab, url, requests, errors
        finally:
            browser.close()


def test_dashboard_refreshes_live_and_pings(
    page: tuple[Any, str, list[str], list[str]], fleet: FleetService, make_device: MakeDevice
) -> None:
    tab, url, requests, errors = page
    first = make_device("kiosk-ui-0001", role="kiosk").connect()
    wait_for(lambda: fleet.store.device(first.id), what="first device")
    tab.goto(url + "/")
    row = tab.locator('tr[data-device="kiosk-ui-0001"]')
    assert "online" in row.inner_text()
    second = make_device("cam-ui-0002").connect()
    second.telemetry(cpu_pct=42.0, temp_c=61.0)
    first.crash()
    # No reload: the table is re-fetched every 2 s.
    tab.locator('tr[data-device="cam-ui-0002"]').wait_for(timeout=8000)
    wait_for(lambda: "offline" in row.inner_text(), timeout=8, what="offline badge")
    wait_for(
        lambda: "42%" in tab.locator('tr[data-device="cam-ui-0002"]').inner_text(), timeout=8, what="cpu"
    )
    tab.click("text=cam-ui-0002")
    tab.click("text=Send ping")
    tab.locator(".command .badge.cmd-ok").wait_for(timeout=8000)
    tab.locator("tr.command-row .badge.cmd-ok").wait_for(timeout=8000)  # and in the command history
    assert errors == []
    assert all(u.startswith(url + "/") for u in requests), [u for u in requests if not u.startswith(url)]
