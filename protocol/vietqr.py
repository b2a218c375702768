"""VietQR (NAPAS 247) payloads: the EMVCo merchant-presented QR a resident pays a fee with.

Pure encoder and parser. A payload is a string of TLV fields (two-digit id, two-digit length,
value), sub-fields nested the same way, closed by field 63: the CRC-16/CCITT-FALSE (poly 0x1021,
init 0xFFFF) of everything before it including ``6304``, as four upper-case hex digits.

Fields written (NAPAS "VietQR" specification, EMVCo MPM 1.1):

- ``00`` payload format ``01``; ``01`` point of initiation ``12`` (dynamic: it carries an amount);
- ``38`` merchant account: ``00`` GUID ``A000000727`` (NAPAS), ``01`` beneficiary
  (``00`` acquirer BIN, six digits; ``01`` account number), ``02`` service ``QRIBFTTA``
  (transfer to an account);
- ``53`` currency ``704`` (VND); ``54`` amount (whole đồng); ``58`` country ``VN``;
- ``62`` additional data: ``01`` bill number and ``08`` purpose, both the dossier code, so the
  gateway matches the incoming transfer to the dossier.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from protocol.crc16 import Crc16

NAPAS_GUID = "A000000727"
SERVICE_TO_ACCOUNT = "QRIBFTTA"
CURRENCY_VND = "704"
MAX_PAYLOAD = 512
MAX_SUBFIELD = 25
"""EMVCo caps each field of the additional data template (62) at 25 characters."""
_REFERENCE_RE = re.compile(r"[0-9A-Za-z.\- ]{1,25}")
_ACCOUNT_RE = re.compile(r"[0-9A-Za-z]{1,19}")


class VietQRError(ValueError):
    """A payload is not a well-formed VietQR, or the values asked for cannot be encoded."""


@dataclass(frozen=True)
class VietQR:
    bin: str
    """Six-digit acquirer (bank) identifier of the city's collection account."""
    account: str
    amount: int
    """Whole đồng, > 0."""
    reference: str
    """The dossier code the transfer pays for."""


def crc16_ccitt(data: bytes) -> int:
    """CRC-16/CCITT-FALSE, as EMVCo QR payloads end with (protocol.crc16)."""
    return Crc16()(data)


def _tlv(tag: str, value: str) -> str:
    if len(value) > 99:
        raise VietQRError(f"field {tag} is longer than 99 characters")
    return f"{tag}{len(value):02d}{value}"


def parse_tlv(text: str) -> list[tuple[str, str]]:
    """Split ``text`` into (id, value) pairs; VietQRError when a length runs past the end."""
    fields: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        head = text[pos : pos + 4]
        if len(head) < 4 or not head.isascii() or not head.isdigit():
            raise VietQRError(f"bad field header at offset {pos}")
        size = int(head[2:])
        value = text[pos + 4 : pos + 4 + size]
        if len(value) != size:
            raise VietQRError(f"field {head[:2]} runs past the end of the payload")
        fields.append((head[:2], value))
        pos += 4 + size
    return fields


def encode(qr: VietQR) -> str:
    """The payload string to draw as a QR code."""
    if not (len(qr.bin) == 6 and qr.bin.isascii() and qr.bin.isdigit()):
        raise VietQRError("the bank BIN must be six digits")
    if not _ACCOUNT_RE.fullmatch(qr.account):
        raise VietQRError("the account number must be 1-19 letters or digits")
    if not 0 < qr.amount < 10**13:
        raise VietQRError("the amount must be a positive whole number of đồng (at most 13 digits)")
    if not _REFERENCE_RE.fullmatch(qr.reference):
        raise VietQRError("the reference must be 1-25 letters, digits, dots, dashes or spaces")
    beneficiary = _tlv("00", qr.bin) + _tlv("01", qr.account)
    merchant = _tlv("00", NAPAS_GUID) + _tlv("01", beneficiary) + _tlv("02", SERVICE_TO_ACCOUNT)
    additional = _tlv("01", qr.reference) + _tlv("08", qr.reference)
    body = (
        _tlv("00", "01")
        + _tlv("01", "12")
        + _tlv("38", merchant)
        + _tlv("53", CURRENCY_VND)
        + _tlv("54", str(qr.amount))
        + _tlv("58", "VN")
        + _tlv("62", additional)
        + "6304"
    )
    return f"{body}{crc16_ccitt(body.encode('ascii')):04X}"


def parse(text: str) -> VietQR:
    """Check structure and CRC of a payment payload and read back what it pays; VietQRError if not."""
    if not isinstance(text, str) or len(text) > MAX_PAYLOAD or not text.isascii():
        raise VietQRError("not a VietQR payload")
    if len(text) < 8 or text[-8:-4] != "6304":
        raise VietQRError("the payload does not end with its CRC (field 63)")
    stated = text[-4:]
    if not re.fullmatch(r"[0-9A-F]{4}", stated):
        raise VietQRError("the CRC is not four upper-case hex digits")
    if int(stated, 16) != crc16_ccitt(text[:-4].encode("ascii")):
        raise VietQRError("CRC mismatch: the payload was damaged")
    fields = parse_tlv(text)
    tags = [tag for tag, _ in fields]
    if tags[0] != "00" or fields[0][1] != "01" or tags[-1] != "63":
        raise VietQRError("the payload must start with field 00 = 01 and end with field 63")
    if len(set(tags)) != len(tags):
        raise VietQRError("a field appears twice")
    top = dict(fields)
    if top.get("53") != CURRENCY_VND or top.get("58") != "VN":
        raise VietQRError("not a payment in đồng in Việt Nam")
    merchant = dict(parse_tlv(top.get("38", "")))
    if merchant.get("00") != NAPAS_GUID:
        raise VietQRError("not a NAPAS 247 (VietQR) account")
    beneficiary = dict(parse_tlv(merchant.get("01", "")))
    amount_text = top.get("54", "")
    if not re.fullmatch(r"[1-9][0-9]{0,12}", amount_text):
        raise VietQRError("the amount is missing or not a whole number of đồng")
    additional = dict(parse_tlv(top.get("62", "")))
    reference = additional.get("08") or additional.get("01") or ""
    try:
        qr = VietQR(beneficiary.get("00", ""), beneficiary.get("01", ""), int(amount_text), reference)
        return _checked(qr)
    except VietQRError as exc:
        raise VietQRError(f"payload fields are not valid: {exc}") from None


def _checked(qr: VietQR) -> VietQR:
    encode(qr)  # the same rules as when writing
    return qr
