"""CCCD QR and dossier-code parsers: known cases, every rejection reason, and hypothesis."""

from __future__ import annotations

import copy
import json
import pickle
from datetime import date, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiosk_ui.parsers import (
    CENTURY_SEX_DIGITS,
    PROVINCE_CODES,
    CitizenIdentity,
    ParseError,
    Sex,
    parse_cccd,
    parse_dossier_code,
)

TODAY = date(2026, 11, 22)
NAME = "Nguyễn Thị Minh Khai"
ADDRESS = "Số 12 ngõ 34 Khương Đình, Thanh Xuân, Hà Nội"
GOOD_ID = "001188012345"  # Hà Nội, female born in the 1900s, year 88
GOOD = f"{GOOD_ID}|123456789|{NAME}|15031988|Nữ|{ADDRESS}|10052021"


def cccd(**overrides: str) -> str:
    fields = {
        "id": GOOD_ID,
        "old": "123456789",
        "name": NAME,
        "birth": "15031988",
        "sex": "Nữ",
        "address": ADDRESS,
        "issue": "10052021",
    }
    fields.update(overrides)
    return "|".join(fields.values())


def test_a_real_layout_parses() -> None:
    person = parse_cccd(GOOD, today=TODAY)
    assert person.id_number == GOOD_ID
    assert person.masked_id == "001*****2345"
    assert person.name == NAME
    assert person.birth_date == date(1988, 3, 15)
    assert person.sex is Sex.FEMALE and person.sex.label_vi == "Nữ"
    assert person.address == ADDRESS
    assert person.issue_date == date(2021, 5, 10)
    assert person.province == "Hà Nội"
    assert person.extra_fields == ()


def test_the_province_table_is_decree_137() -> None:
    assert len(PROVINCE_CODES) == 63
    assert PROVINCE_CODES["001"] == "Hà Nội" and PROVINCE_CODES["079"] == "Hồ Chí Minh"
    assert PROVINCE_CODES["096"] == "Cà Mau" and "003" not in PROVINCE_CODES


def test_repr_and_str_leak_neither_id_nor_name() -> None:
    person = parse_cccd(GOOD, today=TODAY)
    for text in (repr(person), str(person), f"{person}", "%s" % (person,)):  # noqa: UP031
        assert GOOD_ID not in text and "Nguyễn" not in text and "Khai" not in text
        assert "001*****2345" in text


def test_personal_data_refuses_pickle_and_copy() -> None:
    person = parse_cccd(GOOD, today=TODAY)
    with pytest.raises(TypeError):
        pickle.dumps(person)
    with pytest.raises(TypeError):
        copy.deepcopy(person)


def test_wipe_clears_every_field() -> None:
    person = parse_cccd(GOOD + "|extra", today=TODAY)
    person.wipe()
    assert person.wiped and person.id_number == "" and person.masked_id == ""
    assert person.name == "" and person.address == "" and person.old_id_number == ""
    assert person.birth_date is None and person.issue_date is None and person.sex is None
    assert person.extra_fields == () and person.province == ""
    assert repr(person) == "CitizenIdentity(<wiped>)"
    assert set(person.to_session_dict().values()) <= {"", None}


def test_session_dict_shows_masked_id_only() -> None:
    shown = parse_cccd(GOOD, today=TODAY).to_session_dict()
    assert shown["masked_id"] == "001*****2345" and GOOD_ID not in json.dumps(shown, ensure_ascii=False)
    assert shown["birth_date"] == "1988-03-15" and shown["sex_vi"] == "Nữ"


def test_extra_fields_nul_bytes_and_spaces_are_tolerated() -> None:
    noisy = "\x00 " + GOOD.replace("|", " |\x00") + "|Hà Nội|\x00 \r\n"
    person = parse_cccd(noisy, today=TODAY)
    assert person.id_number == GOOD_ID and person.name == NAME
    assert person.extra_fields == ("Hà Nội", "")


def test_decomposed_unicode_is_normalised_to_nfc() -> None:
    import unicodedata

    person = parse_cccd(unicodedata.normalize("NFD", GOOD), today=TODAY)
    assert person.name == NAME


def test_old_id_may_be_empty() -> None:
    assert parse_cccd(cccd(old=""), today=TODAY).old_id_number == ""


REJECTIONS = [
    ("too few fields", "|".join(GOOD.split("|")[:6]), None),
    ("id too short", cccd(id="00118801234"), "id_number"),
    ("id with letters", cccd(id="00118801234A"), "id_number"),
    ("unknown province 003", cccd(id="003188012345"), "id_number"),
    ("unknown province 097", cccd(id="097188012345"), "id_number"),
    ("sex digit says male", cccd(id="001088012345"), "id_number"),
    ("century digit says 2000s", cccd(id="001388012345"), "id_number"),
    ("year digits disagree", cccd(id="001187012345"), "id_number"),
    ("old id of 8 digits", cccd(old="12345678"), "old_id_number"),
    ("empty name", cccd(name=""), "name"),
    ("name with digits", cccd(name="Nguyễn Văn 2"), None),
    ("31 February", cccd(birth="31021988"), "birth_date"),
    ("birth not 8 digits", cccd(birth="1531988"), "birth_date"),
    ("sex neither Nam nor Nữ", cccd(sex="X"), "sex"),
    ("issue before birth", cccd(issue="01011980"), "issue_date"),
    ("issue in the future", cccd(issue="01012027"), "issue_date"),
    ("issue 30 February", cccd(issue="30022021"), "issue_date"),
    ("birth in the future", cccd(id="001327012345", birth="01012027"), "birth_date"),
    ("empty", " \x00 ", None),
]


@pytest.mark.parametrize(("why", "text", "field"), REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_bad_cards_are_rejected_with_reasons_in_both_languages(
    why: str, text: str, field: str | None
) -> None:
    with pytest.raises(ParseError) as caught:
        parse_cccd(text, today=TODAY)
    error = caught.value
    assert error.reason_vi and error.reason_en and str(error) == error.reason_en
    if field is not None:
        assert error.field == field
    for secret in (GOOD_ID, "Nguyễn", NAME):  # reasons never quote what was scanned
        assert secret not in error.reason_vi and secret not in error.reason_en


def test_a_2000s_male_card_parses() -> None:
    person = parse_cccd(cccd(id="079204000123", birth="29022004", sex="nam", issue="01032020"), today=TODAY)
    assert (
        person.sex is Sex.MALE and person.birth_date == date(2004, 2, 29) and person.province == "Hồ Chí Minh"
    )


# ---------------------------------------------------------------- hypothesis: CCCD


def latin1(data: bytes) -> str:
    return data.decode("latin-1")


names = st.lists(
    st.sampled_from(["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Thị", "Văn", "Đức", "Ánh", "Ngọc", "Quỳnh"]),
    min_size=1,
    max_size=5,
).map(" ".join)
addresses = st.text(
    st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Zl", "Zp"), blacklist_characters="|"),
    max_size=120,
).map(lambda s: __import__("unicodedata").normalize("NFC", s).strip())


@st.composite
def valid_cards(draw: st.DrawFn) -> tuple[str, dict[str, object]]:
    birth = draw(st.dates(min_value=date(1900, 1, 1), max_value=TODAY - timedelta(days=1)))
    issue = draw(st.dates(min_value=birth, max_value=TODAY))
    sex = draw(st.sampled_from([Sex.MALE, Sex.FEMALE]))
    digit = next(
        d for d, (c, s) in CENTURY_SEX_DIGITS.items() if c == birth.year // 100 * 100 and s == sex.value
    )
    id_number = (
        draw(st.sampled_from(sorted(PROVINCE_CODES)))
        + digit
        + f"{birth.year % 100:02d}"
        + draw(st.text("0123456789", min_size=6, max_size=6))
    )
    old = draw(st.one_of(st.just(""), st.text("0123456789", min_size=9, max_size=9)))
    name = draw(names)
    address = draw(addresses)
    extra = draw(st.lists(st.text("abcđê 0123", max_size=10), max_size=3))
    fields = [id_number, old, name, birth.strftime("%d%m%Y"), sex.label_vi, address, issue.strftime("%d%m%Y")]
    expected = {"id": id_number, "name": name, "birth": birth, "issue": issue, "sex": sex, "address": address}
    return "|".join(fields + extra), expected


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(valid_cards(), st.sampled_from(["", " ", "\x00", "\r\n", "\x00\x00 "]))
def test_valid_generated_cards_round_trip(card: tuple[str, dict[str, object]], noise: str) -> None:
    text, expected = card
    person = parse_cccd(noise + text + noise, today=TODAY)
    assert person.id_number == expected["id"]
    assert person.name == expected["name"]
    assert person.birth_date == expected["birth"] and person.issue_date == expected["issue"]
    assert person.sex is expected["sex"] and person.address == expected["address"]
    assert person.masked_id == f"{person.id_number[:3]}*****{person.id_number[-4:]}"
    assert person.id_number not in repr(person)


@settings(max_examples=500)
@given(
    st.one_of(st.text(), st.text("0123456789|Nam Nữ\x00 "), st.binary().map(lambda b: b.decode("latin-1")))
)
def test_arbitrary_text_raises_only_parse_error(text: str) -> None:
    try:
        person = parse_cccd(text, today=TODAY)
    except ParseError as exc:
        assert exc.reason_vi and exc.reason_en
    else:
        assert isinstance(person, CitizenIdentity)


@given(valid_cards(), st.integers(min_value=0, max_value=6))
def test_dropping_any_field_is_rejected(card: tuple[str, dict[str, object]], drop: int) -> None:
    fields = card[0].split("|")[:7]
    del fields[drop]
    with pytest.raises(ParseError):
        parse_cccd("|".join(fields), today=TODAY)


# ---------------------------------------------------------------- dossier codes

CODE = "000.00.01.H26-260930-0012"


@pytest.mark.parametrize(
    "text",
    [
        CODE,
        "  000.00.01.h26-260930-0012 \r\n",
        "000.00.01.H26 – 260930 – 0012",
        "\x00000.00.01.H26-260930-0012\x00",
        "０００.００.０１.Ｈ２６-２６０９３０-００１２",
        f"https://dichvucong.hanoi.gov.vn/tra-cuu?lang=vi&code={CODE}",
        "https://dichvucong.hanoi.gov.vn/tra-cuu?code=000.00.01.h26-260930-0012#top",
        json.dumps({"code": CODE, "v": 1}),
        ' {"code": " 000.00.01.h26-260930-0012 "} ',
    ],
)
def test_dossier_codes_are_normalised(text: str) -> None:
    assert parse_dossier_code(text, today=TODAY) == CODE


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("000.00.01.H26-261330-0012", "month 13"),
        ("000.00.01.H26-260230-0012", "30 February"),
        ("000.00.01.H26-270101-0012", "future date"),
        ("000.00.01.H26-260930-12", "short sequence"),
        ("H26-260930-0012", "agency without dots"),
        ("000.00.01.H26/260930/0012", "wrong separators"),
        ("https://dichvucong.hanoi.gov.vn/tra-cuu?id=1", "URL without code"),
        ('{"code": 12}', "JSON code not a string"),
        ('{"code": ', "broken JSON"),
        ("[" * 1500, "deep brackets"),
        ("{" + "[" * 1500, "deep JSON"),
        ("a" * 5000, "too long"),
    ],
)
def test_bad_dossier_codes_say_why(text: str, why: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse_dossier_code(text, today=TODAY)
    assert caught.value.reason_vi and caught.value.reason_en


codes = st.builds(
    lambda agency, day, seq: f"{agency}-{day:%y%m%d}-{seq:04d}",
    st.sampled_from(["000.00.01.H26", "000.20.30.H26", "000.00.13.H26", "G01.10.05"]),
    st.dates(min_value=date(2000, 1, 1), max_value=TODAY),
    st.integers(min_value=0, max_value=9999),
)


@given(
    codes,
    st.sampled_from(["{}", "https://x.gov.vn/a?code={}", '{{"code": "{}"}}', " {} \x00"]),
    st.booleans(),
)
def test_generated_codes_round_trip_through_every_wrapping(code: str, wrapping: str, lower: bool) -> None:
    text = wrapping.format(code.lower() if lower else code)
    assert parse_dossier_code(text, today=TODAY) == code


@settings(max_examples=500)
@given(
    st.one_of(
        st.text(), st.text('0123456789.-H{}"code:?=/ \x00'), st.binary().map(lambda b: b.decode("latin-1"))
    )
)
def test_arbitrary_text_never_breaks_the_code_parser(text: str) -> None:
    try:
        parse_dossier_code(text, today=TODAY)
    except ParseError as exc:
        assert exc.reason_vi and exc.reason_en
