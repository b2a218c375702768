"""Low-level repository state: read, sign and write the four top-level TUF roles on disk.

Layout (TUF specification, consistent snapshots)::

    REPO/metadata/N.root.json        every root version; root.json is a copy of the newest
    REPO/metadata/N.targets.json     N.snapshot.json    timestamp.json
    REPO/targets/releases/<version>/<sha256>.manifest.json
    REPO/targets/objects/<sha256>    release files, shared by every release that holds them
    REPO/keys/                       online snapshot and timestamp keys (0600, never served)
    REPO/repository.json             expiry settings (not served)

Writes go file by file with ``atomic_write_bytes``, newest role last (targets, snapshot, then
timestamp), so a client reading at any moment sees the previous consistent state or the new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, MetaFile, Root, Signed, Snapshot, Targets, Timestamp
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from fleet.releases.errors import RepositoryError, SigningKeyError, ThresholdError
from fleet.releases.keys import keyid_of, load_key, online_key_path
from protocol.atomic import atomic_write_bytes, atomic_write_json

METADATA_DIR = "metadata"
TARGETS_DIR = "targets"
CONFIG_FILE = "repository.json"
LOCK_FILE = ".lock"


@dataclass(frozen=True)
class Expiry:
    """How long each role's metadata stays valid after it is signed."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)

    def of(self, role: str) -> timedelta:
        value: timedelta = getattr(self, role)
        return value

    def to_json(self) -> dict[str, float]:
        return {f.name: self.of(f.name).total_seconds() for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Expiry:
        return cls(**{f.name: timedelta(seconds=float(data[f.name])) for f in fields(cls)})


@dataclass
class State:
    """The current signed metadata of the four top-level roles."""

    root: Metadata[Root]
    targets: Metadata[Targets]
    snapshot: Metadata[Snapshot]
    timestamp: Metadata[Timestamp]
    expiry: Expiry


def utc(now: datetime | None) -> datetime:
    moment = now or datetime.now(timezone.utc)
    if moment.tzinfo is None:
        raise ValueError("times must be timezone-aware (UTC)")
    return moment.astimezone(timezone.utc).replace(microsecond=0)


def metadata_dir(repo: Path) -> Path:
    return repo / METADATA_DIR


@contextlib.contextmanager
def locked(repo: Path) -> Iterator[None]:
    """Exclusive lock of the repository (publish, withdraw, rotate and the re-signer take turns)."""
    if not (metadata_dir(repo) / "root.json").is_file():
        raise RepositoryError(
            f"{repo} is not a release repository (no metadata/root.json): run `cityedge release keys init`"
        )
    with (repo / LOCK_FILE).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read(path: Path, kind: type[Signed]) -> Metadata[Any]:
    try:
        md: Metadata[Any] = Metadata.from_bytes(path.read_bytes())
    except FileNotFoundError as exc:
        raise RepositoryError(f"repository file {path} is missing: the repository is damaged") from exc
    except (OSError, DeserializationError) as exc:
        raise RepositoryError(f"repository file {path} cannot be read: {exc}") from exc
    if not isinstance(md.signed, kind):
        raise RepositoryError(f"{path} holds {md.signed.type} metadata, not {kind.type}")
    return md


def load_state(repo: Path) -> State:
    meta = metadata_dir(repo)
    root: Metadata[Root] = _read(meta / "root.json", Root)
    timestamp: Metadata[Timestamp] = _read(meta / "timestamp.json", Timestamp)
    snapshot: Metadata[Snapshot] = _read(
        meta / f"{timestamp.signed.snapshot_meta.version}.snapshot.json", Snapshot
    )
    targets_meta = snapshot.signed.meta.get("targets.json")
    if targets_meta is None:
        raise RepositoryError(f"the snapshot of {repo} does not name targets.json: the repository is damaged")
    targets: Metadata[Targets] = _read(meta / f"{targets_meta.version}.targets.json", Targets)
    return State(root, targets, snapshot, timestamp, load_expiry(repo))


def load_expiry(repo: Path) -> Expiry:
    try:
        data = json.loads((repo / CONFIG_FILE).read_text(encoding="utf-8"))
        return Expiry.from_json(data["expiry_s"])
    except FileNotFoundError:
        return Expiry()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RepositoryError(f"{repo / CONFIG_FILE} is not valid: {exc}") from exc


def save_expiry(repo: Path, expiry: Expiry) -> None:
    atomic_write_json(repo / CONFIG_FILE, {"format": 1, "expiry_s": expiry.to_json()}, indent=1)


def write(repo: Path, md: Metadata[Any]) -> Path:
    """Write ``md`` under its spec name (N.root.json + root.json, N.targets.json, N.snapshot.json,
    timestamp.json) and return the path written."""
    data = md.to_bytes(JSONSerializer(compact=False))
    meta = metadata_dir(repo)
    role, version = md.signed.type, md.signed.version
    if role == Timestamp.type:
        path = meta / "timestamp.json"
        atomic_write_bytes(path, data)
        return path
    path = meta / f"{version}.{role}.json"
    atomic_write_bytes(path, data)
    if role == Root.type:
        atomic_write_bytes(meta / "root.json", data)
    return path


def role_signers(
    root: Root, role: str, paths: Sequence[Path], *, need_threshold: bool = True
) -> list[CryptoSigner]:
    """Load the key files for ``role``; refuse a key the root does not list for it, and (unless
    told otherwise) fewer distinct keys than the role's threshold."""
    wanted = root.roles[role]
    signers: dict[str, CryptoSigner] = {}
    for path in paths:
        signer = load_key(path)
        keyid = keyid_of(signer)
        if keyid not in wanted.keyids:
            raise SigningKeyError(
                f"{path} is not a {role} key of this repository (key {keyid[:12]} is not listed for "
                f"{role} in root version {root.version}); check which key file you plugged in"
            )
        signers[keyid] = signer
    if need_threshold and len(signers) < wanted.threshold:
        raise ThresholdError(
            f"the {role} role needs {wanted.threshold} of its {len(wanted.keyids)} keys to sign; "
            f"{len(signers)} given: pass more --{role}-key files"
        )
    return list(signers.values())


def online_signer(repo: Path, root: Root, role: str) -> CryptoSigner:
    path = online_key_path(repo, role)
    return role_signers(root, role, [path])[0]


def sign(md: Metadata[Any], signers: Sequence[CryptoSigner], delegators: Sequence[Root]) -> None:
    """Replace ``md``'s signatures with the signers' and check every delegator's threshold."""
    md.signatures.clear()
    for signer in signers:
        md.sign(signer, append=True)
    role = md.signed.type
    for delegator in delegators:
        try:
            delegator.verify_delegate(role, md.signed_bytes, md.signatures)
        except UnsignedMetadataError as exc:
            which = f"root version {delegator.version}"
            raise ThresholdError(
                f"the new {role} metadata is not signed by enough {role} keys of {which} ({exc}): "
                f"pass more --{role}-key files"
            ) from exc


def bump(md: Metadata[Any], now: datetime, lifetime: timedelta) -> None:
    md.signed.version += 1
    md.signed.expires = now + lifetime


def commit_timestamp(repo: Path, state: State, now: datetime) -> None:
    ts = state.timestamp
    ts.signed.snapshot_meta = MetaFile(version=state.snapshot.signed.version)
    bump(ts, now, state.expiry.timestamp)
    sign(ts, [online_signer(repo, state.root.signed, "timestamp")], [state.root.signed])
    write(repo, ts)


def commit_snapshot(repo: Path, state: State, now: datetime) -> None:
    """New snapshot naming the current targets version, then a new timestamp."""
    snap = state.snapshot
    snap.signed.meta["targets.json"] = MetaFile(version=state.targets.signed.version)
    bump(snap, now, state.expiry.snapshot)
    sign(snap, [online_signer(repo, state.root.signed, "snapshot")], [state.root.signed])
    write(repo, snap)
    commit_timestamp(repo, state, now)


def commit_targets(repo: Path, state: State, signers: Sequence[CryptoSigner], now: datetime) -> None:
    """New targets version signed by ``signers``, then snapshot and timestamp."""
    bump(state.targets, now, state.expiry.targets)
    sign(state.targets, signers, [state.root.signed])
    write(repo, state.targets)
    commit_snapshot(repo, state, now)
