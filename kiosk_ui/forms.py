"""Submission forms of the catalogue: the schema each procedure carries, pre-fill and validation.

A procedure that can be submitted at the kiosk carries ``form`` in the signed catalogue::

    "form": {
      "fields": [{"id": "ho_ten", "type": "text", "label": {"vi": "Họ, chữ đệm, tên", "en": "Full name"},
                  "required": true, "prefill": "name", "max_length": 100}, ...],
      "documents": [{"id": "giay_chung_sinh", "name": {...}, "pages_min": 1, "pages_max": 2}],
      "fee_vnd": 10000 | null
    }

Field types: ``text``, ``name`` (letters only, as on the card), ``date`` (dd/mm/yyyy), ``sex``
(Nam / Nữ), ``choice`` (one of ``options``), ``id_number`` (12-digit personal id), ``phone`` and
``number``. ``prefill`` names what the chip ID card gives: ``name``, ``birth_date``, ``sex``,
``address`` or ``id_number``. :func:`validate_form` answers one message per wrong field, in both
languages, naming the field and saying what to write.

The fee here is what the kiosk tells the resident before submitting; the amount to pay is always
the one the city's gateway answers (its fee table), never this one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kiosk_ui.parsers import CitizenIdentity, Sex

Text = dict[str, str]
Message = tuple[str, str]

FieldType = Literal["text", "name", "date", "sex", "choice", "id_number", "phone", "number"]
Prefill = Literal["name", "birth_date", "sex", "address", "id_number"]
DateRule = Literal["past", "future", "any"]

MAX_FIELD_CHARS = 300
_ID_RE = re.compile(r"[a-z][a-z0-9_]{0,47}")
_NAME_RE = re.compile(r"[^\W\d_]+(?:[ '\-][^\W\d_]+)*")
_PHONE_RE = re.compile(r"0\d{9,10}")
_PERSONAL_ID_RE = re.compile(r"\d{12}")
_DATE_RE = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})")
SEX_VALUES = {"Nam": Sex.MALE, "Nữ": Sex.FEMALE}


class _Schema(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Option(_Schema):
    value: str = Field(min_length=1, max_length=80, description="Value submitted (Vietnamese wording).")
    label: Text = Field(description="Label {vi, en}.")


class FormField(_Schema):
    id: str = Field(pattern=_ID_RE.pattern, description="Field key in the submission (official name).")
    type: FieldType = Field(default="text", description="How it is typed and checked.")
    label: Text = Field(description="Label {vi, en} (the official form's wording first).")
    required: bool = Field(default=False, description="The dossier cannot be submitted without it.")
    prefill: Prefill | None = Field(default=None, description="Filled from the chip ID card.")
    options: list[Option] = Field(default_factory=list, max_length=20, description="For type 'choice'.")
    min_length: int = Field(default=0, ge=0, le=MAX_FIELD_CHARS)
    max_length: int = Field(default=200, ge=1, le=MAX_FIELD_CHARS)
    dates: DateRule = Field(default="any", description="For type 'date': past (≤ today) or future (≥ today).")
    hint: Text | None = Field(default=None, description="Help under the field {vi, en}.")

    @model_validator(mode="after")
    def _options_for_choice(self) -> FormField:
        if self.type == "choice" and not self.options:
            raise ValueError(f"field {self.id}: type 'choice' needs options")
        if self.min_length > self.max_length:
            raise ValueError(f"field {self.id}: min_length > max_length")
        return self


class RequiredDocument(_Schema):
    id: str = Field(pattern=_ID_RE.pattern)
    name: Text = Field(description="Document name {vi, en}.")
    pages_min: int = Field(default=1, ge=0, le=20, description="0: optional document.")
    pages_max: int = Field(default=1, ge=1, le=20)

    @model_validator(mode="after")
    def _pages(self) -> RequiredDocument:
        if self.pages_min > self.pages_max:
            raise ValueError(f"document {self.id}: pages_min > pages_max")
        return self


class Form(_Schema):
    fields: list[FormField] = Field(min_length=1, max_length=40)
    documents: list[RequiredDocument] = Field(default_factory=list, max_length=10)
    fee_vnd: int | None = Field(default=None, ge=0, description="Fee in đồng; null: no fee.")

    @model_validator(mode="after")
    def _unique_ids(self) -> Form:
        ids = [f.id for f in self.fields]
        if len(set(ids)) != len(ids):
            raise ValueError("form field ids must be unique")
        docs = [d.id for d in self.documents]
        if len(set(docs)) != len(docs):
            raise ValueError("document ids must be unique")
        return self


def prefill(form: Form, person: CitizenIdentity | None) -> dict[str, str]:
    """Initial values: what the card gives for each field that names a ``prefill`` source."""
    values = {f.id: "" for f in form.fields}
    if person is None or person.wiped:
        return values
    for f in form.fields:
        if f.prefill == "name":
            values[f.id] = person.name
        elif f.prefill == "birth_date" and person.birth_date:
            values[f.id] = person.birth_date.strftime("%d/%m/%Y")
        elif f.prefill == "sex" and person.sex:
            values[f.id] = "Nam" if person.sex is Sex.MALE else "Nữ"
        elif f.prefill == "address":
            values[f.id] = person.address
        elif f.prefill == "id_number":
            values[f.id] = person.id_number
    return values


def parse_date(value: str) -> date | None:
    match = _DATE_RE.fullmatch(value.strip())
    if not match:
        return None
    day, month, year = (int(g) for g in match.groups())
    try:
        return date(year, month, day)
    except ValueError:
        return None


def clean_value(value: object) -> str:
    """A typed value as kept: text only, printable, spaces collapsed, at most MAX_FIELD_CHARS."""
    if not isinstance(value, str):
        return ""
    text = "".join(ch for ch in value if ch.isprintable())
    return " ".join(text.split())[:MAX_FIELD_CHARS]


def check_field(f: FormField, value: str, today: date) -> Message | None:
    """The message for a wrong ``value`` of ``f`` (None when it is right)."""
    vi, en = f.label.get("vi", f.id), f.label.get("en", f.id)
    if not value:
        return (f"Vui lòng nhập “{vi}”.", f"Please fill in “{en}”.") if f.required else None
    if len(value) < f.min_length:
        return (
            f"“{vi}” cần ít nhất {f.min_length} ký tự.",
            f"“{en}” needs at least {f.min_length} characters.",
        )
    if len(value) > f.max_length:
        return (f"“{vi}” dài quá {f.max_length} ký tự.", f"“{en}” is longer than {f.max_length} characters.")
    if f.type == "name" and not _NAME_RE.fullmatch(value):
        return (
            f"“{vi}” chỉ gồm chữ cái, viết như trên giấy tờ (ví dụ: Nguyễn Văn An).",
            f"“{en}” may only contain letters, as written on the papers (e.g. Nguyễn Văn An).",
        )
    if f.type == "date":
        parsed = parse_date(value)
        if parsed is None:
            return (
                f"“{vi}” cần ghi theo ngày/tháng/năm, ví dụ 15/08/1999.",
                f"“{en}” must be day/month/year, e.g. 15/08/1999.",
            )
        if f.dates == "past" and parsed > today:
            return (f"“{vi}” không thể là ngày trong tương lai.", f"“{en}” cannot be in the future.")
        if f.dates == "future" and parsed < today:
            return (f"“{vi}” không thể là ngày đã qua.", f"“{en}” cannot be in the past.")
        if parsed.year < 1900:
            return (f"“{vi}” có năm chưa đúng.", f"“{en}” has a wrong year.")
    if f.type == "sex" and value not in SEX_VALUES:
        return (f"Vui lòng chọn “{vi}”: Nam hoặc Nữ.", f"Please choose “{en}”: male or female.")
    if f.type == "choice" and value not in {o.value for o in f.options}:
        return (f"Vui lòng chọn một mục cho “{vi}”.", f"Please choose one option for “{en}”.")
    if f.type == "id_number" and not _PERSONAL_ID_RE.fullmatch(value):
        return (
            f"“{vi}” gồm đúng 12 chữ số, như trên thẻ căn cước.",
            f"“{en}” is exactly 12 digits, as on the ID card.",
        )
    if f.type == "phone" and not _PHONE_RE.fullmatch(value.replace(" ", "")):
        return (
            f"“{vi}” gồm 10 hoặc 11 chữ số, bắt đầu bằng 0 (ví dụ 0912345678).",
            f"“{en}” is 10 or 11 digits starting with 0 (e.g. 0912345678).",
        )
    if f.type == "number" and not value.isdigit():
        return (f"“{vi}” chỉ gồm chữ số.", f"“{en}” may only contain digits.")
    return None


def validate_form(form: Form, values: Mapping[str, str], today: date | None = None) -> dict[str, Message]:
    """``{field id: (vi, en) message}`` for every wrong field; empty when the form can be submitted."""
    day = today or date.today()
    errors: dict[str, Message] = {}
    for f in form.fields:
        message = check_field(f, values.get(f.id, ""), day)
        if message is not None:
            errors[f.id] = message
    return errors


def check_pages(form: Form, pages: Mapping[str, int]) -> dict[str, Message]:
    """``{document id: message}`` for documents with too few or too many pages photographed."""
    errors: dict[str, Message] = {}
    for d in form.documents:
        n = pages.get(d.id, 0)
        vi, en = d.name.get("vi", d.id), d.name.get("en", d.id)
        if n < d.pages_min:
            errors[d.id] = (
                f"Vui lòng chụp “{vi}” (cần ít nhất {d.pages_min} trang).",
                f"Please photograph “{en}” (at least {d.pages_min} page(s)).",
            )
        elif n > d.pages_max:
            errors[d.id] = (
                f"“{vi}” chỉ cần tối đa {d.pages_max} trang; hãy xoá bớt.",
                f"“{en}” needs at most {d.pages_max} page(s); please delete some.",
            )
    return errors
