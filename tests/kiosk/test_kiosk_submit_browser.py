"""A resident submits a dossier in real Chromium (portrait 1080×1920), through the whole chain:
kiosk page → kiosk app → agent (local API) → mosquitto → ``fleet serve`` with the gateway's local
registry; the card read from a pty scanner, pages from the simulated document camera, the fee paid by
VietQR (the bank's confirmation played by the test), the receipt printed; then the end wipes it all.

Screenshots of every step go to test-artifacts/kiosk/, or to ``CITYEDGE_SCREENSHOT_DIR`` for the
resident's guide (``CITYEDGE_SCREENSHOT_DIR=docs/img pytest tests/kiosk/test_kiosk_submit_browser.py``).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kiosk_helpers import (
    CCCD_ADDRESS,
    CCCD_ID,
    CCCD_NAME,
    CCCD_PAYLOAD,
    LANDSCAPE,
    PAGE_DUMP_JS,
    a11y_problems,
    shoot,
    wait_js,
)
from test_kiosk_lookup import wait_for
from test_kiosk_printer import decode_qr

from fleet.gateway.submissions import LocalSubmissionRegistry
from hw.doccam import SimulatedDocumentCamera
from hw.printer import SimulatedPrinter
from kiosk_ui.harness import PtyScanner
from protocol.vietqr import parse

pytestmark = pytest.mark.browser

STEP = "document.querySelector('#app [data-step]')?.dataset.step"


def snap(page: Any, name: str) -> None:
    shoot(page, name)
    folder = os.environ.get("CITYEDGE_SCREENSHOT_DIR")
    if folder:
        page.screenshot(path=str(Path(folder) / f"{name}.png"))


def type_form(page: Any, text: str) -> None:
    """Type on the form keyboard: Shift before a capital, the space bar for spaces."""
    for ch in text:
        if ch.isupper():
            page.click("#app [data-key=SHIFT]")
        page.click(f"#app [data-key='{'SPACE' if ch == ' ' else ch.lower()}']")


def at_step(page: Any, step: str, timeout: float = 8.0) -> None:
    wait_js(page, f"{STEP} === '{step}'", timeout)


def test_a_resident_submits_a_dossier_with_a_fee_in_chromium_through_agent_and_gateway(
    kiosk_factory: Callable[..., Any],
    open_page: Callable[..., Any],
    agent_data: Path,
    fleet_gateway: Any,
    pty_scanner: PtyScanner,
) -> None:
    from agent.localapi import LocalApiClient

    agent = LocalApiClient(agent_data)
    wait_for(
        lambda: agent.rpc("dossier", "lookup", {"code": "000.00.01.H26-260930-0012"}, 1.0), "gateway", 30
    )
    kiosk = kiosk_factory(agent_data, simulate_peripherals=True, scanner=pty_scanner.path)
    core = kiosk.kiosk.core
    camera, printer = core.devices.doccam, core.devices.printer
    assert isinstance(camera, SimulatedDocumentCamera) and isinstance(printer, SimulatedPrinter)
    page, recorder = open_page(kiosk.url + "/")

    # 1. choose the procedure
    page.click("#app .tile-procedures")
    page.wait_for_selector("#app .result")
    page.click("#app [data-go=procedure][data-id='cu-thuong-tru']")
    page.wait_for_selector("#app [data-post='/api/submit/start']")
    snap(page, "kiosk-submit-1-procedure-vi")
    page.click("#app [data-post='/api/submit/start']")
    at_step(page, "identify")
    snap(page, "kiosk-submit-2-identify-vi")
    assert a11y_problems(page) == []
    with page.expect_response(lambda r: "/api/speak/guide.submit.identify?lang=vi" in r.url) as spoken:
        page.click("#app [data-action=listen]")  # "Nghe": the step's guidance read aloud
    assert spoken.value.status == 200 and spoken.value.headers["content-type"] == "audio/wav"
    page.click("#app [data-action=auto-speak]")  # from now on each step is read as it appears

    # 2. identify with the card's QR
    page.click("#app [data-post='/api/submit/card-consent']")
    page.wait_for_selector("#app .scan-prompt")
    # the form arrives (pushed after the scan) and, in automatic mode, its guidance is fetched to play
    with page.expect_request(lambda r: "/api/speak/guide.submit.form" in r.url, timeout=10000):
        pty_scanner.write(CCCD_PAYLOAD.encode() + b"\r\n")
    at_step(page, "form")
    assert page.get_attribute("#app [data-fv=ho_ten]", "data-value") == CCCD_NAME
    assert page.get_attribute("#app [data-fv=ngay_sinh]", "data-value") == "15/08/1999"
    assert page.get_attribute("#app [data-fv=gioi_tinh] [aria-pressed=true]", "data-value") == "Nữ"
    snap(page, "kiosk-submit-3-form-prefilled-vi")
    assert a11y_problems(page) == []

    # 3. the form: missing fields are named, then typed on the on-screen keyboard (Telex)
    page.click("#app [data-action=form-save]")
    wait_js(page, "document.querySelectorAll('#app .ff-error').length === 4")
    assert "Vui lòng nhập “Số điện thoại liên hệ”" in page.inner_text("#app [data-ff=so_dien_thoai]")
    assert "Please fill in “Contact phone number”" in page.inner_text("#app [data-ff=so_dien_thoai]")
    snap(page, "kiosk-submit-4-form-errors-vi")
    page.click("#app [data-fv=so_dien_thoai]")
    type_form(page, "0912345678")
    page.click("#app [data-fv=chu_ho_ho_ten]")
    type_form(page, "traafn vawn binhf")  # names get their capitals by themselves
    assert page.get_attribute("#app [data-fv=chu_ho_ho_ten]", "data-value") == "Trần Văn Bình"
    page.click("#app [data-fv=quan_he_chu_ho] [data-value='Con']")
    page.click("#app [data-fv=noi_dung_de_nghi]")
    type_form(page, "So 5 ngo 7 Khuong Trung, Ha Noi")
    page.click("#app [data-action=form-save]")
    at_step(page, "documents")

    # 4. documents: a blurred photo is refused, good pages kept, reordered
    camera.blur_sigma = 6.0
    page.click('#app [data-body=\'{"document": "giay_to_cho_o"}\']')
    assert "mờ" in wait_js(page, "document.querySelector('#app .message-error')?.textContent")
    snap(page, "kiosk-submit-5-page-blurred-vi")
    camera.blur_sigma = 0.0
    for seed in (1, 2, 3):
        camera.seed = seed
        count = page.locator("#app .page img").count()
        page.click('#app [data-body=\'{"document": "giay_to_cho_o"}\']')
        wait_js(page, f"document.querySelectorAll('#app .page img').length === {count + 1}")
    wait_js(
        page,
        "Array.from(document.querySelectorAll('#app .page img'))"
        ".every(i => i.complete && i.naturalWidth > 0)",
    )
    page.click('#app .page:nth-child(2) [data-body*=\'"op": "up"\']')
    wait_js(page, "document.querySelectorAll('#app .page img').length === 3")
    state = core.store.current().submission
    assert state is not None  # the pages together are over one MQTT message's 256 KiB: sent one by one
    assert sum(len(p) for p in state.pages["giay_to_cho_o"]) * 4 / 3 > 256 * 1024
    snap(page, "kiosk-submit-6-documents-vi")
    assert a11y_problems(page) == []
    page.click("#app [data-post='/api/submit/documents']")
    at_step(page, "review")
    text = page.inner_text("#app")
    assert CCCD_NAME in text and "Trần Văn Bình" in text and "0912345678" in text and "Con" in text
    snap(page, "kiosk-submit-7-review-vi")
    page.click("#app [data-post='/api/submit/review']")
    at_step(page, "consent")
    assert "10.000 đồng" in page.inner_text("#app")
    snap(page, "kiosk-submit-8-consent-vi")

    # 5. submit through agent, mosquitto and the fleet's gateway
    started = time.monotonic()
    page.click("#app [data-post='/api/submit/send']")
    at_step(page, "done", timeout=6)
    assert time.monotonic() - started < 5.0
    code = page.inner_text("#app #dossier-code").strip()
    assert code.startswith("000.00.01.H26-")
    page.wait_for_selector("#app .qr-pay svg")
    from PIL import Image

    shot = Image.open(io.BytesIO(page.locator("#app .qr-pay").screenshot()))
    qr = parse(decode_qr(shot)[0])  # what a banking app reads from the screen
    assert qr.amount == 10000 and qr.reference == code
    snap(page, "kiosk-submit-9-done-vietqr-vi")
    assert a11y_problems(page) == []
    # nothing the resident gave is kept once the city answered
    assert CCCD_NAME not in core.store.dump() and CCCD_ADDRESS not in core.store.dump()

    # 6. the bank confirms the transfer; the page, polling the gateway, says paid
    agent.rpc("dossier", "bank_transfer", {"code": code, "amount": 10000}, timeout=3.0)
    page.wait_for_selector("#app [data-payment=paid]", timeout=10000)
    page.click("#app [data-post='/api/submit/print']")
    wait_js(page, "document.querySelector('#app .print-message')?.textContent.includes('Đã in')")
    (job,) = printer.jobs
    assert decode_qr(job.image) == [code]
    snap(page, "kiosk-submit-10-paid-printed-vi")
    page.click("#app [data-action=lang]")
    wait_js(
        page, "document.documentElement.lang === 'en' && !!document.querySelector('#app [data-payment=paid]')"
    )
    assert "Paid 10.000 đồng" in page.inner_text("#app")
    snap(page, "kiosk-submit-10-paid-printed-en")

    # 7. the end wipes everything
    dump_before = page.evaluate(PAGE_DUMP_JS)
    assert code in dump_before
    page.click("#app [data-action=end]")
    page.wait_for_selector("html[data-ready=yes] .screen-signage", timeout=10000)
    dump = page.evaluate(PAGE_DUMP_JS)
    for secret in (CCCD_NAME, CCCD_ID, CCCD_ADDRESS, "Trần Văn Bình", "0912345678", code):
        assert secret not in dump
    wait_for(lambda: core.store.dump() == "" or CCCD_NAME not in core.store.dump(), "server wipe")
    assert printer.jobs == []

    # 8. later, the receipt's QR on the scanner: the lookup finds the new dossier
    page.click(".touch-start")
    page.wait_for_selector(".screen-home")
    time.sleep(2.1)  # the scanner drops a repeat of the same code within 2 s (hw.scanner de-duplication)
    pty_scanner.write(code.encode() + b"\r\n")
    page.wait_for_selector("#app .dossier", timeout=6000)
    assert "Đã tiếp nhận" in page.inner_text("#app .status") and "Đăng ký thường trú" in page.inner_text(
        "#app"
    )
    assert recorder.outside(kiosk.url) == [] and recorder.errors == []


def test_a_submission_in_english_landscape_with_large_text_fits_and_passes_a11y(
    open_page: Callable[..., Any], tmp_path: Path
) -> None:
    """Marriage status confirmation (no fee, optional pages) in English at 1920×1080; large text on."""
    from test_kiosk_submit_flow import GatewayPort

    from fleet.broker import free_port
    from fleet.gateway import GatewayConfig, build_dossier_service
    from kiosk_ui.harness import ThreadedKiosk, settings_for_tests

    service = build_dossier_service(GatewayConfig())
    settings = settings_for_tests(tmp_path, free_port(), simulate_peripherals=True)
    with ThreadedKiosk(settings, GatewayPort(service)) as kiosk:
        page, recorder = open_page(kiosk.url + "/?lang=en", LANDSCAPE)
        page.click("#app .tile-procedures")
        page.wait_for_selector("#app .result")
        page.click("#app [data-go=procedure][data-id='ht-tinh-trang-hon-nhan']")
        page.click("#app [data-post='/api/submit/start']")
        at_step(page, "identify")
        page.click("#app [data-post='/api/submit/card-consent']")
        page.wait_for_selector("#app .scan-prompt")
        kiosk.kiosk.core.on_scan(CCCD_PAYLOAD)
        at_step(page, "form")
        page.click("#app [data-action=large]")
        wait_js(page, "document.documentElement.classList.contains('large')")
        size = page.evaluate("parseFloat(getComputedStyle(document.documentElement).fontSize)")
        assert size >= 1.5 * 20
        fits = "(c => c.scrollWidth <= c.clientWidth)(document.querySelector('#app .content'))"
        assert page.evaluate(fits) and page.evaluate("document.documentElement.scrollWidth <= innerWidth")
        assert "Marital status" in page.inner_text("#app") and "(from your ID card)" in page.inner_text(
            "#app"
        )
        snap(page, "kiosk-submit-form-en-landscape-large")
        assert a11y_problems(page) == []
        page.click("#app [data-fv=dan_toc]")
        type_form(page, "Kinh")
        page.click("#app [data-fv=quoc_tich]")
        type_form(page, "Vieejt Nam")
        assert page.get_attribute("#app [data-fv=quoc_tich]", "data-value") == "Việt Nam"
        page.click("#app [data-fv=tinh_trang_hon_nhan] [data-value='Chưa đăng ký kết hôn với ai']")
        page.click("#app [data-fv=muc_dich_su_dung]")
        type_form(page, "Ddeer keets hoon")
        assert page.get_attribute("#app [data-fv=muc_dich_su_dung]", "data-value") == "Để kết hôn"
        page.click("#app [data-action=form-save]")
        at_step(page, "documents")
        assert "Optional" in page.inner_text("#app")
        page.click("#app [data-post='/api/submit/documents']")  # no page needed for this one
        at_step(page, "review")
        assert "Never married" in page.inner_text("#app") and page.evaluate(fits)
        snap(page, "kiosk-submit-review-en-landscape-large")
        page.click("#app [data-post='/api/submit/review']")
        at_step(page, "consent")
        page.click("#app [data-post='/api/submit/send']")
        at_step(page, "done")
        assert "This procedure has no fee." in page.inner_text("#app")
        snap(page, "kiosk-submit-done-en-landscape-large")
        assert a11y_problems(page) == [] and page.evaluate(fits)
        assert isinstance(service.submissions, LocalSubmissionRegistry) and service.submissions.count() == 1
        page.click("#app [data-action=end]")
        page.wait_for_selector("html[data-ready=yes] .screen-signage", timeout=10000)
        assert (
            CCCD_NAME not in page.evaluate(PAGE_DUMP_JS)
            and kiosk.kiosk.core.store.dump().count(CCCD_NAME) == 0
        )
        assert recorder.outside(kiosk.url) == [] and recorder.errors == []
