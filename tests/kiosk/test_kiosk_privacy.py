"""Idle handling: warning, Continue, then a full reset that leaves no personal data anywhere:
DOM, localStorage, sessionStorage, cookies, the server's session store, files in the data dir."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Responder
from kiosk_helpers import (
    CCCD_ADDRESS,
    CCCD_ID,
    CCCD_NAME,
    CCCD_PAYLOAD,
    GOOD_CODE,
    MASKED_ID,
    PAGE_DUMP_JS,
    shoot,
    type_keys,
    wait_js,
)

from kiosk_ui.harness import PtyScanner

pytestmark = pytest.mark.browser

SECRETS = (CCCD_NAME, CCCD_ID, MASKED_ID, CCCD_ADDRESS, GOOD_CODE, "Minh Hằng", "12345")


def files_holding(directory: Path, secrets: tuple[str, ...]) -> list[str]:
    found = []
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_socket():
            data = path.read_bytes()
            found += [
                f"{path.name}: {s}" for s in secrets if s.encode() in data or s.encode("utf-16-le") in data
            ]
    return found


def test_idle_warning_continue_and_reset_leave_no_personal_data(
    kiosk_factory: Callable[..., Any],
    open_page: Callable[..., Any],
    agent_data: Path,
    responder: Responder,
    pty_scanner: PtyScanner,
) -> None:
    kiosk = kiosk_factory(
        agent_data, scanner=pty_scanner.path, simulate_peripherals=False, idle_s=3.0, warn_s=2.0
    )
    core = kiosk.kiosk.core
    page, recorder = open_page(kiosk.url + "/")
    # a resident identifies, looks a dossier up and rates the service
    page.click("#app .tile-identity")
    page.click("#app [data-post='/api/identity/consent']")
    page.wait_for_selector("#app .scan-prompt")
    pty_scanner.write(CCCD_PAYLOAD.encode() + b"\r\n")
    page.wait_for_selector("[data-field=masked-id]")
    page.click("#app .btn-home")
    page.click("#app .tile-lookup")
    type_keys(page, GOOD_CODE)
    page.click("#app [data-action=submit]")
    page.wait_for_selector("#app .dossier")
    assert CCCD_NAME in core.store.dump() and GOOD_CODE in core.store.dump()

    # idle: the warning comes, Continue keeps everything
    wait_js(page, "!document.getElementById('idle').hidden", timeout=6)
    shoot(page, "idle-warning")
    page.click("#idle [data-action=continue]")
    assert page.is_hidden("#idle")
    assert GOOD_CODE in page.inner_text("#app")
    # idle again, nobody answers: full reset to the announcements loop
    wait_js(page, "!document.getElementById('idle').hidden", timeout=6)
    page.wait_for_selector(".screen-signage", timeout=6000)
    wait_js(page, "document.documentElement.dataset.ready === 'yes'")
    shoot(page, "after-reset")

    dump = page.evaluate(PAGE_DUMP_JS)
    assert [s for s in SECRETS if s in dump] == []
    assert page.evaluate("document.cookie") == ""
    assert page.context.cookies() == []
    assert page.evaluate("localStorage.length + sessionStorage.length") == 0
    assert [s for s in SECRETS if s in core.store.dump()] == []
    assert len(core.store) == 1  # only the fresh session of the reloaded page, empty
    ended = wait_for_event(responder, "kiosk.session")
    assert [s for s in SECRETS if s in str(ended)] == []
    assert ended["data"]["ended"] == "idle" and "lookup" in ended["data"]["screens"]
    assert files_holding(agent_data, SECRETS) == []
    assert recorder.outside(kiosk.url) == []


def wait_for_event(responder: Responder, kind: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for got, payload in responder.events:
            if got == kind:
                return payload
        time.sleep(0.1)
    raise AssertionError(f"no {kind} event reached the city")


def test_a_page_that_died_does_not_keep_a_session(
    kiosk_factory: Callable[..., Any], open_page: Callable[..., Any], pty_scanner: PtyScanner
) -> None:
    kiosk = kiosk_factory(scanner=pty_scanner.path, idle_s=1.0, warn_s=1.0)
    core = kiosk.kiosk.core
    page, _ = open_page(kiosk.url + "/")
    page.click("#app .tile-identity")
    page.click("#app [data-post='/api/identity/consent']")
    page.wait_for_selector("#app .scan-prompt")
    pty_scanner.write(CCCD_PAYLOAD.encode() + b"\r\n")
    page.wait_for_selector("[data-field=masked-id]")
    page.close()  # the browser crashed: no reset from the page
    deadline = time.monotonic() + 12
    while CCCD_NAME in core.store.dump() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert CCCD_NAME not in core.store.dump() and len(core.store) == 0


def test_the_announcements_loop_stays_ready_for_the_next_resident(
    kiosk_factory: Callable[..., Any], open_page: Callable[..., Any]
) -> None:
    kiosk = kiosk_factory(idle_s=1.0, warn_s=1.0)  # sessions untouched for 7 s expire
    page, _ = open_page(kiosk.url + "/?screen=signage")
    started = page.evaluate("performance.timeOrigin")
    time.sleep(8.5)  # longer than the session lifetime: the page's heartbeats keep its unused session
    page.click("#app .slides")
    page.wait_for_selector(".screen-home")
    assert page.evaluate("performance.timeOrigin") == started  # no reload: the first touch counts
