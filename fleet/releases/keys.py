"""Signing keys of the release repository: Ed25519, PEM (PKCS#8) files readable only by their owner.

The **offline** keys (root, targets) live where the operator keeps them (an encrypted USB stick,
a safe) and are only plugged in to publish, withdraw or rotate. The **online** keys (snapshot,
timestamp) live in ``REPO/keys/`` so the fleet can re-sign the timestamp unattended; that folder is
never served.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner

from fleet.releases.errors import RepositoryError, SigningKeyError
from protocol.atomic import atomic_write_bytes

ROLES = ("root", "targets", "snapshot", "timestamp")
OFFLINE_ROLES = ("root", "targets")
ONLINE_ROLES = ("snapshot", "timestamp")
KEYS_DIR = "keys"


def generate_key() -> CryptoSigner:
    """A new Ed25519 key pair."""
    return CryptoSigner.generate_ed25519()


def keyid_of(signer: CryptoSigner) -> str:
    return str(signer.public_key.keyid)


def write_key(path: Path, signer: CryptoSigner) -> None:
    """Write a private key (mode 0600); an existing file is never overwritten."""
    if path.exists():
        raise SigningKeyError(f"{path} already exists: refusing to overwrite a key (move it away first)")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, signer.private_bytes, mode=0o600)


def load_key(path: Path) -> CryptoSigner:
    """Load an Ed25519 private key file written by ``write_key``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise SigningKeyError(f"key file {path} does not exist (is the key medium plugged in?)") from exc
    except OSError as exc:
        raise SigningKeyError(f"key file {path} cannot be read: {exc.strerror or exc}") from exc
    try:
        private = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} is not an Ed25519 key (release keys are Ed25519)")
    return CryptoSigner(private)


def online_key_path(repo: Path, role: str) -> Path:
    if role not in ONLINE_ROLES:
        raise ValueError(f"{role} is not an online role")
    return repo / KEYS_DIR / f"{role}.pem"


def check_outside(repo: Path, folder: Path, what: str) -> None:
    """Offline keys must never be stored inside the repository folder (parts of it are served)."""
    repo_real, folder_real = repo.resolve(), folder.resolve()
    if folder_real == repo_real or folder_real.is_relative_to(repo_real):
        raise RepositoryError(
            f"{what} {folder} is inside the repository {repo}: keep root and targets keys offline, "
            "e.g. on a USB stick that is unplugged after use"
        )


def prepare_online_dir(repo: Path) -> Path:
    folder = repo / KEYS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder
