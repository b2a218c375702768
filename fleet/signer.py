"""Fleet-side signing of commands and desired state, and the fleet's key ring on disk.

``Ed25519Signer`` implements the fleet service's ``CommandSigner`` (``sign(message) -> dict``):
it fills ``issued_at`` / ``expires_at`` / ``nonce`` when missing and signs the canonical JSON
with the active fleet command key. Desired-state documents also carry the current root-signed
key list as their optional ``trust`` member, so devices pick up a key rotation with the next
(retained) desired state.

Key ring layout (``FLEET_DATA/keys/``): ``fleet_root.json`` (public half of the offline root),
``fleet_keys.json`` (current signed key list), ``command-KID.pem`` (private command keys, 0600),
``active_kid`` (the key that signs now). The root *private* key is never stored there.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from protocol.signing import sign
from protocol.timefmt import format_ts, utc_now
from protocol.trust import RootKey, TrustError, verify_key_list

COMMAND_TTL = timedelta(minutes=15)
"""Default life of a signed command: a device offline longer than this will not run it later."""
DESIRED_TTL = timedelta(days=30)
"""Default life of a signed desired state (retained; the fleet re-signs it well before)."""


class KeyRingError(RuntimeError):
    """The fleet key ring is missing or damaged; the message says which file and what to run."""


def _is_desired(body: Mapping[str, Any]) -> bool:
    return "name" not in body and ("config" in body or "version" in body)


class Ed25519Signer:
    """Signs commands and desired state with one fleet command key."""

    def __init__(
        self,
        key: Ed25519PrivateKey,
        kid: str,
        *,
        key_list: Mapping[str, Any] | None = None,
        command_ttl: timedelta = COMMAND_TTL,
        desired_ttl: timedelta = DESIRED_TTL,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._key = key
        self.kid = kid
        self.key_list = dict(key_list) if key_list is not None else None
        self.command_ttl = command_ttl
        self.desired_ttl = desired_ttl
        self._clock = clock

    def sign(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """A signed copy of ``message`` (a command or a desired state); any old ``sig`` is replaced."""
        body = {k: v for k, v in message.items() if k != "sig"}
        now = self._clock()
        desired = _is_desired(body)
        ttl = self.desired_ttl if desired else self.command_ttl
        if body.get("issued_at") is None:
            body["issued_at"] = format_ts(now)
        if body.get("expires_at") is None:
            body["expires_at"] = format_ts(now + ttl)
        if body.get("nonce") is None:
            body["nonce"] = secrets.token_urlsafe(18)
        if desired and self.key_list is not None and body.get("trust") is None:
            body["trust"] = self.key_list
        return sign(body, self._key, self.kid)


# --- key ring ------------------------------------------------------------------------------------

ROOT_PUBLIC = "fleet_root.json"
KEY_LIST = "fleet_keys.json"
ACTIVE = "active_kid"


def keys_dir(fleet_data_dir: Path) -> Path:
    return Path(fleet_data_dir) / "keys"


def write_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    """PEM, mode 0600, created exclusively (an existing key is never overwritten)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())


def read_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise KeyRingError(f"key file {path} does not exist") from exc
    except (ValueError, TypeError) as exc:
        raise KeyRingError(f"{path} is not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyRingError(f"{path} is not an ed25519 key")
    return key


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise KeyRingError(f"{path} is missing: run `cityedge fleet keys init` first") from exc
    except (OSError, ValueError) as exc:
        raise KeyRingError(f"{path} cannot be read: {exc}") from exc


@dataclass(frozen=True)
class KeyRing:
    """What the fleet service needs: the root's public key, the signed list, the active key."""

    root: RootKey
    key_list: dict[str, Any]
    active_kid: str
    active_key: Ed25519PrivateKey

    def signer(self, **kwargs: Any) -> Ed25519Signer:
        return Ed25519Signer(self.active_key, self.active_kid, key_list=self.key_list, **kwargs)


def command_key_path(directory: Path, kid: str) -> Path:
    return directory / f"command-{kid}.pem"


def load_keyring(fleet_data_dir: Path) -> KeyRing:
    """Load and cross-check the key ring (the list must be root-signed and name the active key)."""
    directory = keys_dir(fleet_data_dir)
    try:
        root = RootKey.from_dict(_read_json(directory / ROOT_PUBLIC))
        document = _read_json(directory / KEY_LIST)
        parsed = verify_key_list(document, root)
    except TrustError as exc:
        raise KeyRingError(f"key ring in {directory} is not valid: {exc}") from exc
    try:
        active_kid = (directory / ACTIVE).read_text(encoding="utf-8").strip()
    except FileNotFoundError as exc:
        raise KeyRingError(f"{directory / ACTIVE} is missing: run `cityedge fleet keys init`") from exc
    key = read_private_key(command_key_path(directory, active_kid))
    listed = {k.kid: k for k in parsed.keys}
    if active_kid not in listed:
        raise KeyRingError(f"active key {active_kid} is not in key list version {parsed.version}")
    if listed[active_kid].public_key.public_bytes_raw() != key.public_key().public_bytes_raw():
        raise KeyRingError(f"key file for {active_kid} does not match the public key in the key list")
    return KeyRing(root, dict(document), active_kid, key)


def load_fleet_signer(fleet_data_dir: Path, **kwargs: Any) -> Ed25519Signer:
    """The signer the fleet service is built with (``FleetService(..., signer=...)``)."""
    return load_keyring(fleet_data_dir).signer(**kwargs)


def signer_from_env() -> Ed25519Signer:
    """Plug-in for ``cityedge fleet serve --signer fleet.signer:signer_from_env``: the key ring in
    CITYEDGE_FLEET_DATA (default var/fleet)."""
    return load_fleet_signer(Path(os.environ.get("CITYEDGE_FLEET_DATA", "var/fleet")))
