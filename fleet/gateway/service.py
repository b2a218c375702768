"""The ``dossier`` RPC service (``fleet.rpc.RpcService``) and its configuration."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fleet.gateway.backends import DossierBackend, DossierNotFound
from fleet.gateway.http_backend import MAX_TIMEOUT_S, HttpDossierBackend
from fleet.gateway.local_registry import DEMO_REGISTRY, LocalRegistryDossierBackend
from fleet.gateway.submissions import (
    LocalSubmissionRegistry,
    SubmissionBackend,
    SubmissionReceipt,
    check_submission_id,
)
from fleet.rpc import RpcBadRequest
from protocol.dossier import DOSSIER_CODE_RE, MAX_CODE_LENGTH, METHOD_LOOKUP, Dossier, DossierStep

METHOD_SUBMIT = "submit"
METHOD_RECEIPT = "receipt"
METHOD_UPLOAD_PAGE = "upload_page"
METHOD_PAGES = "pages"
DEMO_FEES: dict[str, int] = {
    "ht-trich-luc": 8000,
    "cu-thuong-tru": 10000,
    "cu-tam-tru": 7000,
    "ct-ban-sao": 2000,
}
"""Online fees (đồng) by catalogue procedure id in the demo (one copy; the catalogue's online rate);
the city's fee table in production. A procedure not listed has no fee."""

log = logging.getLogger(__name__)


def normalise_code(value: Any) -> str:
    """Upper-case, spaces removed; RpcBadRequest unless it looks like AGENCY-YYMMDD-NNNN."""
    if not isinstance(value, str) or not value.strip():
        raise RpcBadRequest('dossier.lookup needs params {"code": "AGENCY-YYMMDD-NNNN"}')
    code = "".join(value.split()).upper()
    if len(code) > MAX_CODE_LENGTH or not DOSSIER_CODE_RE.match(code):
        raise RpcBadRequest("dossier code is not like AGENCY-YYMMDD-NNNN (e.g. 000.00.01.H26-260930-0012)")
    return code


MAX_FORM_FIELDS = 60
MAX_FORM_VALUE = 300
MAX_PAGES = 40
MAX_PAGE_BYTES = 160 * 1024
"""One page per ``upload_page`` request: its base64 stays well inside a 256 KiB MQTT message."""
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def check_page(page: object) -> tuple[str, bytes]:
    """``{"sha256", "jpeg"}`` (base64 JPEG) → (sha256, bytes); RpcBadRequest when it is not a JPEG
    of at most MAX_PAGE_BYTES or does not match its hash."""
    if not isinstance(page, dict) or not isinstance(page.get("jpeg"), str):
        raise RpcBadRequest("a page needs sha256 and jpeg (base64)")
    sha = page.get("sha256")
    if not isinstance(sha, str) or not _SHA256_HEX.fullmatch(sha):
        raise RpcBadRequest("a page needs its sha256 (64 lower-case hex digits)")
    try:
        data = base64.b64decode(page["jpeg"], validate=True)
    except ValueError as exc:
        raise RpcBadRequest("a page's jpeg is not base64") from exc
    if len(data) > MAX_PAGE_BYTES or not data.startswith(b"\xff\xd8"):
        raise RpcBadRequest("a page is not a JPEG image of at most 160 KiB")
    if hashlib.sha256(data).hexdigest() != sha:
        raise RpcBadRequest("a page arrived damaged (its SHA-256 does not match); send it again")
    return sha, data


def check_content(form: object, pages: object) -> list[str]:
    """Check a submission's form (``{field: text}``) and page list (``[{document, page, sha256}]``,
    the pages themselves uploaded before by ``upload_page``); RpcBadRequest says what is wrong.
    Returns the pages' hashes. Both may be absent (an older kiosk submits the procedure only)."""
    if form is not None:
        if not isinstance(form, dict) or len(form) > MAX_FORM_FIELDS:
            raise RpcBadRequest("form must be an object of at most 60 fields")
        if not all(
            isinstance(k, str) and isinstance(v, str) and len(v) <= MAX_FORM_VALUE for k, v in form.items()
        ):
            raise RpcBadRequest("form values must be texts of at most 300 characters")
    if pages is None:
        return []
    if not isinstance(pages, list) or len(pages) > MAX_PAGES:
        raise RpcBadRequest("pages must be a list of at most 40 pages")
    hashes = []
    for page in pages:
        sha = page.get("sha256") if isinstance(page, dict) else None
        if not isinstance(sha, str) or not _SHA256_HEX.fullmatch(sha):
            raise RpcBadRequest("each page needs document, page and sha256")
        hashes.append(sha)
    return hashes


def _receipt_dict(receipt: SubmissionReceipt) -> dict[str, Any]:
    return {
        "submission_id": receipt.submission_id,
        "code": receipt.code,
        "procedure": receipt.procedure_id,
        "fee": receipt.fee,
        "payment": receipt.payment,
        "vietqr": receipt.vietqr,
    }


class DossierService:
    """``dossier.lookup {"code"}`` → the dossier as a dict; errors are fleet.rpc RpcError subclasses.

    With a submission backend also:

    - ``dossier.upload_page {"submission_id", "sha256", "jpeg"}`` (one page per request, base64 JPEG,
      hash checked, idempotent) and ``dossier.pages {"submission_id"}`` (the hashes already held: a
      broken upload resumes with the pages still missing);
    - ``dossier.submit {"submission_id", "procedure", "procedure_name"?, "form"?, "pages"?:
      [{"document", "page", "sha256"}]}`` (every listed page must have been uploaded; idempotent by
      submission id; the fee comes from the gateway's fee table, never from the device);
    - ``dossier.receipt {"code"}`` (payment state of a submitted dossier).

    ``dossier.lookup`` also answers a dossier just submitted here, as received.
    """

    def __init__(
        self,
        backend: DossierBackend,
        submissions: SubmissionBackend | None = None,
        fees: Mapping[str, int] | None = None,
    ) -> None:
        self.backend = backend
        self.submissions = submissions
        self.fees = dict(fees or {})

    def _submitted(self, code: str) -> Dossier | None:
        if self.submissions is None:
            return None
        try:
            return submitted_dossier(self.submissions.receipt(code))
        except RpcBadRequest:
            return None

    def call(self, method: str, params: dict[str, Any], device: str) -> dict[str, Any]:
        if self.submissions is not None and method == METHOD_SUBMIT:
            procedure = params.get("procedure")
            if not isinstance(procedure, str) or not 0 < len(procedure) <= 64:
                raise RpcBadRequest('dossier.submit needs params {"submission_id", "procedure"}')
            sid = check_submission_id(params.get("submission_id"))
            hashes = check_content(params.get("form"), params.get("pages"))
            missing = sorted(set(hashes) - set(self.submissions.held_pages(sid)))
            if missing:
                raise RpcBadRequest(f"{len(missing)} page(s) of this submission were not uploaded yet")
            name = params.get("procedure_name")
            receipt = self.submissions.submit(
                sid,
                procedure,
                self.fees.get(procedure, 0),
                procedure_name=name[:300] if isinstance(name, str) else "",
            )
            log.debug("dossier submitted from %s (%s)", device, receipt.payment)  # no code, no content
            return _receipt_dict(receipt)
        if self.submissions is not None and method == METHOD_UPLOAD_PAGE:
            sid = check_submission_id(params.get("submission_id"))
            sha, data = check_page(params)
            return {"held": self.submissions.put_page(sid, sha, data)}
        if self.submissions is not None and method == METHOD_PAGES:
            return {"held": self.submissions.held_pages(check_submission_id(params.get("submission_id")))}
        if self.submissions is not None and method == METHOD_RECEIPT:
            return _receipt_dict(self.submissions.receipt(normalise_code(params.get("code"))))
        if method != METHOD_LOOKUP:
            raise RpcBadRequest(f"dossier has no method {method!r} (use {METHOD_LOOKUP})")
        code = normalise_code(params.get("code"))
        try:
            dossier = self.backend.lookup(code)
        except DossierNotFound:
            submitted = self._submitted(code)
            if submitted is None:
                raise
            dossier = submitted
        log.debug("dossier lookup for %s answered (%s)", device, dossier.status)  # no code: it is personal
        return dossier.with_labels().to_dict()


def submitted_dossier(receipt: SubmissionReceipt) -> Dossier:
    """A dossier just submitted online, as the lookup shows it until the city's system has it."""
    day = receipt.code.split("-")[-2]
    received = f"20{day[:2]}-{day[2:4]}-{day[4:]}"
    note = None
    if receipt.payment == "unpaid":
        note = "Chưa thanh toán lệ phí: quét mã VietQR trên màn hình kiosk hoặc nộp tại bộ phận một cửa."
    return Dossier(
        code=receipt.code,
        procedure=receipt.procedure_name or receipt.procedure_id,
        status="received",
        received_date=received,
        steps=[DossierStep(name="Tiếp nhận hồ sơ trực tuyến tại kiosk", status="done", date=received)],
        note=note,
    )


class GatewayConfig(BaseModel):
    """Where the dossier service gets its answers."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["local", "http"] = Field(
        default="local", description="'local': a registry file (demo); 'http': the city's dossier service."
    )
    registry_path: Path = Field(
        default=DEMO_REGISTRY, description="JSON/TOML registry file for the 'local' backend."
    )
    url: str | None = Field(
        default=None, description="Dossier service URL for 'http'; '{code}' in it is replaced by the code."
    )
    timeout_s: float = Field(
        default=3.0,
        gt=0,
        le=MAX_TIMEOUT_S,
        description="Deadline of one upstream call (the kiosk waits 5 s).",
    )
    auth_header_env: str | None = Field(
        default=None, description="Name of the environment variable holding the auth header 'Name: value'."
    )
    verify_tls: bool | str = Field(
        default=True, description="Verify the service's TLS certificate (True) or use this CA bundle path."
    )


def build_dossier_service(config: GatewayConfig, environ: Mapping[str, str] | None = None) -> DossierService:
    """Build the service from config; the auth header is read from the environment, not the file."""
    env = os.environ if environ is None else environ
    if config.backend == "local":
        backend = LocalRegistryDossierBackend(config.registry_path)
        return DossierService(backend, LocalSubmissionRegistry(), DEMO_FEES)
    if not config.url:
        raise ValueError("gateway backend 'http' needs url")
    header = None
    if config.auth_header_env:
        header = env.get(config.auth_header_env)
        if not header:
            raise ValueError(f"environment variable {config.auth_header_env} (auth header) is not set")
    return DossierService(HttpDossierBackend(config.url, config.timeout_s, header, verify=config.verify_tls))


def demo_dossier_service() -> DossierService:
    """The demo's ``dossier`` service: the shipped local registry (``fleet serve --rpc dossier=...``)."""
    return build_dossier_service(GatewayConfig())
