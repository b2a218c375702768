"""Signed fleet key lists: which keys may sign commands and desired state.

A key list is a JSON object signed by the offline *fleet root* key, whose public half a device
receives at enrolment::

    {"type": "cityedge.fleet-keys", "version": 3, "expires_at": "2027-11-22T00:00:00.000Z",
     "keys": [{"kid": "fleet-2026-2", "public_key": "<base64 raw ed25519>", "not_after": "..."}],
     "sig": {"alg": "ed25519", "kid": "root-…", "value": "…"}}

A device replaces its command keys with a new list only when the list is signed by the root,
its version is higher than the current one, and it has not expired. Rotation therefore needs
no re-flashing, and a stolen fleet command key stops working once a newer list leaves it out.

Pure functions only (no I/O): the device keeps its list with ``agent.truststore.TrustStore``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocol.errors import ProtocolError, SignatureError
from protocol.signing import sign, verify
from protocol.timefmt import format_ts, parse_ts

KEY_LIST_TYPE = "cityedge.fleet-keys"
MAX_KEYS = 32
"""Most keys one list may carry (a list is small: a few current keys and their successors)."""


class TrustError(ProtocolError):
    """A key list or a root key cannot be read (wrong shape, bad encoding)."""


class KeyListRejected(TrustError):
    """A key list was understood but is not accepted: say why (signature, version, expiry)."""


class KeyListNotNewer(KeyListRejected):
    """A validly signed list whose version is not above the current one (old or re-delivered)."""


@dataclass(frozen=True)
class RootKey:
    """The fleet root's public key, as the device got it at enrolment."""

    kid: str
    public_key: Ed25519PublicKey

    def to_dict(self) -> dict[str, str]:
        return {"kid": self.kid, "public_key": encode_public_key(self.public_key)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RootKey:
        kid, pub = data.get("kid"), data.get("public_key")
        if not isinstance(kid, str) or not kid:
            raise TrustError("fleet root key has no 'kid'")
        if not isinstance(pub, str):
            raise TrustError("fleet root key has no 'public_key'")
        return cls(kid, decode_public_key(pub))

    @classmethod
    def from_private(cls, key: Ed25519PrivateKey) -> RootKey:
        pub = key.public_key()
        return cls(key_id("root", pub), pub)


@dataclass(frozen=True)
class FleetKey:
    kid: str
    public_key: Ed25519PublicKey
    not_after: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "public_key": encode_public_key(self.public_key),
            "not_after": format_ts(self.not_after) if self.not_after else None,
        }


@dataclass(frozen=True)
class KeyList:
    version: int
    expires_at: datetime
    keys: tuple[FleetKey, ...]
    document: Mapping[str, Any]
    """The signed JSON exactly as received (kept so it can be stored and re-verified)."""

    def active(self, now: datetime) -> dict[str, Ed25519PublicKey]:
        """The keys usable for signatures at ``now`` (a key past its ``not_after`` is left out)."""
        return {k.kid: k.public_key for k in self.keys if k.not_after is None or now <= k.not_after}


def raw_public_key(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


def encode_public_key(pub: Ed25519PublicKey) -> str:
    return base64.b64encode(raw_public_key(pub)).decode("ascii")


def decode_public_key(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TrustError("public key is not valid base64") from exc
    if len(raw) != 32:
        raise TrustError(f"an ed25519 public key has 32 bytes, this one has {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def key_id(prefix: str, pub: Ed25519PublicKey) -> str:
    """A stable key id: ``PREFIX-`` and the first 16 hex digits of the key's sha256."""
    return f"{prefix}-{hashlib.sha256(raw_public_key(pub)).hexdigest()[:16]}"


def build_key_list(version: int, expires_at: datetime, keys: Iterable[FleetKey]) -> dict[str, Any]:
    """The unsigned key-list document."""
    entries = [k.to_dict() for k in keys]
    if not entries:
        raise TrustError("a key list needs at least one key")
    return {
        "type": KEY_LIST_TYPE,
        "version": version,
        "expires_at": format_ts(expires_at),
        "keys": entries,
    }


def sign_key_list(document: Mapping[str, Any], root: Ed25519PrivateKey) -> dict[str, Any]:
    """Sign a key list with the fleet root (done offline, by ``cityedge fleet keys rotate``)."""
    return sign(document, root, RootKey.from_private(root).kid)


def _ts(value: object, what: str) -> datetime:
    if not isinstance(value, str):
        raise TrustError(f"key list field '{what}' is not a time string")
    try:
        return parse_ts(value)
    except (ValueError, OverflowError) as exc:
        raise TrustError(f"key list field '{what}': {exc}") from exc


def _key(entry: object, index: int) -> FleetKey:
    if not isinstance(entry, Mapping):
        raise TrustError(f"key list entry {index} is not an object")
    kid = entry.get("kid")
    if not isinstance(kid, str) or not 0 < len(kid) <= 128:
        raise TrustError(f"key list entry {index} has no valid 'kid'")
    pub = entry.get("public_key")
    if not isinstance(pub, str):
        raise TrustError(f"key list entry {index} ({kid}) has no 'public_key'")
    not_after = entry.get("not_after")
    return FleetKey(
        kid,
        decode_public_key(pub),
        None if not_after is None else _ts(not_after, f"keys[{index}].not_after"),
    )


def parse_key_list(document: object) -> KeyList:
    """Check the shape of a key list (not its signature); raise TrustError naming the bad field."""
    if not isinstance(document, Mapping):
        raise TrustError("key list is not a JSON object")
    if document.get("type") != KEY_LIST_TYPE:
        raise TrustError(f"not a fleet key list (type {document.get('type')!r})")
    version = document.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise TrustError("key list field 'version' is not a non-negative integer")
    expires_at = _ts(document.get("expires_at"), "expires_at")
    entries = document.get("keys")
    if not isinstance(entries, list) or not entries:
        raise TrustError("key list field 'keys' is not a non-empty list")
    if len(entries) > MAX_KEYS:
        raise TrustError(f"key list has {len(entries)} keys, more than the {MAX_KEYS} allowed")
    keys = tuple(_key(entry, i) for i, entry in enumerate(entries))
    if len({k.kid for k in keys}) != len(keys):
        raise TrustError("key list names the same kid twice")
    return KeyList(version, expires_at, keys, document)


def verify_key_list(document: object, root: RootKey) -> KeyList:
    """Parse a key list and check it is signed by ``root`` (no time or version checks)."""
    parsed = parse_key_list(document)
    try:
        verify(parsed.document, {root.kid: root.public_key})
    except SignatureError as exc:
        raise KeyListRejected(f"key list is not signed by the fleet root key {root.kid}: {exc}") from exc
    except (TypeError, ValueError, UnicodeError) as exc:
        raise TrustError(f"key list cannot be encoded as canonical JSON: {exc}") from exc
    return parsed


def check_update(document: object, root: RootKey, current_version: int | None, now: datetime) -> KeyList:
    """Decide whether ``document`` may replace the current key list (pure; ``now`` must be sane).

    Accepted only when signed by the root, newer than ``current_version`` and not expired.
    """
    parsed = verify_key_list(document, root)
    if current_version is not None and parsed.version <= current_version:
        raise KeyListNotNewer(
            f"key list version {parsed.version} is not newer than the current version {current_version}"
        )
    if parsed.expires_at < now:
        raise KeyListRejected(f"key list version {parsed.version} expired at {format_ts(parsed.expires_at)}")
    return parsed
