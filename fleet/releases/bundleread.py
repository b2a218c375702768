"""Reading release bundles: every member checked against the manifest before anything is used.

``read_bundle`` checks the structure (only regular files, only the manifest and the objects it
names, nothing missing, lengths as listed, no path outside the bundle); ``verify_bundle`` and
``extract_objects`` also check each object's sha256 while streaming it.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from fleet.releases.errors import BundleError
from fleet.releases.report import NullReporter, Reporter
from protocol.atomic import fsync_dir
from protocol.errors import PayloadError
from protocol.release import (
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    OBJECTS_DIR,
    SHA256_RE,
    ReleaseManifest,
    parse_manifest,
)

CHUNK = 1024 * 1024

_TAR_ERRORS = (tarfile.TarError, EOFError, ValueError, OverflowError, UnicodeError, OSError)


class _Checked:
    """An open bundle whose structure has been checked against its manifest."""

    def __init__(self, path: Path) -> None:
        try:
            self.tar = tarfile.open(path, mode="r:")  # noqa: SIM115 (closed by close())
        except FileNotFoundError as exc:
            raise BundleError(f"bundle {path} does not exist") from exc
        except _TAR_ERRORS as exc:
            raise BundleError(f"{path} is not a release bundle (an uncompressed tar): {exc}") from exc
        try:
            self.manifest, self.raw, self.members = self._check(path)
        except BaseException:
            self.tar.close()
            raise

    def _check(self, path: Path) -> tuple[ReleaseManifest, bytes, dict[str, tarfile.TarInfo]]:
        try:
            members = self.tar.getmembers()
        except _TAR_ERRORS as exc:
            raise BundleError(f"bundle {path} is damaged: {exc}") from exc
        manifest_info: tarfile.TarInfo | None = None
        objects: dict[str, tarfile.TarInfo] = {}
        for info in members:
            name = info.name
            if name.startswith("/") or ".." in PurePosixPath(name).parts or "\\" in name:
                raise BundleError(f"bundle member {name!r} points outside the bundle (path traversal)")
            if not info.isreg():
                raise BundleError(
                    f"bundle member {name!r} is a link, folder or device: a bundle holds only plain files"
                )
            sha = name[len(OBJECTS_DIR) + 1 :] if name.startswith(f"{OBJECTS_DIR}/") else ""
            if name == MANIFEST_FILE:
                if manifest_info is not None:
                    raise BundleError(f"bundle holds {MANIFEST_FILE} twice")
                manifest_info = info
            elif SHA256_RE.match(sha):
                if sha in objects:
                    raise BundleError(f"bundle holds object {sha} twice")
                objects[sha] = info
            else:
                raise BundleError(
                    f"unexpected bundle member {name!r}: only {MANIFEST_FILE} and {OBJECTS_DIR}/<sha256>"
                )
        if manifest_info is None:
            raise BundleError(f"bundle {path} has no {MANIFEST_FILE}")
        if manifest_info.size > MAX_MANIFEST_BYTES:
            raise BundleError(f"the bundle's {MANIFEST_FILE} is larger than {MAX_MANIFEST_BYTES} bytes")
        raw = self._read_all(manifest_info)
        try:
            manifest = parse_manifest(raw)
        except PayloadError as exc:
            raise BundleError(f"the bundle's {MANIFEST_FILE} is not a valid release manifest: {exc}") from exc
        wanted = manifest.objects()
        missing = sorted(set(wanted) - set(objects))
        if missing:
            raise BundleError(f"bundle lacks {len(missing)} object(s) the manifest lists, e.g. {missing[0]}")
        extra = sorted(set(objects) - set(wanted))
        if extra:
            raise BundleError(f"bundle holds object {extra[0]}, which the manifest does not list")
        for sha, info in objects.items():
            if info.size != wanted[sha]:
                raise BundleError(
                    f"object {sha} is {info.size} bytes in the bundle but {wanted[sha]} in the manifest"
                )
        return manifest, raw, objects

    def _read_all(self, info: tarfile.TarInfo) -> bytes:
        try:
            handle = self.tar.extractfile(info)
            data = handle.read() if handle is not None else b""
        except _TAR_ERRORS as exc:
            raise BundleError(f"bundle member {info.name!r} cannot be read: {exc}") from exc
        if len(data) != info.size:
            raise BundleError(f"bundle member {info.name!r} is cut short")
        return data

    def stream(self, sha: str) -> Iterator[bytes]:
        """The object's bytes in blocks; BundleError if its length or sha256 is not the manifest's."""
        info = self.members[sha]
        digest = hashlib.sha256()
        done = 0
        try:
            handle = self.tar.extractfile(info)
            if handle is None:
                raise BundleError(f"bundle object {sha} cannot be read")
            while block := handle.read(CHUNK):
                digest.update(block)
                done += len(block)
                yield block
        except _TAR_ERRORS as exc:
            raise BundleError(f"bundle object {sha} cannot be read: {exc}") from exc
        if done != info.size or digest.hexdigest() != sha:
            raise BundleError(
                f"bundle object {sha} does not match its sha256: the bundle was altered or damaged"
            )

    def close(self) -> None:
        self.tar.close()


def read_bundle(path: Path) -> tuple[ReleaseManifest, bytes]:
    """The manifest of the bundle at ``path`` and its exact bytes, after the structure checks."""
    checked = _Checked(path)
    checked.close()
    return checked.manifest, checked.raw


def verify_bundle(path: Path, reporter: Reporter | None = None) -> ReleaseManifest:
    """``read_bundle`` plus the sha256 of every object (reads the whole bundle)."""
    report = reporter or NullReporter()
    checked = _Checked(path)
    try:
        report.start(f"verifying {path.name}", checked.manifest.total_bytes)
        for sha in sorted(checked.members):
            for block in checked.stream(sha):
                report.advance(len(block))
        return checked.manifest
    finally:
        checked.close()


def extract_objects(
    path: Path,
    dest: Path,
    *,
    have: Callable[[str, int], bool] | None = None,
    reporter: Reporter | None = None,
) -> tuple[ReleaseManifest, bytes, list[str]]:
    """Copy the bundle's objects to ``dest/<sha256>`` (each verified, then renamed into place).

    ``have(sha, length)`` says an object is already there and valid (skipped). Returns the
    manifest, its bytes and the objects written. Nothing unverified is ever left under its name.
    """
    report = reporter or NullReporter()
    checked = _Checked(path)
    written: list[str] = []
    try:
        todo = {
            sha: info.size for sha, info in checked.members.items() if not (have and have(sha, info.size))
        }
        report.start(f"copying {len(todo)} object(s)", sum(todo.values()))
        dest.mkdir(parents=True, exist_ok=True)
        for sha in sorted(todo):
            tmp = dest / f".{sha}.{os.getpid()}.tmp"
            try:
                with tmp.open("wb") as handle:
                    for block in checked.stream(sha):
                        handle.write(block)
                        report.advance(len(block))
                    handle.flush()
                    os.fsync(handle.fileno())
                os.chmod(tmp, 0o644)
                os.replace(tmp, dest / sha)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            written.append(sha)
        if written:
            fsync_dir(dest)
        return checked.manifest, checked.raw, written
    finally:
        checked.close()
