"""Parsers for what residents scan at the kiosk: the chip ID card (CCCD) QR and dossier codes.

Both take untrusted text (from the scanner or typed) and return a value or raise
:class:`ParseError` with a reason in Vietnamese (for the screen) and English (for technicians).
Reasons never quote the scanned content: it is personal data and may end up in a log.

CCCD QR layout (fields separated by ``|``)::

    id (12 digits)|old CMND id (9 digits or empty)|full name|birth DDMMYYYY|sex|address|issue DDMMYYYY[|...]

Newer cards append fields; they are kept in ``extra_fields`` and wiped with the rest.
"""

from __future__ import annotations

import json
import re
import unicodedata
from datetime import date, timedelta
from enum import Enum
from typing import Any, NoReturn
from urllib.parse import parse_qs, urlsplit

from protocol.dossier import DOSSIER_CODE_RE, MAX_CODE_LENGTH

MAX_INPUT_CHARS = 2048
MAX_NAME_CHARS = 100
MAX_ADDRESS_CHARS = 300
CCCD_MIN_FIELDS = 7

PROVINCE_CODES: dict[str, str] = {
    "001": "Hà Nội",
    "002": "Hà Giang",
    "004": "Cao Bằng",
    "006": "Bắc Kạn",
    "008": "Tuyên Quang",
    "010": "Lào Cai",
    "011": "Điện Biên",
    "012": "Lai Châu",
    "014": "Sơn La",
    "015": "Yên Bái",
    "017": "Hòa Bình",
    "019": "Thái Nguyên",
    "020": "Lạng Sơn",
    "022": "Quảng Ninh",
    "024": "Bắc Giang",
    "025": "Phú Thọ",
    "026": "Vĩnh Phúc",
    "027": "Bắc Ninh",
    "030": "Hải Dương",
    "031": "Hải Phòng",
    "033": "Hưng Yên",
    "034": "Thái Bình",
    "035": "Hà Nam",
    "036": "Nam Định",
    "037": "Ninh Bình",
    "038": "Thanh Hóa",
    "040": "Nghệ An",
    "042": "Hà Tĩnh",
    "044": "Quảng Bình",
    "045": "Quảng Trị",
    "046": "Thừa Thiên Huế",
    "048": "Đà Nẵng",
    "049": "Quảng Nam",
    "051": "Quảng Ngãi",
    "052": "Bình Định",
    "054": "Phú Yên",
    "056": "Khánh Hòa",
    "058": "Ninh Thuận",
    "060": "Bình Thuận",
    "062": "Kon Tum",
    "064": "Gia Lai",
    "066": "Đắk Lắk",
    "067": "Đắk Nông",
    "068": "Lâm Đồng",
    "070": "Bình Phước",
    "072": "Tây Ninh",
    "074": "Bình Dương",
    "075": "Đồng Nai",
    "077": "Bà Rịa - Vũng Tàu",
    "079": "Hồ Chí Minh",
    "080": "Long An",
    "082": "Tiền Giang",
    "083": "Bến Tre",
    "084": "Trà Vinh",
    "086": "Vĩnh Long",
    "087": "Đồng Tháp",
    "089": "An Giang",
    "091": "Kiên Giang",
    "092": "Cần Thơ",
    "093": "Hậu Giang",
    "094": "Sóc Trăng",
    "095": "Bạc Liêu",
    "096": "Cà Mau",
}

# Fourth digit of the id: (century start, sex) — Circular 07/2016/TT-BCA, art. 7.
CENTURY_SEX_DIGITS: dict[str, tuple[int, str]] = {
    "0": (1900, "male"),
    "1": (1900, "female"),
    "2": (2000, "male"),
    "3": (2000, "female"),
    "4": (2100, "male"),
    "5": (2100, "female"),
    "6": (2200, "male"),
    "7": (2200, "female"),
    "8": (2300, "male"),
    "9": (2300, "female"),
}


class ParseError(ValueError):
    """Scanned or typed text is not what was expected; ``str()`` is the English reason."""

    def __init__(self, reason_vi: str, reason_en: str, *, field: str | None = None) -> None:
        super().__init__(reason_en)
        self.reason_vi = reason_vi
        self.reason_en = reason_en
        self.field = field


def _fail(reason_vi: str, reason_en: str, field: str | None = None) -> NoReturn:
    raise ParseError(reason_vi, reason_en, field=field)


class Sex(str, Enum):
    MALE = "male"
    FEMALE = "female"

    @property
    def label_vi(self) -> str:
        return "Nam" if self is Sex.MALE else "Nữ"


_SEX_WORDS = {"nam": Sex.MALE, "male": Sex.MALE, "nữ": Sex.FEMALE, "nu": Sex.FEMALE, "female": Sex.FEMALE}


def _clean(text: object, what_vi: str, what_en: str) -> str:
    if not isinstance(text, str):
        _fail(f"{what_vi}: dữ liệu không phải văn bản", f"{what_en}: input is not text")
    if len(text) > MAX_INPUT_CHARS:
        _fail(f"{what_vi}: dữ liệu quá dài", f"{what_en}: input longer than {MAX_INPUT_CHARS} characters")
    normalised = unicodedata.normalize("NFC", text)
    kept = "".join(ch for ch in normalised if unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co"))
    cleaned = kept.strip()
    if not cleaned:
        _fail(f"{what_vi}: mã trống", f"{what_en}: nothing was read")
    return cleaned


class CitizenIdentity:
    """The holder of a CCCD, in memory for one kiosk session only.

    ``repr``/``str`` show only the masked id, so an accidental log line leaks nothing; the
    object refuses to be pickled or copied; :meth:`wipe` drops every field at session end.
    """

    __slots__ = ("_address", "_birth", "_extra", "_id", "_issue", "_name", "_old_id", "_sex")

    def __init__(
        self,
        *,
        id_number: str,
        old_id_number: str,
        name: str,
        birth_date: date,
        sex: Sex,
        address: str,
        issue_date: date,
        extra_fields: tuple[str, ...] = (),
    ) -> None:
        self._id: str = id_number
        self._old_id: str = old_id_number
        self._name: str = name
        self._birth: date | None = birth_date
        self._sex: Sex | None = sex
        self._address: str = address
        self._issue: date | None = issue_date
        self._extra: tuple[str, ...] = extra_fields

    @property
    def id_number(self) -> str:
        """The full 12-digit number: pass it to the lookup that needs it, never to a log."""
        return self._id

    @property
    def masked_id(self) -> str:
        """``001*****2345``: first 3 and last 4 digits ("" once wiped)."""
        return f"{self._id[:3]}{'*' * (len(self._id) - 7)}{self._id[-4:]}" if len(self._id) >= 7 else ""

    @property
    def old_id_number(self) -> str:
        return self._old_id

    @property
    def name(self) -> str:
        return self._name

    @property
    def birth_date(self) -> date | None:
        return self._birth

    @property
    def sex(self) -> Sex | None:
        return self._sex

    @property
    def address(self) -> str:
        return self._address

    @property
    def issue_date(self) -> date | None:
        return self._issue

    @property
    def extra_fields(self) -> tuple[str, ...]:
        return self._extra

    @property
    def province(self) -> str:
        """Province of registration encoded in the id ("" once wiped)."""
        return PROVINCE_CODES.get(self._id[:3], "")

    @property
    def wiped(self) -> bool:
        return not self._id

    def wipe(self) -> None:
        """Drop every field (Python strings cannot be zeroed; the references go)."""
        self._id = self._old_id = self._name = self._address = ""
        self._birth = self._issue = None
        self._sex = None
        self._extra = ()

    def to_session_dict(self) -> dict[str, Any]:
        """What the kiosk screen shows (masked id; never the full number)."""
        return {
            "masked_id": self.masked_id,
            "name": self._name,
            "birth_date": self._birth.isoformat() if self._birth else None,
            "sex": self._sex.value if self._sex else None,
            "sex_vi": self._sex.label_vi if self._sex else None,
            "address": self._address,
            "issue_date": self._issue.isoformat() if self._issue else None,
        }

    def __repr__(self) -> str:
        if self.wiped:
            return "CitizenIdentity(<wiped>)"
        return f"CitizenIdentity(masked_id={self.masked_id!r}, name=<hidden>)"

    __str__ = __repr__

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError("CitizenIdentity holds personal data and must not be pickled or copied")


def _date(text: str, field: str, label_vi: str, label_en: str) -> date:
    if not re.fullmatch(r"[0-9]{8}", text):
        _fail(f"{label_vi} không đúng dạng ngày/tháng/năm (DDMMYYYY)", f"{label_en} is not DDMMYYYY", field)
    try:
        return date(int(text[4:]), int(text[2:4]), int(text[:2]))
    except ValueError:
        _fail(f"{label_vi} không phải ngày có thật", f"{label_en} is not a real calendar date", field)


def _check_id(id_number: str) -> None:
    if not re.fullmatch(r"[0-9]{12}", id_number):
        _fail(
            f"Số định danh phải gồm đúng 12 chữ số (đọc được {len(id_number)} ký tự)",
            f"id number must be exactly 12 digits (got {len(id_number)} characters)",
            "id_number",
        )
    if id_number[:3] not in PROVINCE_CODES:
        _fail(
            "3 chữ số đầu của số định danh không phải mã tỉnh/thành phố hợp lệ",
            "the first 3 digits of the id number are not a valid province code (Decree 137/2015)",
            "id_number",
        )


def _check_id_matches(id_number: str, birth: date, sex: Sex) -> None:
    century, digit_sex = CENTURY_SEX_DIGITS[id_number[3]]
    if birth.year // 100 * 100 != century or digit_sex != sex.value:
        _fail(
            "Chữ số thứ 4 của số định danh không khớp với giới tính và thế kỷ năm sinh",
            "the 4th digit of the id number does not match the sex and birth century",
            "id_number",
        )
    if id_number[4:6] != f"{birth.year % 100:02d}":
        _fail(
            "Chữ số thứ 5-6 của số định danh không khớp với năm sinh",
            "digits 5-6 of the id number do not match the birth year",
            "id_number",
        )


def _check_name(name: str) -> None:
    if not name:
        _fail("Họ và tên trống", "full name is empty", "name")
    if len(name) > MAX_NAME_CHARS or any(ch.isdigit() for ch in name) or not any(ch.isalpha() for ch in name):
        _fail("Họ và tên không hợp lệ", "full name has digits, no letters or is too long", "name")


def _sex(text: str) -> Sex:
    sex = _SEX_WORDS.get(text.casefold())
    if sex is None:
        _fail("Giới tính phải là Nam hoặc Nữ", "sex must be 'Nam' or 'Nữ'", "sex")
    return sex


def parse_cccd(text: str, *, today: date | None = None) -> CitizenIdentity:
    """Parse the QR printed on a chip ID card (CCCD); ``today`` defaults to the local date."""
    today = today or date.today()
    fields = [part.strip() for part in _clean(text, "Mã QR CCCD", "CCCD QR").split("|")]
    if len(fields) < CCCD_MIN_FIELDS:
        _fail(
            f"Mã QR không phải của thẻ CCCD (có {len(fields)} trường, cần ít nhất {CCCD_MIN_FIELDS})",
            f"not a CCCD QR: {len(fields)} fields, at least {CCCD_MIN_FIELDS} needed",
        )
    id_number, old_id, name, birth_text, sex_text, address, issue_text = fields[:CCCD_MIN_FIELDS]
    _check_id(id_number)
    if old_id and not re.fullmatch(r"[0-9]{9}|[0-9]{12}", old_id):
        _fail("Số CMND cũ phải gồm 9 chữ số", "old id (CMND) must be empty or 9 digits", "old_id_number")
    _check_name(name)
    birth = _date(birth_text, "birth_date", "Ngày sinh", "birth date")
    if birth > today:
        _fail("Ngày sinh ở tương lai", "birth date is in the future", "birth_date")
    sex = _sex(sex_text)
    _check_id_matches(id_number, birth, sex)
    if len(address) > MAX_ADDRESS_CHARS:
        _fail("Địa chỉ quá dài", f"address longer than {MAX_ADDRESS_CHARS} characters", "address")
    issue = _date(issue_text, "issue_date", "Ngày cấp", "issue date")
    if issue < birth:
        _fail("Ngày cấp trước ngày sinh", "issue date is before the birth date", "issue_date")
    if issue > today:
        _fail("Ngày cấp ở tương lai", "issue date is in the future", "issue_date")
    return CitizenIdentity(
        id_number=id_number,
        old_id_number=old_id,
        name=name,
        birth_date=birth,
        sex=sex,
        address=address,
        issue_date=issue,
        extra_fields=tuple(fields[CCCD_MIN_FIELDS:]),
    )


_DASHES = dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63\uff0d"), "-")


def _code_from_json(text: str) -> str:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        _fail("mã QR biên nhận không đọc được", "the receipt QR cannot be read")
    code = obj.get("code") if isinstance(obj, dict) else None
    if not isinstance(code, str):
        _fail("mã QR biên nhận không chứa mã", "the receipt QR does not contain one")
    return code


def _code_from_url(text: str) -> str:
    try:
        query = urlsplit(text).query
    except ValueError:
        _fail("mã QR biên nhận không đọc được", "the receipt QR cannot be read")
    codes = parse_qs(query).get("code")
    if not codes:
        _fail("mã QR biên nhận không chứa mã", "the receipt QR does not contain one")
    return codes[0]


EXAMPLE_DOSSIER_CODE = "000.00.01.H26-260930-0012"
"""Shown to residents in place of the internal pattern AGENCY-YYMMDD-NNNN."""


def parse_dossier_code(text: str, *, today: date | None = None) -> str:
    """Normalise a dossier code (typed, or from a receipt QR: bare code, URL ``?code=`` or JSON)."""
    today = today or date.today()
    try:
        raw = _clean(text, "Mã hồ sơ", "dossier code")
    except ParseError as exc:  # the screen already names the dossier code: keep only the predicate
        _fail(exc.reason_vi.removeprefix("Mã hồ sơ: "), exc.reason_en.removeprefix("dossier code: "))
    cleaned = unicodedata.normalize("NFKC", raw)
    if cleaned.startswith("{"):
        cleaned = _code_from_json(cleaned)
    elif "://" in cleaned or cleaned.lower().startswith("www."):
        cleaned = _code_from_url(cleaned)
    code = "".join(cleaned.translate(_DASHES).split()).upper()
    code = "".join(ch for ch in code if unicodedata.category(ch) not in ("Cc", "Cf"))
    if not code:
        _fail("chưa nhập mã", "nothing was entered")
    match = DOSSIER_CODE_RE.fullmatch(code) if len(code) <= MAX_CODE_LENGTH else None
    if match is None:
        _fail(
            f"cần có dạng như {EXAMPLE_DOSSIER_CODE}",
            f"it should look like {EXAMPLE_DOSSIER_CODE}",
        )
    stamp = match["date"]
    try:
        received = date(2000 + int(stamp[:2]), int(stamp[2:4]), int(stamp[4:]))
    except ValueError:
        _fail(
            "ngày trong mã không có thật",
            "the date in it is not a real date",
        )
    if received > today + timedelta(days=1):
        _fail("ngày trong mã ở tương lai", "the date in it is in the future")
    return code
