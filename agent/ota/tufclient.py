"""The device's TUF client: which releases the city's repository offers, and their signed manifests.

Built on ``tuf.ngclient.Updater`` (metadata at ``<url>metadata/``, targets at ``<url>targets/``):
python-tuf checks signatures and thresholds, versions (rollback), expiry (freeze), consistency
between timestamp, snapshot and targets (mix-and-match) and lengths (endless data). This module
adds the device's clock floor before any expiry decision, and turns every python-tuf failure into
an ``OtaError`` whose message says which attack or fault it looks like and what to do; the
python-tuf exception stays chained as the cause.

The first root comes from ``trusted_root`` (installed at provisioning); the newer roots the
repository publishes are verified one by one and kept in ``metadata_dir/root_history``.
"""

from __future__ import annotations

import errno
import math
import re
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.api.serialization import DeserializationError
from tuf.ngclient import Updater
from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher
from urllib3.exceptions import MaxRetryError, NewConnectionError

from agent.ota.errors import (
    ClockError,
    DiskFull,
    OtaError,
    ReleaseNotFound,
    RepositoryError,
    TransferError,
)
from protocol.clock import BUILD_TIME, ClockNotSet, check_clock
from protocol.errors import PayloadError
from protocol.release import ReleaseManifest, parse_manifest, version_key
from protocol.timefmt import format_ts, utc_now

R = TypeVar("R")
RECORD_LIMIT = 1024 * 1024
"""Metadata bytes kept per role to explain a failure (never trusted for anything else)."""
_RELEASES = "releases/"


class _RecordingFetcher(Urllib3Fetcher):
    """The default fetcher, remembering the last URL and the last metadata bytes of each role."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(socket_timeout=max(1, math.ceil(timeout_s)), app_user_agent="cityedge-agent")
        self.last_url = ""
        self.metadata: dict[str, bytes] = {}

    def _fetch(self, url: str) -> Iterator[bytes]:
        self.last_url = url
        chunks = super()._fetch(url)
        return self._record(url, chunks) if "/metadata/" in url else chunks

    def _record(self, url: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
        kept = bytearray()
        for chunk in chunks:
            if len(kept) < RECORD_LIMIT:
                kept += chunk
            yield chunk
        self.metadata[_role_of(url)] = bytes(kept)


def _role_of(url: str) -> str:
    """``.../metadata/3.snapshot.json`` -> ``snapshot``."""
    name = url.rsplit("/", 1)[-1]
    parts = name.split(".")
    return parts[-2] if len(parts) >= 2 else name


class ReleaseClient:
    """TUF-verified view of the release repository at ``repository_url``."""

    def __init__(
        self,
        repository_url: str,
        metadata_dir: Path,
        cache_dir: Path,
        trusted_root: bytes | None = None,
        *,
        timeout_s: float = 30.0,
        build_time: datetime = BUILD_TIME,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.repository_url = repository_url if repository_url.endswith("/") else repository_url + "/"
        self.metadata_dir = metadata_dir
        self.cache_dir = cache_dir
        self.trusted_root = trusted_root
        self.timeout_s = timeout_s
        self.build_time = build_time
        self.now = now
        self._lock = threading.RLock()
        self._updater: Updater | None = None
        self._fetcher: _RecordingFetcher | None = None
        self._moment: datetime | None = None

    # --- public -------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Fetch and verify the newest root, timestamp, snapshot and targets metadata."""
        with self._lock:
            self._updater = None
            moment = self._check_clock()
            self.metadata_dir.mkdir(parents=True, exist_ok=True)
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            fetcher = _RecordingFetcher(self.timeout_s)
            self._fetcher, self._moment = fetcher, moment
            bootstrap = self.trusted_root
            if bootstrap is None and not (self.metadata_dir / "root.json").exists():
                raise RepositoryError(
                    f"no trusted TUF root: none was given and {self.metadata_dir / 'root.json'} does not "
                    "exist; install the repository's root.json at provisioning"
                )
            try:
                updater = Updater(
                    str(self.metadata_dir),
                    self.repository_url + "metadata/",
                    str(self.cache_dir),
                    self.repository_url + "targets/",
                    fetcher=fetcher,
                    bootstrap=bootstrap,
                )
            except tuf_errors.RepositoryError as exc:
                where = "given at provisioning" if bootstrap is not None else f"in {self.metadata_dir}"
                raise RepositoryError(
                    f"the trusted TUF root {where} is not valid, self-signed root metadata ({exc}): "
                    "install the repository's metadata/1.root.json again"
                ) from exc
            except OSError as exc:
                raise self._explain(exc, None) from exc
            # python-tuf fixes "now" when the Updater is built; expiry is judged at the same moment
            # that passed the clock check above (the only hook it has for the reference time).
            trusted = getattr(updater, "_trusted_set", None)
            if trusted is not None and hasattr(trusted, "reference_time"):
                trusted.reference_time = moment
            self._call(updater.refresh)
            self._updater = updater

    def manifest(self, target_name: str) -> tuple[ReleaseManifest, bytes]:
        """The release manifest at TUF target ``target_name`` (downloaded once, then cached) and its
        exact bytes, after the target's signed length and sha256 were checked."""
        with self._lock:
            updater = self._ready()
            info = self._call(lambda: updater.get_targetinfo(target_name))
            if info is None:
                raise ReleaseNotFound(
                    f"release target {target_name} is not in the repository's signed targets: it was never "
                    "published or it has been withdrawn (check `cityedge release list` on the fleet)"
                )
            path = updater.find_cached_target(info) or self._call(lambda: updater.download_target(info), info)
            raw = Path(path).read_bytes()
        try:
            manifest = parse_manifest(raw)
        except PayloadError as exc:
            raise RepositoryError(
                f"the signed target {target_name} is not a valid release manifest ({exc}): "
                "the release was built or published wrongly"
            ) from exc
        signed_version = info.custom.get("version")
        if signed_version != manifest.version:
            raise RepositoryError(
                f"the signed target {target_name} says version {signed_version!r} but the manifest inside "
                f"says {manifest.version!r}: refused (the release was published wrongly)"
            )
        return manifest, raw

    def releases(self) -> list[dict[str, Any]]:
        """The releases the verified targets metadata offers, oldest version first."""
        with self._lock:
            self._ready()
            path = self.metadata_dir / "targets.json"
            try:
                targets: Metadata[Targets] = Metadata.from_bytes(path.read_bytes())
            except (OSError, DeserializationError) as exc:
                raise RepositoryError(f"the verified targets metadata {path} cannot be read: {exc}") from exc
        rows = [
            _release_row(name, info)
            for name, info in targets.signed.targets.items()
            if name.startswith(_RELEASES)
        ]
        return sorted(rows, key=lambda row: version_key(str(row["version"])))

    # --- internals ----------------------------------------------------------------------------

    def _ready(self) -> Updater:
        if self._updater is None:
            self.refresh()
        assert self._updater is not None
        return self._updater

    def _check_clock(self) -> datetime:
        moment = self.now()
        try:
            return check_clock(moment, self.build_time)
        except ClockNotSet as exc:
            raise ClockError(
                f"the device clock ({format_ts(moment)}) is before the software build time "
                f"({format_ts(self.build_time)}), so signature expiry cannot be judged: sync the time "
                "(NTP, or set it from the technician's laptop) and check for updates again"
            ) from exc

    def _call(self, action: Callable[[], R], target: TargetFile | None = None) -> R:
        try:
            return action()
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError, OSError) as exc:
            raise self._explain(exc, target) from exc

    def _explain(self, exc: Exception, target: TargetFile | None) -> OtaError:
        fetcher = self._fetcher
        url = fetcher.last_url if fetcher is not None else self.repository_url
        role = _role_of(url)
        if isinstance(exc, tuf_errors.DownloadError):
            return _download_error(exc, url, role, target, self.timeout_s)
        if isinstance(exc, OSError):
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return DiskFull(
                    f"no space left to store TUF metadata in {self.metadata_dir}: free some space"
                )
            return OtaError(f"the TUF cache ({self.metadata_dir}, {self.cache_dir}) cannot be written: {exc}")
        if isinstance(exc, tuf_errors.ExpiredMetadataError):
            return RepositoryError(self._expired(str(exc)))
        if isinstance(exc, tuf_errors.UnsignedMetadataError):
            return RepositoryError(_unsigned(str(exc)))
        if isinstance(exc, tuf_errors.BadVersionNumberError):
            return RepositoryError(_bad_version(str(exc)))
        if isinstance(exc, tuf_errors.LengthOrHashMismatchError):
            if target is not None:
                return RepositoryError(
                    f"target {target.path} does not match its signed sha256 and length ({exc}): it was "
                    "tampered with or corrupted on the server; refused"
                )
            return RepositoryError(
                f"the {role} metadata does not match the length or hash the repository signed for it "
                f"({exc}): tampered or a half-updated mirror; refused"
            )
        if isinstance(exc, DeserializationError):
            return RepositoryError(
                f"the {role} metadata from {url} is not valid TUF metadata ({exc}): "
                "a broken or hostile server"
            )
        return RepositoryError(f"the release repository's metadata was refused: {exc}")

    def _expired(self, text: str) -> str:
        moment = format_ts(self._moment) if self._moment else "now"
        for role, advice in _EXPIRY_ADVICE.items():
            if role in text:
                when = self._expiry_of(role)
                on = f" on {when}" if when else ""
                return f"the {role} metadata expired{on} (device time {moment}): {advice}"
        return f"the repository's metadata has expired ({text}, device time {moment})"

    def _expiry_of(self, role: str) -> str | None:
        data = self._fetcher.metadata.get(role) if self._fetcher is not None else None
        if not data:
            return None
        try:
            return format_ts(Metadata.from_bytes(data).signed.expires)
        except DeserializationError:
            return None


def _release_row(name: str, info: TargetFile) -> dict[str, Any]:
    custom = info.custom
    return {
        "version": custom.get("version", name.split("/")[1]),
        "target": name,
        "build_time": custom.get("build_time"),
        "total_bytes": custom.get("total_bytes"),
        "files": custom.get("files"),
        "length": info.length,
        "sha256": info.hashes.get("sha256"),
    }


def _refused_connection(exc: BaseException) -> bool:
    """True when the chain holds a failed connection (urllib3 files "connection refused" under its
    timeout errors, so python-tuf reports it as a slow retrieval)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None or isinstance(seen, NewConnectionError):
            break
        inner = getattr(seen, "reason", None) if isinstance(seen, MaxRetryError) else seen.__cause__
        seen = inner if isinstance(inner, BaseException) else None
    return isinstance(seen, NewConnectionError)


def _download_error(
    exc: tuf_errors.DownloadError, url: str, role: str, target: TargetFile | None, timeout_s: float
) -> OtaError:
    if isinstance(exc, tuf_errors.DownloadLengthMismatchError):
        if target is not None:
            return RepositoryError(
                f"target {target.path} is larger than its signed length of {target.length} bytes: the server "
                "kept sending (endless-data attack or a replaced file); refused and nothing kept"
            )
        return RepositoryError(
            f"the {role} metadata at {url} is larger than allowed ({exc}): endless-data attack or a broken "
            "server; refused"
        )
    if isinstance(exc, tuf_errors.DownloadHTTPError):
        status = exc.status_code
        if status in (403, 404, 410) and target is not None:
            return RepositoryError(
                f"the repository has no file for target {target.path} ({url} answered HTTP {status}) "
                "although the signed metadata lists it: an incomplete upload or a broken mirror"
            )
        if status in (403, 404, 410):
            return RepositoryError(
                f"the repository has no {url.rsplit('/', 1)[-1]} ({url} answered HTTP {status}): check "
                "ota.repository_url (it ends in /tuf/) and that the fleet serves the release repository"
            )
        return TransferError(
            f"the release repository answered HTTP {status} for {url}: it will be tried again"
        )
    if isinstance(exc, tuf_errors.SlowRetrievalError) and not _refused_connection(exc):
        return TransferError(
            f"the release repository did not answer within {timeout_s:g}s ({url}): it will be tried again"
        )
    reason = "connection refused" if _refused_connection(exc) else str(exc.__cause__ or exc)
    return TransferError(
        f"cannot reach the release repository at {url} ({reason}): check the network and ota.repository_url; "
        "it will be tried again"
    )


_EXPIRY_ADVICE = {
    "timestamp": "the repository is frozen or the fleet's re-signer is not running "
    "(freeze attack or a stopped fleet service)",
    "snapshot": "the fleet's re-signer is not running or the repository is frozen (freeze attack)",
    "root": "the operator must sign a new root with the offline root keys "
    "(`cityedge release resign --role root`)",
    "targets": "the operator must publish or re-sign targets with the offline targets key "
    "(`cityedge release resign --role targets`)",
}
_UNSIGNED = re.compile(r"^(\S+) was signed by (\d+)/(\d+) keys")
_ROLLBACKS = (
    (re.compile(r"New timestamp version (\d+) must be >= (\d+)"), "timestamp", 1, 2),
    (re.compile(r"New snapshot version must be >= (\d+), got version (\d+)"), "snapshot", 2, 1),
    (re.compile(r"Expected (\w+)\.json version (\d+), got (\d+)"), None, 2, 3),
)
_MIXES = (
    re.compile(r"Expected (snapshot) version (\d+), got (\d+)"),
    re.compile(r"Expected (\w+) v(\d+), got v(\d+)"),
)


def _unsigned(text: str) -> str:
    match = _UNSIGNED.match(text)
    if not match:
        return f"signature check failed ({text}): metadata altered or signed with a wrong key; refused"
    role, valid, threshold = match.group(1), match.group(2), match.group(3)
    return (
        f"signature threshold not met for {role}: {valid} of the {threshold} required signatures are from "
        f"trusted {role} keys (altered metadata, a wrong or stolen key, or a key changed without a root "
        "update); refused"
    )


def _bad_version(text: str) -> str:
    for pattern, role, offered, trusted in _ROLLBACKS:
        match = pattern.search(text)
        if match:
            name = role or match.group(1)
            return (
                f"the repository offered an older {name} version ({match.group(offered)}; the device already "
                f"trusts version {match.group(trusted)}) (rollback attack or a restored old backup); refused"
            )
    for pattern in _MIXES:
        match = pattern.search(text)
        if match:
            role, named, served = match.group(1), match.group(2), match.group(3)
            parent = "timestamp" if role == "snapshot" else "snapshot"
            return (
                f"the {parent} names {role} version {named} but the repository served version {served} "
                "(mix-and-match attack or a half-updated mirror); refused"
            )
    root = re.search(r"Expected root version (\d+) instead got version (\d+)", text)
    if root:
        return (
            f"the repository's root chain is broken: root version {root.group(1)} was expected and "
            f"{root.group(2)} served; refused"
        )
    return f"the repository's metadata versions are inconsistent ({text}); refused"
