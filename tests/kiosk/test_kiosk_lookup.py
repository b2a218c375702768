"""Dossier lookup through the real agent and broker (a paho responder plays the city gateway),
printing, ratings through the outbox, kiosk telemetry and content pushed in the desired config."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import DEVICE_ID, Responder
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kiosk_helpers import GOOD_CODE, MISSING_CODE, a11y_problems, shoot, type_keys, wait_js

from fleet.broker import MosquittoBroker
from hw.printer import PaperState
from kiosk_ui.content import load_shipped
from kiosk_ui.contentsign import sign_content
from kiosk_ui.harness import PtyScanner
from protocol.trust import encode_public_key

pytestmark = pytest.mark.browser

MESSAGE = "document.querySelector('#app .message')?.textContent"


def submit_code(page: Any, code: str) -> None:
    page.click("#app [data-key=CLEAR]")
    type_keys(page, code)
    assert page.inner_text("#code") == code
    page.click("#app [data-action=submit]")


def test_lookup_found_print_not_found_and_upstream_down(
    kiosk_factory: Callable[..., Any], open_page: Callable[..., Any], agent_data: Path, responder: Responder
) -> None:
    kiosk = kiosk_factory(agent_data, simulate_peripherals=True)
    printer = kiosk.kiosk.core.devices.printer
    page, recorder = open_page(kiosk.url + "/")
    page.click("#app .tile-lookup")
    page.wait_for_selector(".screen-lookup")
    submit_code(page, GOOD_CODE)
    page.wait_for_selector("#app .dossier", timeout=5000)
    text = page.inner_text("#app")
    assert GOOD_CODE in text and "Đang xử lý" in text and "Kiểm tra thực địa" in text
    assert page.locator("#app .timeline .step").count() == 4
    shoot(page, "lookup-found-vi")
    assert a11y_problems(page) == []
    page.click("#app [data-action=lang]")
    wait_js(page, "document.documentElement.lang === 'en' && !!document.querySelector('#app .dossier')")
    assert "In progress" in page.inner_text("#app .status")
    shoot(page, "lookup-found-en")

    page.click("#app [data-post='/api/print']")
    assert "Printed" in wait_js(page, MESSAGE)
    assert len(printer.jobs) == 1
    printer.set_paper(PaperState.OUT)
    page.click("#app [data-post='/api/print']")
    assert "out of paper" in wait_js(page, f"{MESSAGE}?.includes('paper') && {MESSAGE}")
    shoot(page, "print-paper-out-en")
    printer.set_paper(PaperState.OK)
    printer.set_online(False)
    page.click("#app [data-post='/api/print']")
    assert "not working" in wait_js(page, f"{MESSAGE}?.includes('working') && {MESSAGE}")

    page.click("#app [data-action=lang]")
    wait_js(page, "document.documentElement.lang === 'vi'")
    page.click("#app [data-post='/api/lookup/reset']")
    page.wait_for_selector("#app #code")
    submit_code(page, MISSING_CODE)
    assert "Không tìm thấy hồ sơ" in wait_js(page, MESSAGE, timeout=5)
    shoot(page, "lookup-not-found-vi")

    submit_code(page, "123.45")
    assert "Mã hồ sơ chưa đúng" in wait_js(page, f"{MESSAGE}?.includes('chưa đúng') && {MESSAGE}")

    responder.silent = True  # the city's system stops answering
    page.click("#app [data-key=CLEAR]")
    type_keys(page, GOOD_CODE)
    started = time.monotonic()
    page.click("#app [data-action=submit]")
    message = wait_js(page, f"{MESSAGE}?.includes('gián đoạn') && {MESSAGE}", timeout=6)
    assert time.monotonic() - started < 5.0
    assert "thử lại" in message
    shoot(page, "lookup-unavailable-vi")
    page.click("#app .btn-home")  # still usable
    page.wait_for_selector(".screen-home")
    assert recorder.outside(kiosk.url) == []


def test_lookup_when_the_agent_is_not_running(
    kiosk_factory: Callable[..., Any], open_page: Callable[..., Any]
) -> None:
    kiosk = kiosk_factory()  # no agent listens in this data dir
    page, _ = open_page(kiosk.url + "/")
    page.click("#app .tile-lookup")
    type_keys(page, GOOD_CODE)
    started = time.monotonic()
    page.click("#app [data-action=submit]")
    assert "tạm gián đoạn" in wait_js(page, MESSAGE, timeout=6)
    assert time.monotonic() - started < 5.0


def test_scanning_a_receipt_qr_looks_the_dossier_up(
    kiosk_factory: Callable[..., Any],
    open_page: Callable[..., Any],
    agent_data: Path,
    responder: Responder,
    pty_scanner: PtyScanner,
) -> None:
    kiosk = kiosk_factory(agent_data, scanner=pty_scanner.path)
    page, _ = open_page(kiosk.url + "/")
    # from the home screen: a receipt QR (URL form) opens the lookup with the code filled in
    pty_scanner.write(f"https://dichvucong.hanoi.gov.vn/tra-cuu?code={GOOD_CODE}\r\n".encode())
    page.wait_for_selector("#app .dossier", timeout=5000)
    assert GOOD_CODE in page.inner_text("#app .dossier-code")
    # on the lookup screen: a bad code gives a clear message
    page.click("#app [data-post='/api/lookup/reset']")
    page.wait_for_selector("#app #code")
    pty_scanner.write(b"000.00.01.H26-999999-0012\r\n")
    message = wait_js(page, MESSAGE)
    assert "Mã hồ sơ chưa đúng" in message
    assert message.count("Mã hồ sơ") == 1 and "YYMMDD" not in message, message


def test_rating_is_queued_through_the_outbox_even_offline(
    kiosk_factory: Callable[..., Any],
    open_page: Callable[..., Any],
    agent_data: Path,
    responder: Responder,
    broker: MosquittoBroker,
) -> None:
    kiosk = kiosk_factory(agent_data, simulate_peripherals=True)
    page, _ = open_page(kiosk.url + "/")
    page.click("#app .tile-rating")
    page.wait_for_selector(".screen-rating")
    page.click("#app [data-action=rate]")  # nothing chosen yet
    assert "chọn" in wait_js(page, MESSAGE)
    broker.stop()  # the city is unreachable: the agent keeps the event in its outbox
    page.click("#app [data-score='4']")
    page.click("#app [data-reason=fast]")
    page.click("#app [data-reason=clear]")
    shoot(page, "rating-chosen-vi")
    page.click("#app [data-action=rate]")
    page.wait_for_selector("#app .thanks")
    shoot(page, "rating-thanks-vi")
    from agent.localapi import LocalApiClient

    agent = LocalApiClient(agent_data)
    wait_for(lambda: agent.status()["outbox"]["depth"] >= 1, "rating in the outbox")
    broker.start()
    wait_for(lambda: any(kind == "kiosk.rating" for kind, _ in responder.events), "rating at the city", 30)
    rating = next(data for kind, data in responder.events if kind == "kiosk.rating")
    assert rating["data"]["score"] == 4 and rating["data"]["reasons"] == ["fast", "clear"]
    assert set(rating["data"]) == {"score", "reasons", "lang", "rated_at"}


def wait_for(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: last value {value!r}")


def test_telemetry_peripherals_and_pushed_content(
    kiosk_factory: Callable[..., Any],
    open_page: Callable[..., Any],
    agent_data: Path,
    responder: Responder,
    tmp_path: Path,
) -> None:
    content_key = Ed25519PrivateKey.generate()
    keys_file = tmp_path / "content-keys.json"
    keys_file.write_text(json.dumps({"content-test": encode_public_key(content_key.public_key())}))
    kiosk = kiosk_factory(agent_data, simulate_peripherals=True, content_keys=keys_file)
    page, _ = open_page(kiosk.url + "/")
    # telemetry: kiosk metrics merged into the agent's telemetry; peripherals in shadow/reported
    sample = wait_for(
        lambda: next((t for t in reversed(responder.telemetry) if t.get("kiosk_screen_ok")), None),
        "telemetry with kiosk metrics",
    )
    assert sample["kiosk_printer"] == "ok" and sample["kiosk_scanner"] == "connected"
    assert "kiosk_sessions_last_hour" in sample
    peripherals = wait_for(lambda: responder.reported.get("peripherals", {}).get("printer"), "peripherals")
    assert peripherals["state"] == "ok"
    # content: a signed catalogue and announcements in the desired config reach the screen
    catalogue = load_shipped("catalogue.json")
    catalogue["version"] = 3
    catalogue["procedures"][0] = {
        **catalogue["procedures"][0],
        "name": {"vi": "Thủ tục mới đẩy xuống", "en": "New"},
    }
    news = {
        "format": "cityedge.kiosk.announcements",
        "version": 3,
        "items": [
            {"id": "n1", "title": {"vi": "Lịch cắt nước", "en": "Water cut"}, "body": {"vi": "a", "en": "b"}}
        ],
    }
    config = {
        "kiosk": {
            "catalogue": sign_content(catalogue, content_key, "content-test"),
            "announcements": sign_content(news, content_key, "content-test"),
        }
    }
    responder.publish_desired(DEVICE_ID, {"version": 1, "config": config, "release": None})
    wait_for(lambda: kiosk.kiosk.core.feed.status()["catalogue"] == "fleet v3", "pushed catalogue")
    page.click("#app .tile-procedures")
    page.wait_for_selector(".screen-procedures")
    assert "Thủ tục mới đẩy xuống" in page.inner_text("#results")
    page.click("#app .btn-home")
    page.click("#app .tile-news")
    page.wait_for_selector(".screen-signage")
    assert "Lịch cắt nước" in page.inner_text("#app")


def test_end_to_end_through_the_fleet_gateway(
    kiosk_factory: Callable[..., Any],
    open_page: Callable[..., Any],
    agent_data: Path,
    fleet_gateway: Any,
) -> None:
    """Kiosk page → kiosk app → agent (local API) → mosquitto → fleet gateway → demo registry."""
    from agent.localapi import LocalApiClient

    agent = LocalApiClient(agent_data)
    wait_for(lambda: agent.rpc("dossier", "lookup", {"code": GOOD_CODE}, timeout=1.0), "fleet gateway", 30)
    kiosk = kiosk_factory(agent_data)
    page, recorder = open_page(kiosk.url + "/")
    page.click("#app .tile-lookup")
    submit_code(page, GOOD_CODE)
    page.wait_for_selector("#app .dossier", timeout=5000)
    assert "Đang xử lý" in page.inner_text("#app .status")
    page.click("#app [data-post='/api/lookup/reset']")
    page.wait_for_selector("#app #code")
    submit_code(page, MISSING_CODE)
    assert "Không tìm thấy hồ sơ" in wait_js(page, MESSAGE, timeout=5)
    fleet_gateway.terminate()  # the city side goes away: the kiosk says so within 5 s
    fleet_gateway.wait(10)
    page.click("#app [data-key=CLEAR]")
    type_keys(page, GOOD_CODE)
    started = time.monotonic()
    page.click("#app [data-action=submit]")
    wait_js(page, f"{MESSAGE}?.includes('gián đoạn')", timeout=6)
    assert time.monotonic() - started < 5.0
    assert recorder.outside(kiosk.url) == []
