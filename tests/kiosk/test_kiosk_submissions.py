"""Gateway submission registry: idempotent by submission id (retries and concurrent retries make one
dossier), day-numbered codes, fee VietQR with the dossier code as reference, payment confirmation."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import pytest

from fleet.gateway.submissions import LocalSubmissionRegistry
from fleet.rpc import RpcBadRequest
from protocol.dossier import DOSSIER_CODE_RE
from protocol.vietqr import parse

DAY = date(2026, 12, 5)


def test_a_retried_submission_makes_one_dossier() -> None:
    registry = LocalSubmissionRegistry()
    sid = str(uuid.uuid4())
    first = registry.submit(sid, "ht-khai-sinh", 0, today=DAY)
    again = registry.submit(sid, "ht-khai-sinh", 0, today=DAY)
    assert again == first and registry.count() == 1
    assert first.code == "000.00.01.H26-261205-0001" and DOSSIER_CODE_RE.match(first.code)
    assert first.payment == "none" and first.vietqr is None
    other = registry.submit(str(uuid.uuid4()), "ht-khai-sinh", 0, today=DAY)
    assert other.code.endswith("-0002") and registry.count() == 2


def test_concurrent_retries_of_one_submission_make_one_dossier() -> None:
    registry = LocalSubmissionRegistry()
    sid = str(uuid.uuid4())
    with ThreadPoolExecutor(8) as pool:
        codes = set(pool.map(lambda _: registry.submit(sid, "ct-thuong-tru", 0, today=DAY).code, range(64)))
    assert len(codes) == 1 and registry.count() == 1


def test_a_fee_is_asked_by_vietqr_and_confirmed_by_its_reference() -> None:
    registry = LocalSubmissionRegistry()
    receipt = registry.submit(str(uuid.uuid4()), "ht-ban-sao", 24000, today=DAY)
    assert receipt.payment == "unpaid" and receipt.vietqr is not None
    qr = parse(receipt.vietqr)
    assert qr.amount == 24000 and qr.reference == receipt.code
    assert registry.confirm_payment(receipt.code, 10000).payment == "unpaid"
    paid = registry.confirm_payment(receipt.code, 14000)
    assert paid.payment == "paid" and paid.vietqr is None
    assert registry.submit(receipt.submission_id, "ht-ban-sao", 24000, today=DAY).payment == "paid"


@pytest.mark.parametrize("sid", ["", "not-a-uuid", str(uuid.uuid4()).upper(), 12])
def test_bad_submission_ids_are_refused(sid: object) -> None:
    with pytest.raises(RpcBadRequest):
        LocalSubmissionRegistry().submit(sid, "ht-khai-sinh", 0)  # type: ignore[arg-type]


def test_a_submission_id_cannot_be_reused_for_another_procedure() -> None:
    registry = LocalSubmissionRegistry()
    sid = str(uuid.uuid4())
    registry.submit(sid, "ht-khai-sinh", 0)
    with pytest.raises(RpcBadRequest):
        registry.submit(sid, "ht-ket-hon", 0)
    with pytest.raises(RpcBadRequest):
        registry.confirm_payment("000.00.01.H26-261205-0999", 1)


def test_submit_and_receipt_through_the_dossier_service() -> None:
    from fleet.gateway import GatewayConfig, build_dossier_service

    service = build_dossier_service(GatewayConfig())
    sid = str(uuid.uuid4())
    first = service.call("submit", {"submission_id": sid, "procedure": "cu-thuong-tru", "fee": 1}, "kiosk-1")
    again = service.call("submit", {"submission_id": sid, "procedure": "cu-thuong-tru"}, "kiosk-1")
    assert again == first and first["fee"] == 10000  # the fee table's, not the device's
    assert first["payment"] == "unpaid" and parse(first["vietqr"]).reference == first["code"]
    assert service.call("receipt", {"code": first["code"]}, "kiosk-1")["payment"] == "unpaid"
    with pytest.raises(RpcBadRequest):
        service.call("submit", {"submission_id": "x", "procedure": "cu-thuong-tru"}, "kiosk-1")
    with pytest.raises(RpcBadRequest):
        service.call("receipt", {"code": "000.00.01.H26-260101-0042"}, "kiosk-1")


def test_a_submitted_dossier_is_found_by_lookup_as_received() -> None:
    from fleet.gateway import DossierNotFound, GatewayConfig, build_dossier_service

    service = build_dossier_service(GatewayConfig())
    params = {
        "submission_id": str(uuid.uuid4()),
        "procedure": "cu-thuong-tru",
        "procedure_name": "Đăng ký thường trú",
    }
    code = service.call("submit", params, "kiosk-1")["code"]
    found = service.call("lookup", {"code": code.lower()}, "kiosk-1")
    assert found["code"] == code and found["status"] == "received" and found["status_vi"] == "Đã tiếp nhận"
    assert found["procedure"] == "Đăng ký thường trú" and "VietQR" in (found["note"] or "")
    assert (
        found["received_date"]
        == f"20{code.split('-')[-2][:2]}-{code.split('-')[-2][2:4]}-{code.split('-')[-2][4:]}"
    )
    with pytest.raises(DossierNotFound):
        service.call("lookup", {"code": "000.00.01.H26-260101-0042"}, "kiosk-1")


def test_pages_are_uploaded_one_by_one_checked_and_required_before_submit() -> None:
    import base64
    import hashlib

    from fleet.gateway import GatewayConfig, build_dossier_service

    service = build_dossier_service(GatewayConfig())
    sid = str(uuid.uuid4())
    jpeg = b"\xff\xd8" + b"page" * 100
    sha = hashlib.sha256(jpeg).hexdigest()
    page = {"submission_id": sid, "sha256": sha, "jpeg": base64.b64encode(jpeg).decode()}
    submit = {
        "submission_id": sid,
        "procedure": "ht-khai-sinh",
        "pages": [{"document": "a", "page": 1, "sha256": sha}],
    }
    with pytest.raises(RpcBadRequest, match="not uploaded"):
        service.call("submit", submit, "kiosk-1")
    assert service.call("pages", {"submission_id": sid}, "kiosk-1") == {"held": []}
    assert service.call("upload_page", page, "kiosk-1") == {"held": 1}
    assert service.call("upload_page", page, "kiosk-1") == {"held": 1}  # a resent page is kept once
    assert service.call("pages", {"submission_id": sid}, "kiosk-1") == {"held": [sha]}
    assert service.call("submit", submit, "kiosk-1")["code"]
    for bad, why in (
        (dict(page, sha256="0" * 64), "damaged"),
        (dict(page, jpeg="not base64!"), "base64"),
        (
            dict(
                page, jpeg=base64.b64encode(b"GIF89a").decode(), sha256=hashlib.sha256(b"GIF89a").hexdigest()
            ),
            "JPEG",
        ),
        (dict(page, jpeg=base64.b64encode(b"\xff\xd8" + bytes(200_000)).decode()), "JPEG"),
    ):
        with pytest.raises(RpcBadRequest, match=why):
            service.call("upload_page", bad, "kiosk-1")
