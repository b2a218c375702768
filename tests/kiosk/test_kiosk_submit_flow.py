"""Submitting a dossier through the kiosk app (HTTP), each of the five procedures, against the
gateway's real ``dossier`` service (local registry) behind a stand-in for the agent's local API:
card pre-fill, validation, photographed pages through the document pipeline, review, consent,
dossier code, VietQR fee and payment confirmation, receipt; gateway failure answered in words within
5 s; retried submit → one dossier; nothing personal left after the session ends."""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kiosk_helpers import CCCD_ADDRESS, CCCD_ID, CCCD_NAME, CCCD_PAYLOAD
from markupsafe import escape
from starlette.testclient import TestClient
from test_kiosk_printer import decode_qr

from fleet.gateway import DossierService, GatewayConfig, build_dossier_service
from fleet.gateway.submissions import LocalSubmissionRegistry
from fleet.rpc import RpcError
from hw.doccam import SimulatedDocumentCamera
from hw.printer import SimulatedPrinter
from kiosk_ui.app import create_app
from kiosk_ui.content import Catalogue, load_shipped
from kiosk_ui.forms import Form
from kiosk_ui.harness import settings_for_tests
from kiosk_ui.receipt import submission_receipt
from kiosk_ui.server import Kiosk, build
from protocol.vietqr import parse

PROCEDURES = ("ht-khai-sinh", "cu-thuong-tru", "ct-ban-sao", "ht-tinh-trang-hon-nhan", "ht-khai-tu")
SAMPLE = {
    "name": "Trần Văn Bình",
    "date": "01/11/2026",
    "number": "1995",
    "phone": "0912345678",
    "id_number": "001095012345",
    "text": "Số 5 ngõ 7 phố Khương Trung, phường Khương Đình, Hà Nội",
}

BY_FIELD = {"dan_toc": "Kinh", "quoc_tich": "Việt Nam", "ten_giay_to": "Bằng tốt nghiệp trung học phổ thông"}


class GatewayPort:
    """The agent's local API as the kiosk sees it, answered by the gateway's dossier service in-process;
    it can be made to fail the way a link does (no answer, or the answer lost after the city acted)."""

    def __init__(self, service: DossierService) -> None:
        self.service = service
        self.hang = threading.Event()
        self.release = threading.Event()
        self.lose_answer_of: str | None = None
        """Method whose next answer is lost after the gateway acted on it."""
        self.hang_after: dict[str, int] = {}
        """Method → how many more calls of it are answered before the city stops answering."""
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def rpc(self, service: str, method: str, params: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        self.calls.append((method, params))
        if method in self.hang_after:
            self.hang_after[method] -= 1
            if self.hang_after[method] < 0:
                del self.hang_after[method]
                self.hang.set()
        if self.hang.is_set():
            self.release.wait(timeout + 5)
            raise TimeoutError("no answer from the city")
        try:
            result = self.service.call(method, params, "kiosk-test")
        except RpcError as exc:
            failure = RuntimeError(str(exc))
            failure.code = exc.code  # type: ignore[attr-defined]
            raise failure from exc
        if self.lose_answer_of == method:
            self.lose_answer_of = None
            raise TimeoutError("the answer was lost on the way back")
        return result

    def emit(self, kind: str, data: dict[str, Any], *, sign: bool = False) -> dict[str, Any]:
        return {}

    def report_metrics(self, metrics: dict[str, Any]) -> None:
        return None

    def report_peripherals(self, peripherals: dict[str, Any]) -> None:
        return None

    def desired_config(self) -> dict[str, Any]:
        return {}

    def call(self, op: str, timeout: float | None = None, **fields: Any) -> Any:
        return None


class Desk:
    """The kiosk app in-process with a session open, plus the gateway behind it."""

    def __init__(self, tmp_path: Path) -> None:
        self.service = build_dossier_service(GatewayConfig())
        self.port = GatewayPort(self.service)
        settings = settings_for_tests(tmp_path, 0, simulate_peripherals=True, lookup_timeout_s=2.0)
        self.kiosk: Kiosk = build(settings, self.port)
        self.client = TestClient(create_app(self.kiosk.state))
        self.client.__enter__()
        self.sid = self.client.post("/api/session", json={"lang": "vi"}).json()["sid"]

    @property
    def registry(self) -> LocalSubmissionRegistry:
        assert isinstance(self.service.submissions, LocalSubmissionRegistry)
        return self.service.submissions

    @property
    def camera(self) -> SimulatedDocumentCamera:
        camera = self.kiosk.core.devices.doccam
        assert isinstance(camera, SimulatedDocumentCamera)
        return camera

    @property
    def printer(self) -> SimulatedPrinter:
        printer = self.kiosk.core.devices.printer
        assert isinstance(printer, SimulatedPrinter)
        return printer

    def post(self, path: str, body: dict[str, Any] | None = None) -> str:
        response = self.client.post(path, json=body or {}, headers={"x-kiosk-session": self.sid})
        assert response.status_code == 200, (path, response.status_code, response.text[:200])
        return str(response.text)

    def step(self, html: str) -> str:
        marker = 'data-step="'
        assert marker in html, html[:300]
        return html.split(marker, 1)[1].split('"', 1)[0]

    def close(self) -> None:
        self.port.release.set()
        self.client.__exit__(None, None, None)
        self.kiosk.core.shutdown()
        self.kiosk.core.link.stop()


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[Desk]:
    d = Desk(tmp_path)
    yield d
    d.close()


def form_of(procedure_id: str) -> Form:
    catalogue = Catalogue.model_validate(load_shipped("catalogue.json"))
    form = {p.id: p.form for p in catalogue.procedures}[procedure_id]
    assert form is not None
    return form


def fill(form: Form, values: dict[str, str]) -> dict[str, str]:
    """Complete the required fields the card did not fill, as a resident would."""
    out = dict(values)
    for f in form.fields:
        if out.get(f.id) or not f.required:
            continue
        if f.type == "choice":
            out[f.id] = f.options[0].value
        elif f.type == "sex":
            out[f.id] = "Nam"
        else:
            out[f.id] = BY_FIELD.get(f.id) or SAMPLE.get(f.type, SAMPLE["text"])
    return out


def identify_and_fill(desk: Desk, procedure_id: str) -> tuple[Form, dict[str, str]]:
    html = desk.post("/api/submit/start", {"procedure": procedure_id})
    assert desk.step(html) == "identify" and "Tôi đồng ý" not in html
    desk.post("/api/submit/card-consent")
    desk.kiosk.core.on_scan(CCCD_PAYLOAD)  # the scanner thread hands the card's QR to the app
    html = desk.client.get("/screen/submit", headers={"x-kiosk-session": desk.sid}).text
    assert desk.step(html) == "form" and CCCD_NAME in html
    form = form_of(procedure_id)
    state = desk.kiosk.core.store.get(desk.sid).submission
    assert state is not None
    values = dict(state.values)
    if any(f.prefill == "address" for f in form.fields):
        assert CCCD_ADDRESS in values.values()
    # submitting the form as pre-filled: every missing required field gets its own message
    html = desk.post("/api/submit/form", {"values": values})
    missing = [f for f in form.fields if f.required and not values.get(f.id)]
    assert desk.step(html) == "form" and missing
    for f in missing:
        assert escape(f"Vui lòng nhập “{f.label['vi']}”") in html or f.type in ("choice", "sex")
        assert escape(f.label["en"]) in html
    values = fill(form, values)
    html = desk.post("/api/submit/form", {"values": values})
    assert desk.step(html) == "documents", html[html.find("message-error") : html.find("message-error") + 400]
    return form, values


def photograph(desk: Desk, form: Form) -> int:
    pages = 0
    for d in form.documents:
        for _ in range(max(d.pages_min, 1)):
            html = desk.post("/api/submit/capture", {"document": d.id})
            assert "message-error" not in html
            pages += 1
    return pages


@pytest.mark.parametrize("procedure_id", PROCEDURES)
def test_a_resident_submits_each_procedure_from_card_to_receipt(desk: Desk, procedure_id: str) -> None:
    form, values = identify_and_fill(desk, procedure_id)
    pages = photograph(desk, form)
    state = desk.kiosk.core.store.get(desk.sid).submission
    assert state is not None and sum(state.page_count().values()) == pages
    # every page can be seen (served from the session's memory only, never cached)
    first = form.documents[0].id
    image = desk.client.get(f"/part/page/{first}/0?sid={desk.sid}")
    assert image.status_code == 200 and image.content[:2] == b"\xff\xd8"
    assert image.headers["cache-control"] == "no-store"
    assert desk.client.get(f"/part/page/{first}/0?sid=someone-else").status_code == 404

    html = desk.post("/api/submit/documents")
    assert desk.step(html) == "review"
    for f in form.fields:
        if values.get(f.id) and f.type not in ("sex", "choice"):
            assert escape(values[f.id]) in html, f.id
    assert html.count("/part/page/") == pages
    html = desk.post("/api/submit/review")
    assert desk.step(html) == "consent" and "Tôi cam đoan" in html
    html = desk.post("/api/submit/send")
    assert desk.step(html) == "done"
    code = desk.registry._by_submission[state.submission_id].code
    assert code in html and desk.registry.count() == 1
    # the gateway got the form and every page; the kiosk dropped them once the city answered
    sent = [p for m, p in desk.port.calls if m == "submit"][-1]
    assert sent["form"] == values and len(sent["pages"]) == pages
    assert state.values == {} and state.pages == {}
    assert CCCD_NAME not in desk.kiosk.core.store.dump()

    fee = form.fee_vnd or 0
    if fee:
        assert "VietQR" in html and "<svg" in html and 'data-poll="/api/submit/payment"' in html
        qr = parse(str(state.result and state.result["vietqr"]))
        assert qr.amount == fee and qr.reference == code
        assert desk.step(desk.post("/api/submit/payment")) == "done"
        assert 'data-poll="/api/submit/payment"' in desk.post("/api/submit/payment")  # not paid yet
        desk.registry.confirm_payment(code, fee)  # the bank's transfer arrives at the city
        html = desk.post("/api/submit/payment")
        assert 'data-payment="paid"' in html and "Đã thanh toán" in html and "data-poll" not in html
    else:
        assert 'data-payment="none"' in html and "không thu lệ phí" in html

    html = desk.post("/api/submit/print")
    assert "Đã in phiếu" in html
    (job,) = desk.printer.jobs
    assert decode_qr(job.image) == [code]  # the lookup screen reads it back
    procedure = {p.id: p for p in Catalogue.model_validate(load_shipped("catalogue.json")).procedures}
    texts = " ".join(submission_receipt(state.result or {}, procedure[procedure_id].name["vi"]).texts())
    assert code in texts and ("Đã thanh toán" if fee else "Không thu lệ phí") in texts
    assert CCCD_NAME not in texts and CCCD_ID not in texts

    # the receipt's code is found by the lookup screen (the gateway answers it as received)
    found = desk.post("/api/lookup", {"code": decode_qr(job.image)[0]})
    assert 'class="dossier"' in found and "Đã tiếp nhận" in found
    assert escape(procedure[procedure_id].name["vi"]) in found

    desk.client.post("/api/session/end", json={"reason": "end"}, headers={"x-kiosk-session": desk.sid})
    assert len(desk.kiosk.core.store) == 0 and desk.printer.jobs == []
    assert desk.client.get(f"/part/page/{first}/0?sid={desk.sid}").status_code == 404


def test_a_blurred_page_is_refused_with_a_retake_message_and_pages_can_be_reordered(desk: Desk) -> None:
    identify_and_fill(desk, "ht-khai-sinh")
    desk.camera.blur_sigma = 6.0
    html = desk.post("/api/submit/capture", {"document": "giay_chung_sinh"})
    assert "Ảnh bị mờ" in html and "blurred" in html
    state = desk.kiosk.core.store.get(desk.sid).submission
    assert state is not None and state.page_count().get("giay_chung_sinh", 0) == 0
    html = desk.post("/api/submit/documents")
    assert desk.step(html) == "documents" and "Giấy chứng sinh" in html and "at least 1" in html
    desk.camera.blur_sigma = 0.0
    desk.post("/api/submit/capture", {"document": "giay_chung_sinh"})
    desk.camera.seed = 7  # another page on the tray
    desk.post("/api/submit/capture", {"document": "giay_chung_sinh"})
    a, b = state.pages["giay_chung_sinh"]
    assert a != b
    html = desk.post("/api/submit/capture", {"document": "giay_chung_sinh"})
    assert "đã đủ 2 trang" in html  # pages_max
    desk.post("/api/submit/page", {"document": "giay_chung_sinh", "index": 1, "op": "up"})
    assert state.pages["giay_chung_sinh"] == [b, a]
    desk.camera.seed = 9
    desk.post("/api/submit/capture", {"document": "giay_chung_sinh", "replace": 0})  # retake page 1
    assert state.pages["giay_chung_sinh"][1] == a and state.pages["giay_chung_sinh"][0] not in (a, b)
    desk.post("/api/submit/page", {"document": "giay_chung_sinh", "index": 0, "op": "delete"})
    assert state.pages["giay_chung_sinh"] == [a]
    assert desk.step(desk.post("/api/submit/documents")) == "review"


def test_gateway_down_is_told_in_words_within_5_s_and_a_retry_makes_one_dossier(desk: Desk) -> None:
    form, _ = identify_and_fill(desk, "cu-thuong-tru")
    photograph(desk, form)
    desk.post("/api/submit/documents")
    desk.post("/api/submit/review")
    desk.port.hang.set()  # the city's system stops answering
    started = time.monotonic()
    html = desk.post("/api/submit/send")
    assert time.monotonic() - started < 5.0
    assert desk.step(html) == "consent" and "không trả lời" in html and "not answering" in html
    desk.port.hang.clear()
    desk.port.release.set()
    desk.port.lose_answer_of = "submit"  # the city makes the dossier, the answer is lost on the way
    html = desk.post("/api/submit/send")
    assert desk.step(html) == "consent" and desk.registry.count() == 1
    html = desk.post("/api/submit/send")  # the resident presses submit again
    assert desk.step(html) == "done" and desk.registry.count() == 1
    ids = {p["submission_id"] for m, p in desk.port.calls if m in ("submit", "pages", "upload_page")}
    assert len(ids) == 1 and len([m for m, _ in desk.port.calls if m == "submit"]) == 2


def test_a_broken_page_upload_resumes_with_the_missing_pages_only(desk: Desk) -> None:
    """Pages travel one per request (each under the 256 KiB MQTT limit, the whole dossier above it);
    a link lost after the first page resumes with the pages the gateway does not have."""
    identify_and_fill(desk, "cu-thuong-tru")
    for seed in (1, 2, 3, 4):
        desk.camera.seed = seed
        desk.post("/api/submit/capture", {"document": "giay_to_cho_o"})
    state = desk.kiosk.core.store.get(desk.sid).submission
    assert state is not None and sum(len(p) for p in state.pages["giay_to_cho_o"]) * 4 / 3 > 256 * 1024
    desk.post("/api/submit/documents")
    desk.post("/api/submit/review")
    desk.port.hang_after["upload_page"] = 1  # the link drops after the first page arrived
    html = desk.post("/api/submit/send")
    assert desk.step(html) == "consent" and "không trả lời" in html
    assert len(desk.registry.held_pages(state.submission_id)) == 1 and desk.registry.count() == 0
    desk.port.hang.clear()
    desk.port.release.set()
    before = len(desk.port.calls)
    html = desk.post("/api/submit/send")
    assert desk.step(html) == "done" and desk.registry.count() == 1
    resent = [p["sha256"] for m, p in desk.port.calls[before:] if m == "upload_page"]
    assert len(resent) == 3 and len(set(resent)) == 3  # only the three missing pages
    assert len(desk.registry.held_pages(state.submission_id)) == 4
    assert all(
        len(base64.b64decode(p["jpeg"])) <= 150 * 1024 for m, p in desk.port.calls if m == "upload_page"
    )


def test_nothing_personal_is_left_after_a_reset_mid_submission(
    desk: Desk, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    form, values = identify_and_fill(desk, "ht-tinh-trang-hon-nhan")
    photograph(desk, form)
    session = desk.kiosk.core.store.get(desk.sid)
    state = session.submission
    assert state is not None and CCCD_NAME in desk.kiosk.core.store.dump()
    pages = [page for shots in state.pages.values() for page in shots]
    desk.client.post("/api/session/end", json={"reason": "idle"}, headers={"x-kiosk-session": desk.sid})
    assert desk.kiosk.core.store.dump() == "" and session.submission is None
    assert state.values == {} and state.pages == {} and session.identity is None
    assert pages and all(len(p) > 0 for p in pages)  # the bytes objects were only referenced, now dropped
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert CCCD_NAME.encode() not in data and CCCD_ID.encode() not in data, path
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (CCCD_NAME, CCCD_ID, CCCD_ADDRESS, values["muc_dich_su_dung"]):
        assert secret not in logged
    assert desk.client.post("/api/submit/send", headers={"x-kiosk-session": desk.sid}).status_code == 410
