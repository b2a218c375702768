"""Submission forms in the signed catalogue: schema, pre-fill from the card, bilingual validation."""

from __future__ import annotations

import copy
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from kiosk_helpers import CCCD_ADDRESS, CCCD_ID, CCCD_NAME, CCCD_PAYLOAD
from test_kiosk_content import _enrol

from fleet.gateway.service import DEMO_FEES
from kiosk_ui.content import Catalogue, load_shipped
from kiosk_ui.contentfeed import ContentFeed
from kiosk_ui.contentsign import sign_content
from kiosk_ui.forms import Form, check_pages, prefill, validate_form
from kiosk_ui.parsers import parse_cccd

TODAY = date(2026, 12, 5)
SUBMITTABLE = ("ht-khai-sinh", "cu-thuong-tru", "ct-ban-sao", "ht-tinh-trang-hon-nhan", "ht-khai-tu")


def shipped() -> Catalogue:
    return Catalogue.model_validate(load_shipped("catalogue.json"))


def form_of(procedure_id: str) -> Form:
    form = {p.id: p for p in shipped().procedures}[procedure_id].form
    assert form is not None
    return form


def test_five_ward_procedures_have_real_bilingual_forms() -> None:
    forms = {p.id: p.form for p in shipped().procedures if p.form is not None}
    assert set(SUBMITTABLE) <= set(forms)
    for pid, form in forms.items():
        assert form is not None
        assert len(form.fields) >= 5, pid
        assert any(f.required for f in form.fields), pid
        for f in form.fields:
            assert f.label["vi"].strip() and f.label["en"].strip(), (pid, f.id)
        for d in form.documents:
            assert d.name["vi"].strip() and d.name["en"].strip(), (pid, d.id)
        # the fee the kiosk announces is the one the gateway will ask
        assert (form.fee_vnd or 0) == DEMO_FEES.get(pid, 0), pid
    assert {f.prefill for f in forms["cu-thuong-tru"].fields if f.prefill} == {
        "name",
        "birth_date",
        "sex",
        "id_number",
    }
    assert forms["ht-khai-sinh"].documents[0].name["vi"] == "Giấy chứng sinh"


def test_the_card_prefills_name_birth_date_sex_address_and_id() -> None:
    person = parse_cccd(CCCD_PAYLOAD, today=TODAY)
    values = prefill(form_of("ht-tinh-trang-hon-nhan"), person)
    assert values["ho_ten"] == CCCD_NAME and values["ngay_sinh"] == "15/08/1999"
    assert values["gioi_tinh"] == "Nữ" and values["so_dinh_danh"] == CCCD_ID
    assert values["noi_cu_tru"] == CCCD_ADDRESS and values["tinh_trang_hon_nhan"] == ""
    person.wipe()
    assert set(prefill(form_of("ht-tinh-trang-hon-nhan"), person).values()) == {""}


def test_each_wrong_field_gets_its_own_message_in_both_languages() -> None:
    form = form_of("cu-thuong-tru")
    values = prefill(form, parse_cccd(CCCD_PAYLOAD, today=TODAY))
    errors = validate_form(form, values, TODAY)
    assert set(errors) == {"so_dien_thoai", "chu_ho_ho_ten", "quan_he_chu_ho", "noi_dung_de_nghi"}
    assert errors["so_dien_thoai"] == (
        "Vui lòng nhập “Số điện thoại liên hệ”.",
        "Please fill in “Contact phone number”.",
    )
    values.update(
        so_dien_thoai="09123",
        chu_ho_ho_ten="Nguyễn Văn 3",
        quan_he_chu_ho="Bạn",
        noi_dung_de_nghi="Số 5 ngõ 7 phố Khương Trung, phường Khương Đình, Hà Nội",
        ngay_sinh="31/02/1999",
    )
    errors = validate_form(form, values, TODAY)
    assert set(errors) == {"so_dien_thoai", "chu_ho_ho_ten", "quan_he_chu_ho", "ngay_sinh"}
    assert "0912345678" in errors["so_dien_thoai"][0] and "0912345678" in errors["so_dien_thoai"][1]
    assert "chữ cái" in errors["chu_ho_ho_ten"][0] and "letters" in errors["chu_ho_ho_ten"][1]
    assert "15/08/1999" in errors["ngay_sinh"][0] and "day/month/year" in errors["ngay_sinh"][1]
    for vi, en in errors.values():
        assert vi != en and "“" in vi and "“" in en  # each names its field
    values.update(so_dien_thoai="0912 345 678", chu_ho_ho_ten="Nguyễn Văn Bình", quan_he_chu_ho="Con")
    values["ngay_sinh"] = "15/08/2027"
    assert "tương lai" in validate_form(form, values, TODAY)["ngay_sinh"][0]
    values["ngay_sinh"] = "15/08/1999"
    assert validate_form(form, values, TODAY) == {}


def test_pages_per_document_are_checked() -> None:
    form = form_of("ht-khai-sinh")
    assert set(check_pages(form, {})) == {"giay_chung_sinh"}
    assert check_pages(form, {"giay_chung_sinh": 2}) == {}
    too_many = check_pages(form, {"giay_chung_sinh": 3})
    assert "tối đa 2" in too_many["giay_chung_sinh"][0] and "at most 2" in too_many["giay_chung_sinh"][1]


@given(st.dictionaries(st.sampled_from([f.id for f in form_of("ht-khai-tu").fields]), st.text(max_size=60)))
def test_validation_answers_any_input_with_messages_never_an_exception(values: dict[str, str]) -> None:
    errors = validate_form(form_of("ht-khai-tu"), values, TODAY)
    assert all(isinstance(vi, str) and isinstance(en, str) and vi and en for vi, en in errors.values())


def _with_form(form: dict[str, Any]) -> dict[str, Any]:
    doc = load_shipped("catalogue.json")
    doc = copy.deepcopy(doc)
    doc["version"] = 30
    doc["procedures"][0]["form"] = form
    return doc


def test_a_signed_catalogue_carries_forms_and_a_malformed_form_is_refused(tmp_path: Path) -> None:
    key, kid = _enrol(tmp_path)
    form = {
        "fields": [
            {"id": "ho_ten", "type": "name", "label": {"vi": "Họ tên", "en": "Name"}, "required": True}
        ],
        "documents": [
            {"id": "to_khai", "name": {"vi": "Tờ khai", "en": "Form"}, "pages_min": 1, "pages_max": 1}
        ],
        "fee_vnd": 5000,
    }
    feed = ContentFeed(tmp_path)
    assert feed.apply_desired({"catalogue": sign_content(_with_form(form), key, kid)}) == ["catalogue"]
    first = feed.index.by_id[feed.index.catalogue.procedures[0].id]
    assert first.form is not None and first.form.fee_vnd == 5000
    bad = dict(form, fields=[{"id": "x", "type": "choice", "label": {"vi": "X", "en": "X"}}])
    with pytest.raises(ValueError, match="options"):
        sign_content(_with_form(bad), key, kid)
    other = Ed25519PrivateKey.generate()
    doc = _with_form(
        dict(form, documents=[{"id": "a", "name": {"vi": "A", "en": "A"}, "pages_min": 3, "pages_max": 1}])
    )
    doc["version"] = 31
    from protocol.signing import sign

    assert feed.apply_desired({"catalogue": sign(doc, key, kid)}) == []
    assert "pages_min" in (feed.status()["catalogue_error"] or "")
    assert feed.apply_desired({"catalogue": sign(dict(doc, version=32), other, kid)}) == []
