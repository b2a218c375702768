"""The ``dossier`` RPC service shared by the kiosk and the fleet's city-services gateway.

A kiosk sends ``rpc/req`` ``{"service": "dossier", "method": "lookup", "params": {"code": CODE}}``
and gets the :class:`Dossier` below as ``result``. Dossier codes look like
``000.00.01.H26-260930-0012``: the receiving agency's code, the receipt date ``YYMMDD`` and a
sequence number. The models accept unknown fields, like every wire model: the city's service may
add some.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SERVICE = "dossier"
METHOD_LOOKUP = "lookup"

DOSSIER_CODE_RE = re.compile(
    r"^(?P<agency>[0-9A-Z]{2,4}(?:\.[0-9A-Z]{2,4}){1,4})-(?P<date>[0-9]{6})-(?P<seq>[0-9]{4,6})$"
)
"""A normalised (upper-case, no spaces) dossier code."""

MAX_CODE_LENGTH = 48

STATUS_LABELS: dict[str, tuple[str, str]] = {
    "received": ("Đã tiếp nhận", "Received"),
    "processing": ("Đang xử lý", "In progress"),
    "needs_supplement": ("Cần bổ sung hồ sơ", "Documents needed"),
    "ready": ("Đã có kết quả, mời nhận", "Ready for collection"),
    "returned": ("Đã trả kết quả", "Result returned"),
    "rejected": ("Từ chối giải quyết", "Refused"),
    "overdue": ("Quá hạn", "Overdue"),
}
"""Known status codes with their Vietnamese and English labels."""


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


class DossierStep(_Wire):
    name: str = Field(min_length=1, max_length=200, description="What happened, in Vietnamese.")
    status: str = Field(default="done", max_length=32, description="done | current | pending")
    date: str | None = Field(default=None, description="ISO date (YYYY-MM-DD) the step ended, if it did.")
    agency: str | None = Field(default=None, max_length=200, description="Office that handled the step.")


class Dossier(_Wire):
    code: str = Field(min_length=1, max_length=MAX_CODE_LENGTH, description="Normalised dossier code.")
    procedure: str = Field(min_length=1, max_length=300, description="Administrative procedure name.")
    status: str = Field(min_length=1, max_length=32, description="Status code (see STATUS_LABELS).")
    status_vi: str = Field(default="", max_length=200, description="Status label in Vietnamese.")
    status_en: str = Field(default="", max_length=200, description="Status label in English.")
    agency: str = Field(default="", max_length=200, description="Receiving agency.")
    received_date: str | None = Field(default=None, description="ISO date the dossier was received.")
    due_date: str | None = Field(default=None, description="ISO date the result is expected.")
    steps: list[DossierStep] = Field(default_factory=list, description="Processing steps, oldest first.")
    note: str | None = Field(default=None, max_length=500, description="What the resident should do next.")

    def with_labels(self) -> Dossier:
        """Fill empty status labels from STATUS_LABELS."""
        vi, en = STATUS_LABELS.get(self.status, (self.status, self.status))
        return self.model_copy(update={"status_vi": self.status_vi or vi, "status_en": self.status_en or en})

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
