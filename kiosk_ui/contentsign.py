"""Signing kiosk content for the fleet (``cityedge kiosk sign-content``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from kiosk_ui.content import Announcements, Catalogue
from protocol.signing import sign
from protocol.timefmt import now_ts

MODELS: dict[str, type[Catalogue] | type[Announcements]] = {
    "cityedge.kiosk.catalogue": Catalogue,
    "cityedge.kiosk.announcements": Announcements,
}


def sign_content(document: dict[str, Any], key: Ed25519PrivateKey, kid: str) -> dict[str, Any]:
    """Check the document's shape, stamp ``issued_at`` and sign it (ValueError when malformed)."""
    body = {k: v for k, v in document.items() if k != "sig"}
    model = MODELS.get(str(body.get("format")))
    if model is None:
        raise ValueError(f"unknown content format {body.get('format')!r}; expected one of {sorted(MODELS)}")
    body["issued_at"] = now_ts()
    model.model_validate(body)
    return sign(body, key, kid)


def sign_content_file(source: Path, key_path: Path, kid: str) -> dict[str, Any]:
    key = load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{key_path} is not an Ed25519 private key")
    document = json.loads(source.read_text(encoding="utf-8"))
    if not isinstance(document, dict):
        raise ValueError(f"{source} is not a JSON object")
    return sign_content(document, key, kid)
