"""VietQR fee payloads: EMVCo structure (ids, lengths, nesting), CRC-16/CCITT-FALSE, round trip;
any damage is refused; arbitrary input never crashes the parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.vietqr import VietQR, VietQRError, crc16_ccitt, encode, parse, parse_tlv

CODE = "000.00.01.H26-260930-0012"


def test_crc_matches_the_published_check_value() -> None:
    assert crc16_ccitt(b"123456789") == 0x29B1  # CRC-16/CCITT-FALSE check value


def test_payload_structure_field_by_field() -> None:
    payload = encode(VietQR("970415", "113366668888", 50000, CODE))
    fields = parse_tlv(payload)
    assert [tag for tag, _ in fields] == ["00", "01", "38", "53", "54", "58", "62", "63"]
    top = dict(fields)
    assert top["00"] == "01" and top["01"] == "12" and top["53"] == "704" and top["58"] == "VN"
    assert top["54"] == "50000"
    merchant = dict(parse_tlv(top["38"]))
    assert merchant == {"00": "A000000727", "01": "00069704150112113366668888", "02": "QRIBFTTA"}
    assert dict(parse_tlv(top["62"])) == {"01": CODE, "08": CODE}
    assert payload[-8:-4] == "6304"
    assert int(payload[-4:], 16) == crc16_ccitt(payload[:-4].encode())


qrs = st.builds(
    VietQR,
    st.from_regex(r"[0-9]{6}", fullmatch=True),
    st.from_regex(r"[0-9A-Za-z]{1,19}", fullmatch=True),
    st.integers(1, 10**13 - 1),
    st.from_regex(r"[0-9A-Za-z.\-]{1,25}", fullmatch=True),
)


@given(qrs)
def test_round_trip(qr: VietQR) -> None:
    payload = encode(qr)
    assert payload.isascii()
    assert parse(payload) == qr


@given(qrs, st.data())
def test_any_changed_character_is_refused(qr: VietQR, data: st.DataObject) -> None:
    payload = encode(qr)
    index = data.draw(st.integers(0, len(payload) - 1))
    replacement = data.draw(st.sampled_from("0123456789ABCDEFX.-").filter(lambda c: c != payload[index]))
    damaged = payload[:index] + replacement + payload[index + 1 :]
    with pytest.raises(VietQRError):
        parse(damaged)


@settings(max_examples=500)
@given(st.one_of(st.text(), st.text("0123456789ABCDEF"), qrs.map(encode).map(lambda p: p[:-12] + p[-4:])))
def test_arbitrary_text_is_refused_cleanly(text: str) -> None:
    try:
        qr = parse(text)
    except VietQRError:
        return
    assert parse(encode(qr)) == qr  # anything accepted is a payment the encoder could have written


@pytest.mark.parametrize(
    "qr",
    [
        VietQR("97041", "1", 1, CODE),
        VietQR("970415", "", 1, CODE),
        VietQR("970415", "1", 0, CODE),
        VietQR("970415", "1", 10**13, CODE),
        VietQR("970415", "1", 1, CODE + "X"),
        VietQR("970415", "1", 1, "Lệ phí"),
    ],
)
def test_values_that_cannot_be_encoded(qr: VietQR) -> None:
    with pytest.raises(VietQRError):
        encode(qr)
