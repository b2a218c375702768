"""Dossier submission and fee payment: the interface and the local registry used by the demo.

A kiosk submits a dossier under a ``submission_id`` it chose (a random UUID made when the resident
gave consent). Submitting is idempotent by that id: a retried or resumed upload answers the same
dossier code and never makes a second dossier. When the procedure has a fee, the answer carries the
VietQR payload (``protocol.vietqr``) to pay it, with the dossier code as the transfer reference;
the city's bank feed then confirms the payment by that reference.

Only the local registry exists so far (demo and tests, fake data, memory only); the HTTP adapter for
the city's one-stop-shop system is still to be written against this same interface.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import date
from typing import Literal, Protocol

from fleet.rpc import RpcBadRequest
from protocol.dossier import DOSSIER_CODE_RE
from protocol.vietqr import VietQR, encode

PaymentState = Literal["none", "unpaid", "paid"]
"""``none``: the procedure has no fee."""

MAX_PAGES_PER_SUBMISSION = 40
_SUBMISSION_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class SubmissionReceipt:
    submission_id: str
    code: str
    procedure_id: str
    fee: int
    payment: PaymentState
    vietqr: str | None
    """The payload to show as a QR while the fee is unpaid; None without a fee."""
    procedure_name: str = ""
    """The procedure's name as the kiosk showed it (Vietnamese), for lookups of the dossier."""


class SubmissionBackend(Protocol):
    def submit(
        self, submission_id: str, procedure_id: str, fee: int, *, procedure_name: str = ""
    ) -> SubmissionReceipt:
        """Create the dossier, or answer the one already made for ``submission_id``."""
        ...

    def confirm_payment(self, code: str, amount: int) -> SubmissionReceipt:
        """Record a transfer referencing ``code``; paid once ``amount`` covers the fee."""
        ...

    def receipt(self, code: str) -> SubmissionReceipt: ...

    def put_page(self, submission_id: str, sha256: str, data: bytes) -> int:
        """Keep one uploaded page of a submission being made (idempotent by its hash); pages held."""
        ...

    def held_pages(self, submission_id: str) -> list[str]:
        """The SHA-256 of every page already uploaded for ``submission_id`` (to resume an upload)."""
        ...


def check_submission_id(value: object) -> str:
    if not isinstance(value, str) or not _SUBMISSION_ID_RE.fullmatch(value):
        raise RpcBadRequest("submission_id must be a lower-case UUID made by the kiosk")
    return value


class LocalSubmissionRegistry:
    """Submissions in memory, numbered ``AGENCY-YYMMDD-NNNN`` per day; thread-safe."""

    def __init__(
        self, *, agency: str = "000.00.01.H26", bank_bin: str = "970415", account: str = "113366668888"
    ) -> None:
        if not DOSSIER_CODE_RE.match(f"{agency}-000101-0001"):
            raise ValueError(f"agency code {agency!r} cannot start a dossier code")
        self.agency = agency
        self.bank_bin = bank_bin
        self.account = account
        self._lock = threading.Lock()
        self._by_submission: dict[str, SubmissionReceipt] = {}
        self._by_code: dict[str, SubmissionReceipt] = {}
        self._paid: dict[str, int] = {}
        self._pages: dict[str, dict[str, int]] = {}
        """Uploaded pages by submission id: {sha256: size}. The demo registry checks pages but does
        not keep their content; an adapter to the city's system forwards them."""

    def submit(
        self,
        submission_id: str,
        procedure_id: str,
        fee: int,
        *,
        procedure_name: str = "",
        today: date | None = None,
    ) -> SubmissionReceipt:
        check_submission_id(submission_id)
        if fee < 0:
            raise RpcBadRequest("fee must not be negative")
        with self._lock:
            known = self._by_submission.get(submission_id)
            if known is not None:
                if known.procedure_id != procedure_id:
                    raise RpcBadRequest("this submission id was already used for another procedure")
                return known
            day = (today or date.today()).strftime("%y%m%d")
            sequence = 1 + sum(1 for code in self._by_code if code.split("-")[-2] == day)
            code = f"{self.agency}-{day}-{sequence:04d}"
            payload = encode(VietQR(self.bank_bin, self.account, fee, code)) if fee else None
            receipt = SubmissionReceipt(
                submission_id, code, procedure_id, fee, "unpaid" if fee else "none", payload, procedure_name
            )
            self._by_submission[submission_id] = self._by_code[code] = receipt
            return receipt

    def confirm_payment(self, code: str, amount: int) -> SubmissionReceipt:
        with self._lock:
            receipt = self._by_code.get(code)
            if receipt is None:
                raise RpcBadRequest("no submitted dossier has this code")
            self._paid[code] = self._paid.get(code, 0) + max(amount, 0)
            if receipt.payment == "unpaid" and self._paid[code] >= receipt.fee:
                receipt = SubmissionReceipt(
                    receipt.submission_id,
                    code,
                    receipt.procedure_id,
                    receipt.fee,
                    "paid",
                    None,
                    receipt.procedure_name,
                )
                self._by_submission[receipt.submission_id] = self._by_code[code] = receipt
            return receipt

    def receipt(self, code: str) -> SubmissionReceipt:
        with self._lock:
            receipt = self._by_code.get(code)
        if receipt is None:
            raise RpcBadRequest("no submitted dossier has this code")
        return receipt

    def put_page(self, submission_id: str, sha256: str, data: bytes) -> int:
        check_submission_id(submission_id)
        with self._lock:
            pages = self._pages.setdefault(submission_id, {})
            if sha256 not in pages and len(pages) >= MAX_PAGES_PER_SUBMISSION:
                raise RpcBadRequest(f"a submission has at most {MAX_PAGES_PER_SUBMISSION} pages")
            pages[sha256] = len(data)
            return len(pages)

    def held_pages(self, submission_id: str) -> list[str]:
        check_submission_id(submission_id)
        with self._lock:
            return sorted(self._pages.get(submission_id, {}))

    def count(self) -> int:
        with self._lock:
            return len(self._by_code)
