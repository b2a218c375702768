"""The city's TUF release repository: create it, publish and withdraw releases, rotate keys, and
keep the online timestamp and snapshot signatures fresh.

Roles and keys: root and targets keys are offline (the operator's medium, plugged in for
``publish``, ``withdraw``, ``rotate``); snapshot and timestamp keys are online in ``REPO/keys`` so
``refresh_online`` can re-sign unattended. Every change of targets makes a new targets version, a
new snapshot naming it and a new timestamp naming that snapshot; the files layout is described in
``fleet/releases/meta.py``.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp

from fleet.releases import meta
from fleet.releases.bundle import extract_objects, read_bundle, sha256_file
from fleet.releases.errors import ConflictError, NotFound, RepositoryError
from fleet.releases.keys import (
    OFFLINE_ROLES,
    ONLINE_ROLES,
    ROLES,
    check_outside,
    generate_key,
    keyid_of,
    online_key_path,
    prepare_online_dir,
    write_key,
)
from fleet.releases.meta import Expiry, locked, utc
from fleet.releases.report import Reporter
from protocol.atomic import atomic_write_bytes
from protocol.release import MANIFEST_FILE, OBJECTS_DIR, manifest_target, version_key

RELEASES_PREFIX = "releases/"


def targets_dir(repo: Path) -> Path:
    return repo / meta.TARGETS_DIR


def objects_dir(repo: Path) -> Path:
    return targets_dir(repo) / OBJECTS_DIR


def manifest_file(repo: Path, version: str, sha256: str) -> Path:
    """Where the manifest target lives (hash-prefixed name, as TUF clients fetch it)."""
    return targets_dir(repo) / "releases" / version / f"{sha256}.{MANIFEST_FILE}"


# --- creating ----------------------------------------------------------------------------------


def init_repo(
    repo: Path,
    offline_key_dir: Path,
    *,
    root_threshold: int = 1,
    root_keys: int = 1,
    targets_threshold: int = 1,
    targets_keys: int = 1,
    expiry: Expiry | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Create an empty repository at ``repo`` with new keys.

    Root and targets private keys go to ``offline_key_dir`` (``root-1.pem``, ``targets-1.pem``,
    ...), which must be outside ``repo``; snapshot and timestamp keys go to ``repo/keys``.
    Returns the key files written and the path of the first root (what devices trust)."""
    expiry = expiry or Expiry()
    moment = utc(now)
    check_outside(repo, offline_key_dir, "the offline key folder")
    if (meta.metadata_dir(repo) / "root.json").exists():
        raise RepositoryError(f"{repo} already holds a repository (metadata/root.json exists)")
    for role, keys, threshold in (
        ("root", root_keys, root_threshold),
        ("targets", targets_keys, targets_threshold),
    ):
        if not 1 <= threshold <= keys:
            raise RepositoryError(
                f"the {role} threshold must be between 1 and the number of {role} keys ({keys})"
            )
    signers = {
        "root": [generate_key() for _ in range(root_keys)],
        "targets": [generate_key() for _ in range(targets_keys)],
        "snapshot": [generate_key()],
        "timestamp": [generate_key()],
    }
    written: dict[str, list[str]] = {}
    offline_key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for role in OFFLINE_ROLES:
        paths = [offline_key_dir / f"{role}-{i}.pem" for i in range(1, len(signers[role]) + 1)]
        for path in paths:
            if path.exists():
                raise RepositoryError(f"{path} already exists: use an empty folder for the new offline keys")
        for path, signer in zip(paths, signers[role], strict=True):
            write_key(path, signer)
        written[role] = [str(p) for p in paths]
    prepare_online_dir(repo)
    for role in ONLINE_ROLES:
        write_key(online_key_path(repo, role), signers[role][0])
        written[role] = [str(online_key_path(repo, role))]
    meta.save_expiry(repo, expiry)
    objects_dir(repo).mkdir(parents=True, exist_ok=True)

    root = Root(expires=moment + expiry.root, consistent_snapshot=True)
    for role in ROLES:
        for signer in signers[role]:
            root.add_key(signer.public_key, role)
    root.roles["root"].threshold = root_threshold
    root.roles["targets"].threshold = targets_threshold
    state = meta.State(
        Metadata(root),
        Metadata(Targets(expires=moment + expiry.targets)),
        Metadata(Snapshot(expires=moment + expiry.snapshot)),
        Metadata(Timestamp(expires=moment + expiry.timestamp, snapshot_meta=MetaFile(version=1))),
        expiry,
    )
    meta.sign(state.root, signers["root"], [root])
    first_root = meta.write(repo, state.root)
    meta.sign(state.targets, signers["targets"], [root])
    meta.write(repo, state.targets)
    meta.sign(state.snapshot, signers["snapshot"], [root])
    meta.write(repo, state.snapshot)
    meta.sign(state.timestamp, signers["timestamp"], [root])
    meta.write(repo, state.timestamp)
    return {"repository": str(repo), "root": str(first_root), "keys": written}


# --- releases ----------------------------------------------------------------------------------


def _custom(target: TargetFile) -> dict[str, Any]:
    custom = target.unrecognized_fields.get("custom")
    return dict(custom) if isinstance(custom, dict) else {}


def publish(
    repo: Path,
    bundle: Path,
    targets_keys: Sequence[Path],
    *,
    now: datetime | None = None,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Add the bundle's release: copy its objects, add its manifest as target
    ``releases/<version>/manifest.json`` and sign new targets, snapshot and timestamp.

    Publishing the same content again changes nothing; the same version with other content is
    refused (a version number names one content forever, even after it was withdrawn)."""
    moment = utc(now)
    manifest, raw = read_bundle(bundle)
    sha = hashlib.sha256(raw).hexdigest()
    name = manifest_target(manifest.version)
    with locked(repo):
        state = meta.load_state(repo)
        current = state.targets.signed.targets.get(name)
        if current is not None and current.hashes.get("sha256") != sha:
            raise ConflictError(
                f"release {manifest.version} is already published with other content: "
                "give the new build a new version number"
            )
        earlier = {
            p.name.split(".", 1)[0] for p in manifest_file(repo, manifest.version, sha).parent.glob("*.json")
        }
        if earlier - {sha}:
            raise ConflictError(
                f"release {manifest.version} was published before with other content (since withdrawn): "
                "a version number is never reused; give the new build a new version number"
            )
        signers = meta.role_signers(state.root.signed, "targets", targets_keys)
        copied, raw_again, written = extract_objects(
            bundle, objects_dir(repo), have=_have_object(repo), reporter=reporter
        )
        if raw_again != raw:
            raise ConflictError(f"{bundle} changed while it was being published; publish again")
        path = manifest_file(repo, manifest.version, sha)
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != sha:
            atomic_write_bytes(path, raw)
        result = {"version": manifest.version, "target": name, "sha256": sha, "objects_copied": len(written)}
        if current is not None:
            return {**result, "changed": False}
        custom = {
            "version": copied.version,
            "build_time": copied.build_time,
            "total_bytes": copied.total_bytes,
            "files": len(copied.files),
        }
        state.targets.signed.targets[name] = TargetFile(
            len(raw), {"sha256": sha}, name, unrecognized_fields={"custom": custom}
        )
        meta.commit_targets(repo, state, signers, moment)
        return {**result, "changed": True, "targets_version": state.targets.signed.version}


def _have_object(repo: Path) -> Any:
    def have(sha: str, length: int) -> bool:
        path = objects_dir(repo) / sha
        if not path.is_file() or path.stat().st_size != length:
            return False
        return sha256_file(path)[0] == sha

    return have


def withdraw(
    repo: Path, version: str, targets_keys: Sequence[Path], *, now: datetime | None = None
) -> dict[str, Any]:
    """Remove release ``version`` from the signed targets (e.g. a vulnerable release): devices no
    longer find it. Its files stay on disk; the version number is never reused."""
    name = manifest_target(version)
    with locked(repo):
        state = meta.load_state(repo)
        if name not in state.targets.signed.targets:
            raise NotFound(f"release {version} is not published in {repo} (see `cityedge release list`)")
        signers = meta.role_signers(state.root.signed, "targets", targets_keys)
        del state.targets.signed.targets[name]
        meta.commit_targets(repo, state, signers, utc(now))
        return {"version": version, "target": name, "targets_version": state.targets.signed.version}


def list_releases(repo: Path) -> list[dict[str, Any]]:
    """The published releases, oldest version first."""
    with locked(repo):
        state = meta.load_state(repo)
    rows = []
    for name, target in state.targets.signed.targets.items():
        if not name.startswith(RELEASES_PREFIX):
            continue
        custom = _custom(target)
        rows.append(
            {
                "version": custom.get("version", name.split("/")[1]),
                "target": name,
                "build_time": custom.get("build_time"),
                "total_bytes": custom.get("total_bytes"),
                "files": custom.get("files"),
                "sha256": target.hashes.get("sha256"),
                "length": target.length,
            }
        )
    return sorted(rows, key=lambda row: version_key(str(row["version"])))


def status(repo: Path) -> dict[str, Any]:
    """Per role: version, expiry, threshold and key ids (to pick a key to rotate)."""
    with locked(repo):
        state = meta.load_state(repo)
    root = state.root.signed
    out: dict[str, Any] = {}
    for role, md in (
        ("root", state.root),
        ("targets", state.targets),
        ("snapshot", state.snapshot),
        ("timestamp", state.timestamp),
    ):
        out[role] = {
            "version": md.signed.version,
            "expires": md.signed.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "threshold": root.roles[role].threshold,
            "keyids": list(root.roles[role].keyids),
            "online": role in ONLINE_ROLES,
        }
    return out


# --- keys and expiry ---------------------------------------------------------------------------


def rotate(
    repo: Path,
    role: str,
    root_keys: Sequence[Path],
    new_key_out: Path | None = None,
    *,
    retire: str | None = None,
    role_keys: Sequence[Path] = (),
    now: datetime | None = None,
) -> dict[str, Any]:
    """Replace one key of ``role`` with a new one, through a new root version.

    The new root is signed by a threshold of the current root keys and, for ``role == "root"``,
    also by a threshold of the new root's keys (the new key included). ``retire`` is the key id
    (or a unique prefix) to replace; it may be left out when the role has one key. The new
    private key goes to ``new_key_out`` (offline roles; outside the repository) or to
    ``repo/keys`` (online roles). The role's metadata is then re-signed with the new key (plus
    ``role_keys``, the role's other keys, when its threshold needs them)."""
    if role not in ROLES:
        raise RepositoryError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    moment = utc(now)
    with locked(repo):
        state = meta.load_state(repo)
        old_root = copy.deepcopy(state.root.signed)
        old_keyid = _pick_key(old_root, role, retire)
        signers = meta.role_signers(old_root, "root", root_keys)
        signer = generate_key()
        key_file = new_key_out if role in OFFLINE_ROLES else online_key_path(repo, role)
        if key_file is None:
            raise RepositoryError(f"say where the new {role} key goes (--out FILE, outside the repository)")
        staged = key_file if role in OFFLINE_ROLES else key_file.with_name(key_file.name + ".new")
        if role in OFFLINE_ROLES:
            check_outside(repo, key_file.parent, "the new key's folder")
        else:
            staged.unlink(missing_ok=True)
        write_key(staged, signer)
        root = state.root.signed
        root.revoke_key(old_keyid, role)
        root.add_key(signer.public_key, role)
        meta.bump(state.root, moment, state.expiry.root)
        if role == "root":
            signers.append(signer)
        meta.sign(state.root, signers, [old_root, root])
        if staged != key_file:
            staged.replace(key_file)
        meta.write(repo, state.root)
        if role == "targets":
            others = meta.role_signers(root, "targets", role_keys, need_threshold=False)
            meta.commit_targets(repo, state, [signer, *others], moment)
        elif role == "snapshot":
            meta.commit_snapshot(repo, state, moment)
        elif role == "timestamp":
            meta.commit_timestamp(repo, state, moment)
        return {
            "role": role,
            "retired": old_keyid,
            "keyid": keyid_of(signer),
            "key_file": str(key_file),
            "root_version": root.version,
        }


def _pick_key(root: Root, role: str, retire: str | None) -> str:
    keyids = list(root.roles[role].keyids)
    if retire is None:
        if len(keyids) != 1:
            raise RepositoryError(
                f"the {role} role has {len(keyids)} keys: say which one to replace with --retire KEYID "
                "(see `cityedge release status`)"
            )
        return keyids[0]
    matches = [k for k in keyids if k.startswith(retire)]
    if len(matches) != 1:
        raise RepositoryError(f"--retire {retire!r} matches {len(matches)} of the {role} keys {keyids}")
    return matches[0]


def resign(repo: Path, role: str, keys: Sequence[Path], *, now: datetime | None = None) -> dict[str, Any]:
    """Sign a new version of an offline role with a fresh expiry (no other change): root with
    root keys, targets with targets keys. Run before they expire (see ``status``)."""
    if role not in OFFLINE_ROLES:
        raise RepositoryError(
            f"only root and targets are re-signed by hand; {role} is re-signed by the fleet"
        )
    moment = utc(now)
    with locked(repo):
        state = meta.load_state(repo)
        signers = meta.role_signers(state.root.signed, role, keys)
        if role == "targets":
            meta.commit_targets(repo, state, signers, moment)
            return {"role": role, "version": state.targets.signed.version}
        meta.bump(state.root, moment, state.expiry.root)
        meta.sign(state.root, signers, [state.root.signed])
        meta.write(repo, state.root)
        return {"role": role, "version": state.root.signed.version}


def refresh_online(repo: Path, now: datetime | None = None, margin: timedelta | None = None) -> bool:
    """Re-sign the timestamp when it expires within ``margin`` (default: half its lifetime), and
    the snapshot first when it would expire before such a new timestamp. Returns whether it did."""
    moment = utc(now)
    with locked(repo):
        state = meta.load_state(repo)
        margin = margin if margin is not None else state.expiry.timestamp / 2
        if state.snapshot.signed.expires - moment <= margin + state.expiry.timestamp:
            meta.commit_snapshot(repo, state, moment)
            return True
        if state.timestamp.signed.expires - moment <= margin:
            meta.commit_timestamp(repo, state, moment)
            return True
        return False


def expiry_warnings(
    repo: Path, now: datetime | None = None, within: timedelta = timedelta(days=14)
) -> list[str]:
    """Offline roles that expire within ``within``: the operator must act (the fleet cannot)."""
    moment = utc(now)
    state = meta.load_state(repo)
    notes = []
    for role, md in (("root", state.root), ("targets", state.targets)):
        expires = md.signed.expires
        if expires - moment <= within:
            notes.append(
                f"the {role} metadata expires at {expires:%Y-%m-%d %H:%M}Z: re-sign it with the offline "
                f"{role} key (`cityedge release resign --role {role}`) or devices will stop updating"
            )
    return notes
