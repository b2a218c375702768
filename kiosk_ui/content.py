"""Kiosk content: the procedure catalogue and the announcements, shipped or pushed by the fleet.

Pushed content arrives in the agent's desired config (``config.catalogue`` and
``config.announcements``), each a JSON document signed with ``protocol.signing.sign``::

    {"format": "cityedge.kiosk.catalogue", "version": 7, "issued_at": "...", "expires_at": "..."?,
     "procedures": [...], "sig": {"alg": "ed25519", "kid": "fleet-2026-1", "value": "..."}}

A document is used only when its signature verifies with a trusted key, its format is right, it
has not expired and its version is not older than the one in use; otherwise the kiosk keeps what
it has (at first, the copy shipped in ``kiosk_ui/data/``), so it always works offline.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime
from importlib import resources
from typing import Any, Generic, Literal, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kiosk_ui.forms import Form
from kiosk_ui.i18n import Lang, pick
from kiosk_ui.search import SearchDoc, make_doc, search
from protocol.errors import SignatureError
from protocol.signing import verify
from protocol.timefmt import parse_ts

log = logging.getLogger(__name__)

CATALOGUE_FORMAT = "cityedge.kiosk.catalogue"
ANNOUNCEMENTS_FORMAT = "cityedge.kiosk.announcements"


class ContentError(ValueError):
    """Pushed content was refused; the message says why (shape, signature, version, expiry)."""


class _Content(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


Text = dict[str, str]


class Procedure(_Content):
    id: str = Field(min_length=1, max_length=80, description="Stable identifier.")
    name: Text = Field(description="Procedure name {vi, en}.")
    field: Text = Field(description="Field (lĩnh vực) {vi, en}.")
    agency: Text = Field(description="Agency that handles it {vi, en}.")
    processing_time: Text = Field(description="Processing time {vi, en}.")
    fee: Text = Field(description="Fee {vi, en}.")
    online_level: Literal["full", "partial", "none"] = Field(description="Online public service level.")
    documents: list[Text] = Field(default_factory=list, description="Documents to bring, each {vi, en}.")
    keywords: list[str] = Field(default_factory=list, description="Extra search words (any language).")
    form: Form | None = Field(
        default=None,
        description="Submission form (fields, documents to photograph, fee); see kiosk_ui.forms.",
    )


class Catalogue(_Content):
    format: Literal["cityedge.kiosk.catalogue"]
    version: int = Field(ge=0)
    issued_at: str | None = None
    expires_at: str | None = None
    procedures: list[Procedure] = Field(min_length=1, max_length=2000)


class Announcement(_Content):
    id: str = Field(min_length=1, max_length=80)
    title: Text
    body: Text
    valid_from: str | None = None
    valid_until: str | None = None

    def current(self, now: datetime) -> bool:
        if self.valid_from and parse_ts(self.valid_from) > now:
            return False
        return not (self.valid_until and parse_ts(self.valid_until) < now)


class Announcements(_Content):
    format: Literal["cityedge.kiosk.announcements"]
    version: int = Field(ge=0)
    issued_at: str | None = None
    expires_at: str | None = None
    items: list[Announcement] = Field(default_factory=list, max_length=200)


D = TypeVar("D", Catalogue, Announcements)


def load_shipped(name: str) -> dict[str, Any]:
    data = resources.files("kiosk_ui").joinpath("data").joinpath(name).read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(data)
    return loaded


def check_document(
    model: type[D],
    document: object,
    keys: Mapping[str, Ed25519PublicKey],
    now: datetime,
    current_version: int | None,
) -> D:
    """Verify and parse a pushed document; ContentError says why it was refused."""
    if not isinstance(document, Mapping):
        raise ContentError(f"{model.__name__.lower()} is not a JSON object")
    try:
        kid = verify(document, keys)
    except SignatureError as exc:
        raise ContentError(f"{model.__name__.lower()} signature refused: {exc}") from exc
    try:
        parsed = model.model_validate(dict(document))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ContentError(f"{model.__name__.lower()} field '{where}': {first['msg']}") from exc
    if parsed.expires_at and parse_ts(parsed.expires_at) < now:
        raise ContentError(f"{model.__name__.lower()} version {parsed.version} expired {parsed.expires_at}")
    if current_version is not None and parsed.version < current_version:
        raise ContentError(
            f"{model.__name__.lower()} version {parsed.version} is older than {current_version} in use"
        )
    log.info("accepted %s version %d signed by %s", model.__name__.lower(), parsed.version, kid)
    return parsed


class Slot(Generic[D]):
    """One kind of content: the shipped fallback and the newest accepted pushed version."""

    def __init__(self, model: type[D], shipped: D) -> None:
        self.model: type[D] = model
        self.shipped: D = shipped
        self.current: D = shipped
        self.pushed_version: int | None = None
        self.last_error: str | None = None

    def offer(self, document: object, keys: Mapping[str, Ed25519PublicKey], now: datetime) -> bool:
        """Consider a pushed document; True when it replaced the content in use."""
        if isinstance(document, Mapping) and document.get("version") == self.pushed_version:
            return False  # the same document again (the desired config is read periodically)
        try:
            parsed = check_document(self.model, document, keys, now, self.pushed_version)
        except ContentError as exc:
            if str(exc) != self.last_error:
                log.warning("keeping current content: %s", exc)
            self.last_error = str(exc)
            return False
        self.current, self.pushed_version, self.last_error = parsed, parsed.version, None
        return True

    @property
    def source(self) -> str:
        return "shipped" if self.pushed_version is None else f"fleet v{self.pushed_version}"


class CatalogueIndex:
    """A catalogue with its search index."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self.by_id = {p.id: p for p in catalogue.procedures}
        self.docs: list[SearchDoc] = [
            make_doc(
                p.id,
                [p.name.get("vi", ""), p.name.get("en", "")],
                [*p.field.values(), *p.agency.values(), *p.keywords],
            )
            for p in catalogue.procedures
        ]

    def search(self, query: str, limit: int = 50) -> list[Procedure]:
        return [self.by_id[key] for key in search(query, self.docs, limit)]


def localise(procedure: Procedure, lang: Lang) -> dict[str, Any]:
    """The procedure's texts in ``lang`` for a template."""
    return {
        "id": procedure.id,
        "name": pick(lang, procedure.name),
        "field": pick(lang, procedure.field),
        "agency": pick(lang, procedure.agency),
        "processing_time": pick(lang, procedure.processing_time),
        "fee": pick(lang, procedure.fee),
        "online_level": procedure.online_level,
        "documents": [pick(lang, d) for d in procedure.documents],
        "can_submit": procedure.form is not None,
    }
