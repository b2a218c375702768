"""The device key that signs evidence envelopes (Ed25519, PEM, mode 0600).

Until provisioning installs the enrolled key (``hw.keystore``), the agent keeps its own key in the
data directory, generating it on first use. The key id in signatures is the device id.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.errors import AgentError
from agent.outbox import Signer
from protocol.signing import sign


class DeviceKeyError(AgentError):
    """The device key cannot be read or created."""


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """Read the PEM key at ``path``, creating one (0600, atomically) if there is none."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return _create(path)
    except OSError as exc:
        raise DeviceKeyError(f"cannot read the device key {path}: {exc.strerror or exc}") from exc
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except ValueError as exc:
        raise DeviceKeyError(f"{path} is not a PEM private key without password") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise DeviceKeyError(f"{path} is not an Ed25519 key (evidence signatures use ed25519)")
    return key


def _create(path: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)  # never overwrite a key that appeared meanwhile
    except FileExistsError:
        return load_or_create_key(path)
    except OSError as exc:
        raise DeviceKeyError(f"cannot create the device key {path}: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return key


def make_signer(key: Ed25519PrivateKey, kid: str) -> Signer:
    def signer(envelope: dict[str, Any]) -> dict[str, Any]:
        return sign(envelope, key, kid)

    return signer
