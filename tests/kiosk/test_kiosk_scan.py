"""The QR scanner (a pty) reaching the page: CCCD identity after consent, bad scans, wrong screen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from kiosk_helpers import (
    CCCD_ADDRESS,
    CCCD_ID,
    CCCD_NAME,
    CCCD_PAYLOAD,
    MASKED_ID,
    PAGE_DUMP_JS,
    a11y_problems,
    shoot,
    wait_js,
)

from kiosk_ui.harness import PtyScanner

pytestmark = pytest.mark.browser

# What a real reader may send: NUL padding, the payload, CRLF, and the same card read twice.
NOISY_SCAN = b"\x00\x00" + CCCD_PAYLOAD.replace("|", "|\x00", 1).encode() + b"\x00\r\n"


def open_identity(
    kiosk_factory: Callable[..., Any], open_page: Callable[..., Any], scanner: PtyScanner
) -> Any:
    kiosk = kiosk_factory(scanner=scanner.path)
    page, recorder = open_page(kiosk.url + "/")
    wait_js(page, "true")
    page.click("#app .tile-identity")
    page.wait_for_selector(".screen-identity")
    return kiosk, page, recorder


def test_cccd_scan_after_consent_fills_identity_once_and_masked(
    kiosk_factory: Callable[..., Any], open_page: Callable[..., Any], pty_scanner: PtyScanner
) -> None:
    kiosk, page, recorder = open_identity(kiosk_factory, open_page, pty_scanner)
    core = kiosk.kiosk.core
    wait_js(page, "true")
    # before consent: refused, nothing parsed or kept
    pty_scanner.write(NOISY_SCAN)
    wait_js(page, "document.querySelector('#app .message-error')?.textContent.includes('đồng ý')")
    assert CCCD_NAME not in page.content() and CCCD_NAME not in core.store.dump()
    page.click("#app [data-post='/api/identity/consent']")
    page.wait_for_selector("#app .scan-prompt")
    time.sleep(2.1)  # the scanner drops a repeat of the same code within 2 s (hw.scanner de-duplication)
    pty_scanner.write(NOISY_SCAN + NOISY_SCAN)  # the card read twice in a row
    masked = wait_js(page, "document.querySelector('[data-field=masked-id]')?.textContent")
    assert masked == MASKED_ID
    assert page.inner_text("[data-field=name]") == CCCD_NAME
    assert page.inner_text("[data-field=dob]") == "15/08/1999"
    assert page.inner_text("[data-field=address]") == CCCD_ADDRESS
    assert CCCD_ID not in page.content()  # never the full id on screen
    session = core.store.current()
    assert session is not None and session.counts.get("identity") == 1
    assert page.locator("#app .identity").count() == 1
    shoot(page, "identity-filled-vi")
    assert a11y_problems(page) == []
    page.click("#app [data-action=lang]")
    wait_js(page, "document.documentElement.lang === 'en' && !!document.querySelector('[data-field=sex]')")
    assert page.inner_text("[data-field=sex]") == "Female"
    shoot(page, "identity-filled-en")
    # Clear: everything gone from the page and the server
    page.click("#app [data-post='/api/identity/clear']")
    page.wait_for_selector("#app .consent")
    dump = page.evaluate(PAGE_DUMP_JS)
    for secret in (CCCD_NAME, MASKED_ID, CCCD_ADDRESS, CCCD_ID):
        assert secret not in dump and secret not in core.store.dump()
    assert recorder.outside(kiosk.url) == []


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"abc\r\n", "không phải của thẻ CCCD"),
        (b"001199012345|x|y\r\n", "không phải của thẻ CCCD"),
        ("001199012345||Nguyễn Văn A|31021999|Nam|Hà Nội|01032021\r\n".encode(), "Ngày sinh"),
    ],
    ids=["short", "three-fields", "bad-date"],
)
def test_invalid_card_scans_give_a_clear_message(
    kiosk_factory: Callable[..., Any],
    open_page: Callable[..., Any],
    pty_scanner: PtyScanner,
    payload: bytes,
    expected: str,
) -> None:
    kiosk, page, _ = open_identity(kiosk_factory, open_page, pty_scanner)
    page.click("#app [data-post='/api/identity/consent']")
    page.wait_for_selector("#app .scan-prompt")
    pty_scanner.write(payload)
    text = wait_js(page, "document.querySelector('#app .message-error')?.textContent")
    assert "Không đọc được thẻ" in text and expected in text
    assert page.query_selector("[data-field=name]") is None
    session = kiosk.kiosk.core.store.current()
    assert session is not None and session.identity is None


def test_unreadable_bytes_and_cards_on_the_wrong_screen_only_show_a_hint(
    kiosk_factory: Callable[..., Any], open_page: Callable[..., Any], pty_scanner: PtyScanner
) -> None:
    kiosk = kiosk_factory(scanner=pty_scanner.path)
    page, _ = open_page(kiosk.url + "/")
    pty_scanner.write(b"\xff\xfe\xfd garbage\r\n")
    wait_js(page, "!document.getElementById('toast').hidden")
    assert "quét lại" in page.inner_text("#toast")
    pty_scanner.write(CCCD_PAYLOAD.encode() + b"\r\n")
    wait_js(page, "document.getElementById('toast').textContent.includes('Định danh bằng CCCD')")
    assert CCCD_NAME not in page.content() and CCCD_NAME not in kiosk.kiosk.core.store.dump()
    assert page.query_selector(".screen-home") is not None
