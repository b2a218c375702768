"""The dashboard's rollout pages in a real Chromium, over a real fleet (mosquitto, SQLite) whose
devices report their updates as ``ota.*`` events over MQTT: a rollout that halts by itself shows
its waves, outcomes, grouped failure reasons and halt reason; Abort from the page puts the previous
release back and is on the audit trail.

With ``CITYEDGE_SCREENSHOT_DIR`` set, the rollout screenshot of docs/users/central-team.md is
written there (``CITYEDGE_SCREENSHOT_DIR=docs/img pytest tests/fleet/test_fleet_rollouts_browser.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fleet_helpers import FakeDevice, MakeDevice, admin_headers, dashboard_tab, wait_for

from fleet.auth import trail
from fleet.service import FleetService

DEVICES = 14  # waves 50%,100%: 7 devices in the first
pytestmark = pytest.mark.browser


@pytest.fixture
def db_url(tmp_path: Path) -> str:  # the page only sees the API: one database is enough
    return f"sqlite:///{tmp_path / 'fleet.db'}"


@pytest.fixture
def served(fleet: FleetService) -> Iterator[tuple[Any, str, list[str]]]:
    with dashboard_tab(fleet, height=1000) as page:
        yield page


def shot(tab: Any, name: str) -> None:
    folder = os.environ.get("CITYEDGE_SCREENSHOT_DIR")
    if folder:
        tab.screenshot(path=str(Path(folder) / name), full_page=True)


def desired_version(fleet: FleetService, device: str) -> str | None:
    release = (fleet.desired.get(device) or {}).get("release") or {}
    version = release.get("version")
    return str(version) if version is not None else None


def report(device: FakeDevice, kind: str, **data: Any) -> None:
    device.event(kind, **{"from": "1.0.0", "to": "1.1.0", **data})


def test_halted_rollout_shows_waves_and_reason_and_aborts_from_the_page(
    served: tuple[Any, str, list[str]], fleet: FleetService, make_device: MakeDevice
) -> None:
    tab, url, errors = served
    names = [f"cam-hn-btl-{i:04d}" for i in range(DEVICES)]
    devices = {n: make_device(n, role="camera", version="1.0.0").connect() for n in names}
    wait_for(
        lambda: all((fleet.store.device(n) or {}).get("version") == "1.0.0" for n in names),
        timeout=30,
        what="devices known to the fleet",
    )
    body = {
        "release": "1.1.0",
        "select": "role=camera,id=cam-hn-btl-*",
        "waves": "50%,100%",
        "max_failure": "10%",
        "min_executed": 5,
        "soak": "1h",
        "deadline": "1h",
    }
    started = httpx.post(f"{url}/api/rollouts", json=body, headers=admin_headers(fleet), timeout=30)
    assert started.status_code == 201, started.text
    rid = started.json()["id"]

    def first_wave() -> list[str]:
        return sorted(n for n in names if desired_version(fleet, n) == "1.1.0")

    wait_for(lambda: len(first_wave()) == 7, timeout=30, what="first wave targeted")
    wave = first_wave()
    for name in wave[:3]:
        report(devices[name], "ota.committed")
    report(devices[wave[3]], "ota.downloading", bytes_done=1000, bytes_total=50_000_000)
    report(
        devices[wave[4]], "ota.waiting", reason="waiting for an install window (01:00-05:00 Asia/Ho_Chi_Minh)"
    )
    report(devices[wave[5]], "ota.rolled_back", reason="health check failed: camera pipeline did not start")
    report(devices[wave[6]], "ota.failed", reason="not enough disk space for the update", code="disk_full")

    # the list, then the page of the rollout; the rollout thread halts it (2 of 5 executed failed)
    tab.goto(url + "/rollouts")
    row = tab.locator(f'tr.rollout-row[data-rollout="{rid}"]')
    assert "1.1.0" in row.inner_text()
    row.locator("a").first.click()
    tab.wait_for_url(f"**/rollouts/{rid}")
    card = tab.locator("section.rollout")
    wait_for(lambda: card.get_attribute("data-state") == "halted", timeout=30, what="halted on the page")
    reason = tab.locator(".halt-reason").inner_text()
    assert "failure rate 40.0% (2 of 5 executed) above max 10.0%" in reason
    assert "health check failed: camera pipeline did not start" in reason
    assert wave[5] in reason and wave[6] in reason

    first, second = tab.locator("tr.wave-row").all()
    cells = first.locator("td").all_inner_texts()
    # wave, planned, targeted, pending, downloading, committed, rolled back, failed, waiting, offline
    assert cells[:10] == ["1", "7", "7", "0", "1", "3", "1", "1", "1", "0"], cells
    assert "not enough disk space for the update" in cells[10]
    assert "rolled back: health check failed" in cells[10]
    assert "waiting for an install window" in first.locator(".waiting-reason").inner_text()
    assert "not started" in second.inner_text()
    assert tab.locator("table.failed-devices tbody tr").count() == 2
    assert tab.locator("button.action-pause").count() == 0  # a halted rollout can only be aborted
    shot(tab, "rollout-halted.png")

    # Abort from the page (after the confirmation): the first wave gets 1.0.0 back
    tab.once("dialog", lambda dialog: dialog.accept())
    tab.locator("button.action-abort").click()
    wait_for(lambda: card.get_attribute("data-state") == "aborted", timeout=30, what="aborted on the page")
    assert "aborted by" in tab.locator(".halt-reason").inner_text()
    assert all(desired_version(fleet, n) == "1.0.0" for n in wave)
    assert all(desired_version(fleet, n) is None for n in names if n not in wave)
    assert tab.locator("button.action-abort").count() == 0
    actions = [e["action"] for e in trail.read(fleet.store.reader)]
    assert "POST /rollouts/{rollout_id}/abort" in actions
    assert errors == []
