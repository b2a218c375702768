"""Canonical JSON and Ed25519 signatures over contract messages.

The signed bytes are the canonical JSON of the message without its ``sig`` member: keys sorted,
no spaces, UTF-8 (``ensure_ascii=False``). The same rule serves event envelopes (evidence),
commands and desired state.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.errors import SignatureError


def canonical_json(message: Mapping[str, Any]) -> bytes:
    """Canonical bytes of ``message`` without its ``sig`` member."""
    body = {k: v for k, v in message.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(message: Mapping[str, Any], key: Ed25519PrivateKey, kid: str) -> dict[str, Any]:
    """Return a copy of ``message`` with an ed25519 ``sig`` over its canonical JSON."""
    value = base64.b64encode(key.sign(canonical_json(message))).decode("ascii")
    signed = dict(message)
    signed["sig"] = {"alg": "ed25519", "kid": kid, "value": value}
    return signed


def verify(message: Mapping[str, Any], keys: Mapping[str, Ed25519PublicKey]) -> str:
    """Verify ``message['sig']`` with the key its ``kid`` names; return that kid.

    Raises SignatureError saying why: no signature, unknown algorithm or key id, undecodable value,
    or a signature that does not match the content.
    """
    sig = message.get("sig")
    if not isinstance(sig, Mapping):
        raise SignatureError("message is not signed")
    alg, kid, value = sig.get("alg"), sig.get("kid"), sig.get("value")
    if alg != "ed25519":
        raise SignatureError(f"unsupported signature algorithm {alg!r}")
    if not isinstance(kid, str) or kid not in keys:
        raise SignatureError(f"unknown signing key {kid!r}")
    if not isinstance(value, str):
        raise SignatureError("signature value is not a string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError("signature value is not valid base64") from exc
    try:
        keys[kid].verify(raw, canonical_json(message))
    except InvalidSignature as exc:
        raise SignatureError(f"signature by {kid!r} does not match the content") from exc
    return kid
