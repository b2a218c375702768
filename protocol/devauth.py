"""Requests a device signs with its own key (no password, no token): e.g. "decommission me".

The device signs, with ``protocol.keys.sign_data`` (``KeyStore.sign``), the canonical JSON of
``{"action", "certificate_sha256", "ts"}``; the fleet checks the certificate (issued by the city,
not revoked, not expired), the signature with the certificate's key, and that ``ts`` is recent.
"""

from __future__ import annotations

import hashlib

from protocol.signing import canonical_json

ACTIONS = ("decommission",)
MAX_AGE_S = 300.0
"""How far ``ts`` may be from the fleet clock (seconds)."""


def certificate_sha256(certificate_pem: str) -> str:
    return hashlib.sha256(certificate_pem.strip().encode("ascii", errors="replace")).hexdigest()


def signed_bytes(action: str, certificate_pem: str, ts: str) -> bytes:
    """The bytes the device signs for ``action`` (the same on both sides)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown device action {action!r}")
    return canonical_json(
        {"action": action, "certificate_sha256": certificate_sha256(certificate_pem), "ts": ts}
    )
