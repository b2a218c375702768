"""The device's fleet trust: the root key from enrolment and the current signed key list.

Files in ``DATA_DIR/trust/`` (written atomically, readable by the agent only):

* ``fleet_root.json``: ``{"kid", "public_key"}`` of the offline fleet root (trust anchor);
* ``fleet_keys.json``: the current key list as signed by that root.

``apply`` takes a newer list (from ``shadow/desired.trust``) after ``protocol.trust.check_update``
has accepted it; the stored list is re-verified against the root on every load.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol.trust import KeyList, RootKey, TrustError, check_update, verify_key_list

ROOT_FILE = "fleet_root.json"
KEYS_FILE = "fleet_keys.json"
TRUST_DIR = "trust"


class TrustStoreError(TrustError):
    """The trust files are missing or unreadable (the device is not enrolled, or they were damaged)."""


def trust_dir(data_dir: Path) -> Path:
    return Path(data_dir) / TRUST_DIR


def _write_atomic(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, sort_keys=True, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise TrustStoreError(
            f"{path} is missing: enrol the device first (cityedge provision enroll)"
        ) from exc
    except (OSError, ValueError) as exc:
        raise TrustStoreError(f"{path} cannot be read ({exc}): re-enrol the device") from exc


class TrustStore:
    """Fleet root + current key list of one device, persisted in ``directory``."""

    def __init__(self, directory: Path, root: RootKey, key_list: KeyList) -> None:
        self.directory = Path(directory)
        self._root = root
        self._list = key_list

    @classmethod
    def install(
        cls, directory: Path, root: RootKey, document: Mapping[str, Any], now: datetime
    ) -> TrustStore:
        """First trust at enrolment: the list must be signed by ``root`` and not expired."""
        store = cls(directory, root, check_update(document, root, None, now))
        store.save()
        return store

    @classmethod
    def load(cls, directory: Path) -> TrustStore:
        """Read the trust files and re-verify the stored list against the root."""
        directory = Path(directory)
        try:
            root = RootKey.from_dict(_read(directory / ROOT_FILE))
            key_list = verify_key_list(_read(directory / KEYS_FILE), root)
        except TrustStoreError:
            raise
        except TrustError as exc:
            raise TrustStoreError(
                f"trust files in {directory} are not valid ({exc}): re-enrol the device"
            ) from exc
        return cls(directory, root, key_list)

    @property
    def root(self) -> RootKey:
        return self._root

    @property
    def key_list(self) -> KeyList:
        return self._list

    @property
    def version(self) -> int:
        return self._list.version

    def save(self) -> None:
        _write_atomic(self.directory / ROOT_FILE, self._root.to_dict())
        _write_atomic(self.directory / KEYS_FILE, self._list.document)

    def apply(self, document: Mapping[str, Any], now: datetime) -> bool:
        """Replace the key list with ``document`` when it is a valid newer list.

        Returns False (and changes nothing) when ``document`` is the list already in use.
        Raises KeyListRejected saying why otherwise (not signed by the root, older, expired).
        """
        if dict(document) == dict(self._list.document):
            return False
        accepted = check_update(document, self._root, self._list.version, now)
        previous = self._list
        self._list = accepted
        try:
            _write_atomic(self.directory / KEYS_FILE, accepted.document)
        except OSError:
            self._list = previous
            raise
        return True

    def command_keys(self, now: datetime) -> dict[str, Ed25519PublicKey]:
        """The fleet keys that may sign commands and desired state at ``now``."""
        return self._list.active(now)
