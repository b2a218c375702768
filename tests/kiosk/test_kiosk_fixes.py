"""Fixes from a first look at the kiosk (issue 14): an underway dossier never shows the green check
that reads as done; the invalid-code message names the dossier code once; no internal pattern
(AGENCY-YYMMDD-NNNN) reaches a resident, an example does."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiosk_ui.core import with_reason
from kiosk_ui.i18n import Lang
from kiosk_ui.parsers import EXAMPLE_DOSSIER_CODE, ParseError, parse_dossier_code
from kiosk_ui.render import Renderer
from kiosk_ui.views import dossier_view

TODAY = date(2026, 11, 22)
CHECK_PATH = "m4 12 5 5L20 6"  # the ✓ icon's path in _icons.html
PATTERNS = ("AGENCY", "YYMMDD", "NNNN", "DDMMYYYY")


def lookup_html(status: str, lang: Lang) -> str:
    dossier: dict[str, Any] = {
        "code": "000.00.01.H26-260930-0012",
        "procedure": "Đăng ký khai sinh",
        "status": status,
        "status_vi": "Đang xử lý",
        "status_en": "Processing",
    }
    renderer = Renderer({"vi": "Phường", "en": "Ward"})
    context = {
        "d": dossier_view(dossier, lang),
        "busy": False,
        "message": None,
        "message_other": None,
        "code": "",
        "print_message": None,
        "print_message_other": None,
        "print_kind": "info",
    }
    return renderer.screen("lookup", lang, context)


@pytest.mark.parametrize("lang", ["vi", "en"])
@pytest.mark.parametrize("status", ["processing", "received"])
def test_an_underway_dossier_has_no_green_check(status: str, lang: Lang) -> None:
    html = lookup_html(status, lang)
    assert "status-progress" in html
    assert "status-good" not in html
    assert CHECK_PATH not in html


@pytest.mark.parametrize("status", ["ready", "returned"])
def test_a_finished_dossier_keeps_its_check(status: str) -> None:
    html = lookup_html(status, "vi")
    assert "status-good" in html and CHECK_PATH in html


def invalid_message(text: str) -> tuple[str, str] | None:
    try:
        parse_dossier_code(text, today=TODAY)
    except ParseError as exc:
        return with_reason("lookup.invalid", exc)
    return None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "000.00.01.H26/260930/0012",
        "000.00.01.H26-261330-0012",
        "000.00.01.H26-270101-0012",
        "https://dichvucong.hanoi.gov.vn/tra-cuu?id=1",
        '{"code": 12}',
        '{"code": ',
        "a" * 5000,
    ],
)
def test_the_invalid_code_message_names_the_code_once(text: str) -> None:
    message = invalid_message(text)
    assert message is not None
    vi, en = message
    assert vi.casefold().count("mã hồ sơ") == 1, vi
    assert en.casefold().count("dossier code") == 1, en
    assert not any(pattern in vi + en for pattern in PATTERNS), message


def test_the_format_error_shows_an_example_in_both_languages() -> None:
    assert invalid_message("000.00.01.H26/260930/0012") == (
        f"Mã hồ sơ chưa đúng: cần có dạng như {EXAMPLE_DOSSIER_CODE}",
        f"The dossier code is not valid: it should look like {EXAMPLE_DOSSIER_CODE}",
    )


@settings(max_examples=300)
@given(
    st.one_of(
        st.text(),
        st.text('0123456789.-H{}"code:?=/ \x00'),
        st.from_regex(r"[0-9.H]{3,14}-\d{6}-\d{2,5}"),
    )
)
def test_no_invalid_code_message_repeats_itself_or_leaks_a_pattern(text: str) -> None:
    message = invalid_message(text)
    if message is None:
        return
    vi, en = message
    assert vi.casefold().count("mã hồ sơ") == 1, vi
    assert en.casefold().count("dossier code") == 1, en
    assert not any(pattern in vi + en for pattern in PATTERNS), message
