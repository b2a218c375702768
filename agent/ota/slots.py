"""A/B slots on the device: what is installed where, and writing a release into the inactive slot.

Slot root layout (the launcher and the updater rely on it)::

    ROOT/
      boot.json                       launcher state (written by the launcher only)
      current -> slots/a              the committed slot (switched by the updater only)
      slots/a/  slots/b/              each a complete release: its files at their manifest paths,
                                      site/ (wheels unpacked) and manifest.json, written LAST
      staging/objects/<sha256>        verified downloaded objects
      staging/objects/<sha256>.part   partial downloads (the resume point)

A slot is complete when its ``manifest.json`` is present and parses; every install first deletes
that file (and makes the deletion durable) before touching anything else in the slot, and writes
it again only after every file is on disk, so a power cut at any instant leaves either a complete
slot or one the launcher will never boot.

The installer never writes into the running slot (``$CITYEDGE_SLOT``, set by the launcher while it
tries a pending release) nor into the committed one (the target of ``current``): while a pending
release is on trial both slots are in use and an install is refused.

``Installer`` is the hook where an OS-level A/B system takes over. A RAUC or SWUpdate backend maps
``running_slot``/``inactive_slot`` to the booted and other rootfs slot (``rauc status``),
``install`` to writing a bundle built from the staged objects into the other slot, and ``verify``
to the tool's own verity/hash check; a balena backend maps them to its supervisor's release
directories. The updater only talks to this interface.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import shutil
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from agent.ota.errors import DiskFull, InstallError, IntegrityError, OtaError
from agent.ota.wheels import SITE_DIR, check_site, is_wheel_path, make_parents, unpack, unpacked_size
from protocol.atomic import atomic_write_bytes, fsync_dir
from protocol.errors import PayloadError
from protocol.release import MANIFEST_FILE, SHA256_RE, ReleaseManifest, parse_manifest

ENV_SLOT = "CITYEDGE_SLOT"
"""Set by the launcher for the program it starts: the slot it runs (``a``, ``b`` or the slot path)."""
SLOT_NAMES = ("a", "b")
BLOCK = 4096
"""Files take whole blocks: sizes are rounded up to this for the free-space check."""
WHEEL_EXPANSION = 4
"""Estimate of a wheel's unpacked size (× its length) while it is not downloaded yet."""
READ_BLOCK = 1024 * 1024
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class Installer(Protocol):
    """Where releases are installed. The updater calls, in order: ``missing_objects`` (what to
    download, into ``staged_object``), ``check_space``, ``install``; the launcher and the updater
    read ``running_slot``, ``slot_manifest`` and ``verify``; ``discard_staging`` after a commit."""

    def running_slot(self) -> Path | None:
        """The slot the running program comes from; None on a device with no release installed."""
        ...

    def inactive_slot(self) -> Path:
        """The slot the next release goes into; InstallError when both are in use."""
        ...

    def staged_object(self, sha256: str) -> Path:
        """Where the downloaded object ``sha256`` is kept until it is installed."""
        ...

    def available_objects(self, manifest: ReleaseManifest) -> set[str]:
        """sha256 of the manifest's objects that are on the device already (staged or in a slot)."""
        ...

    def missing_objects(self, manifest: ReleaseManifest) -> dict[str, int]:
        """Objects to download before ``install``: sha256 -> length."""
        ...

    def space_needed(self, manifest: ReleaseManifest) -> int:
        """Bytes of free space ``install`` needs once every object is downloaded: what it writes
        into the inactive slot (copies, unpacked wheels) less what clearing that slot gives back.
        Neither the downloads themselves nor the safety margin are included."""
        ...

    def check_space(self, manifest: ReleaseManifest) -> None:
        """DiskFull when the missing downloads + ``space_needed`` + the margin exceed what is free."""
        ...

    def install(self, manifest: ReleaseManifest, manifest_bytes: bytes) -> Path:
        """Write the release into the inactive slot, verified; returns the slot. DiskFull,
        IntegrityError or InstallError leave the slot incomplete (never booted)."""
        ...

    def verify(self, slot: Path) -> ReleaseManifest:
        """Re-hash every file of ``slot``; IntegrityError or InstallError when it is not intact."""
        ...

    def slot_manifest(self, slot: Path) -> ReleaseManifest | None:
        """The manifest of a complete slot, None when the slot is empty or incomplete."""
        ...

    def discard_staging(self) -> None:
        """Delete every staged object and partial download."""
        ...


@dataclass(frozen=True)
class _Source:
    path: Path
    staged: bool


def _mb(count: int) -> str:
    return f"{count / 1e6:,.1f} MB"


def _blocks(count: int) -> int:
    return -(-count // BLOCK) * BLOCK


def _default_free_space(path: Path) -> int:
    return shutil.disk_usage(path).free


def _syncfs(path: Path) -> None:
    """Flush every file and directory of the file system holding ``path`` (one call instead of an
    fsync per file: a release has thousands of small files)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
        if function is None:
            os.sync()
            return
        if function(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(path))
    finally:
        os.close(fd)


def _hash_fd(fd: int, buffer: bytearray) -> tuple[str, int]:
    digest = hashlib.sha256()
    view = memoryview(buffer)
    size = 0
    while True:
        count = os.readv(fd, [buffer])
        if not count:
            return digest.hexdigest(), size
        digest.update(view[:count])
        size += count


def check_layout(manifest: ReleaseManifest) -> None:
    """InstallError when a manifest path is reserved by the slot layout or clashes with another."""
    paths = {item.path for item in manifest.files}
    for path in sorted(paths):
        parts = PurePosixPath(path).parts
        if parts[0] in (MANIFEST_FILE, SITE_DIR):
            raise InstallError(
                f"release {manifest.version} lists {path!r}, which is reserved in a slot "
                f"({MANIFEST_FILE} and {SITE_DIR}/ are written by the installer); rebuild the release"
            )
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in paths:
                raise InstallError(
                    f"release {manifest.version} lists {'/'.join(parts[:depth])!r} both as a file and "
                    f"as the directory of {path!r}; rebuild the release"
                )


class SlotInstaller:
    """The default ``Installer``: two directories ``ROOT/slots/a`` and ``ROOT/slots/b``.

    ``free_space(path)`` returns the bytes free for the file system holding ``path`` (default
    ``shutil.disk_usage``); ``margin_bytes`` is kept free beyond what the install needs. With
    ``link_staged`` (default), a staged object on the same file system is hard-linked into the
    slot instead of copied (no second copy on disk; its hash is still checked). ``environ`` is
    read for ``CITYEDGE_SLOT`` (default ``os.environ``, read at each call).
    """

    def __init__(
        self,
        root: Path,
        *,
        margin_bytes: int = 0,
        free_space: Callable[[Path], int] | None = None,
        link_staged: bool = True,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        self.slots_dir = root / "slots"
        self.current_link = root / "current"
        self.staging = root / "staging" / "objects"
        self.margin_bytes = margin_bytes
        self.link_staged = link_staged
        self._free_space = free_space or _default_free_space
        self._environ = environ
        self._damaged: set[str] = set()
        """Objects found damaged in a slot during this process: downloaded instead."""

    # -- which slot is which -----------------------------------------------------------------------

    def slot_path(self, name: str) -> Path:
        if name not in SLOT_NAMES:
            raise ValueError(f"slot {name!r} is not one of {SLOT_NAMES}")
        return self.slots_dir / name

    def _named(self, value: str, source: str) -> Path:
        if value in SLOT_NAMES:
            return self.slot_path(value)
        target = Path(value) if os.path.isabs(value) else self.root / value
        real = os.path.realpath(target)
        for name in SLOT_NAMES:
            if real == os.path.realpath(self.slot_path(name)):
                return self.slot_path(name)
        raise InstallError(
            f"{source} does not name slot a or b under {self.root}; refusing to install, so that the "
            "release in use cannot be overwritten — check the launcher's set-up"
        )

    def committed_slot(self) -> Path | None:
        """The target of ``ROOT/current``; None when there is none yet."""
        try:
            target = os.readlink(self.current_link)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise InstallError(
                f"{self.current_link} should be a symlink to slots/a or slots/b but is not readable "
                f"as one ({exc.strerror}); the slot root is damaged — reinstall the device software"
            ) from None
        return self._named(target, f"{self.current_link} -> {target}")

    def running_slot(self) -> Path | None:
        env = os.environ if self._environ is None else self._environ
        value = env.get(ENV_SLOT)
        if value:
            return self._named(value, f"{ENV_SLOT}={value!r}")
        return self.committed_slot()

    def busy_slots(self) -> list[Path]:
        """Slots that must not be written: the running one and the committed one."""
        busy: list[Path] = []
        for slot in (self.running_slot(), self.committed_slot()):
            if slot is not None and slot not in busy:
                busy.append(slot)
        return busy

    def inactive_slot(self) -> Path:
        busy = self.busy_slots()
        for name in SLOT_NAMES:
            slot = self.slot_path(name)
            if slot not in busy:
                return slot
        raise InstallError(
            "both slots are in use: the release on trial (slot "
            f"{busy[0].name}) is not committed yet and slot {busy[1].name} holds the release to roll "
            "back to; a new release can be installed once the trial ends (committed or rolled back)"
        )

    # -- objects -----------------------------------------------------------------------------------

    def staged_object(self, sha256: str) -> Path:
        if not SHA256_RE.match(sha256):
            raise ValueError(f"{sha256!r} is not a sha256 hex digest")
        return self.staging / sha256

    def _sources(self, manifest: ReleaseManifest) -> dict[str, _Source]:
        """Where each available object of ``manifest`` can be read from (staging first)."""
        wanted = manifest.objects()
        found: dict[str, _Source] = {}
        for sha256, length in wanted.items():
            path = self.staged_object(sha256)
            if _is_file(path, length):
                found[sha256] = _Source(path, staged=True)
        for slot in self.busy_slots():
            installed = self.slot_manifest(slot)
            if installed is None:
                continue
            for item in installed.files:
                if item.sha256 in found or item.sha256 not in wanted or item.sha256 in self._damaged:
                    continue
                path = slot / item.path
                if _inside(slot, path) and _is_file(path, item.length):
                    found[item.sha256] = _Source(path, staged=False)
        return found

    def available_objects(self, manifest: ReleaseManifest) -> set[str]:
        return set(self._sources(manifest))

    def missing_objects(self, manifest: ReleaseManifest) -> dict[str, int]:
        found = self._sources(manifest)
        return {sha: length for sha, length in manifest.objects().items() if sha not in found}

    def discard_staging(self) -> None:
        try:
            shutil.rmtree(self.staging)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise InstallError(f"could not delete the staged download in {self.staging}: {exc}") from exc

    # -- space -------------------------------------------------------------------------------------

    def _can_link(self, source: _Source, mode: int, linked: dict[str, int], sha256: str) -> bool:
        """A staged object may be hard-linked when no chmod would touch another slot's file."""
        if not (self.link_staged and source.staged):
            return False
        if sha256 in linked:
            return linked[sha256] == mode
        try:
            info = os.lstat(source.path)
            same_device = info.st_dev == os.stat(self.slots_dir).st_dev
        except OSError:
            return False
        return same_device and (info.st_nlink == 1 or stat.S_IMODE(info.st_mode) == mode)

    def _write_bytes(self, manifest: ReleaseManifest, sources: dict[str, _Source]) -> int:
        """Bytes written into the slot: copied files and unpacked wheels (estimated if absent)."""
        total = 0
        linked: dict[str, int] = {}
        self.slots_dir.mkdir(parents=True, exist_ok=True)
        for item in manifest.files:
            source = sources.get(item.sha256)
            if source is None:  # to be downloaded: a fresh staged object is linked where it can be
                can_link = self.link_staged and linked.get(item.sha256, item.mode) == item.mode
            else:
                can_link = self._can_link(source, item.mode, linked, item.sha256)
            if can_link:
                linked.setdefault(item.sha256, item.mode)
            else:
                total += _blocks(item.length)
            if is_wheel_path(item.path):
                if source is None:
                    total += WHEEL_EXPANSION * item.length
                else:
                    try:
                        total += unpacked_size(source.path, BLOCK)[0]
                    except (OSError, ValueError):
                        total += WHEEL_EXPANSION * item.length
        return total

    def _freed_by_clearing(self, slot: Path) -> int:
        """Bytes given back when ``slot`` is cleared (files linked elsewhere free nothing)."""
        freed = 0
        for dirpath, _dirs, files in os.walk(slot):
            for name in files:
                try:
                    info = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                if info.st_nlink == 1:
                    freed += info.st_blocks * 512
        return freed

    def download_bytes(self, manifest: ReleaseManifest) -> int:
        """Bytes the missing objects take in staging (rounded to whole blocks)."""
        return sum(_blocks(n) for n in self.missing_objects(manifest).values())

    def space_needed(self, manifest: ReleaseManifest) -> int:
        sources = self._sources(manifest)
        # Clearing the inactive slot gives space back before the install writes.
        return max(0, self._write_bytes(manifest, sources) - self._freed_by_clearing(self.inactive_slot()))

    def _free(self) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        return self._free_space(self.root)

    def _refuse_space(self, manifest: ReleaseManifest, need: int, free: int) -> DiskFull:
        return DiskFull(
            f"release {manifest.version} needs {_mb(need + self.margin_bytes)} free on the disk "
            f"holding {self.root} (including a {_mb(self.margin_bytes)} safety margin) but only "
            f"{_mb(free)} is free; nothing was written and the running release is untouched — free "
            "some space (old logs, evidence, other files on that disk) and the update resumes"
        )

    def check_space(self, manifest: ReleaseManifest) -> None:
        need = self.download_bytes(manifest) + self.space_needed(manifest)
        free = self._free()
        if need + self.margin_bytes > free:
            raise self._refuse_space(manifest, need, free)

    # -- install -----------------------------------------------------------------------------------

    def install(self, manifest: ReleaseManifest, manifest_bytes: bytes) -> Path:
        try:
            if parse_manifest(manifest_bytes) != manifest:
                raise InstallError("the manifest bytes do not match the manifest given")
        except PayloadError as exc:
            raise InstallError(f"the release manifest does not parse: {exc}") from None
        check_layout(manifest)
        slot = self.inactive_slot()
        sources = self._sources(manifest)
        missing = [sha for sha in manifest.objects() if sha not in sources]
        if missing:
            raise InstallError(
                f"{len(missing)} file(s) of release {manifest.version} are not downloaded yet "
                f"(e.g. object {missing[0]}); download them before installing"
            )
        need = max(0, self._write_bytes(manifest, sources) - self._freed_by_clearing(slot))
        free = self._free()
        if need + self.margin_bytes > free:
            raise self._refuse_space(manifest, need, free)
        try:
            self._clear(slot)
            slot.mkdir(mode=0o755)
            self._write_files(manifest, sources, slot)
            site = slot / SITE_DIR
            site.mkdir(mode=0o755)
            owners: dict[str, tuple[str, str]] = {}
            for item in sorted(manifest.files, key=lambda f: f.path):
                if is_wheel_path(item.path):
                    unpack(slot / item.path, site, name=item.path, owners=owners)
            _syncfs(slot)
            atomic_write_bytes(slot / MANIFEST_FILE, manifest_bytes)
            fsync_dir(self.slots_dir)
            self.verify(slot)
        except OSError as exc:
            self._discard_slot(slot)
            if exc.errno in _DISK_FULL:
                raise DiskFull(
                    f"the disk holding {self.root} filled up while release {manifest.version} was "
                    f"written into {slot}; the partial slot was cleared (it is never booted), the "
                    "downloaded files were kept and the running release is untouched — free some "
                    "space and the install is tried again"
                ) from exc
            raise InstallError(
                f"writing release {manifest.version} into {slot} failed: {exc}; the partial slot was "
                "cleared and the running release is untouched"
            ) from exc
        except OtaError:
            self._discard_slot(slot)
            raise
        return slot

    def _clear(self, slot: Path) -> None:
        """Make ``slot`` incomplete first (durably), then delete it."""
        if slot.is_symlink():
            raise InstallError(f"{slot} is a symlink, not a slot directory; refusing to write through it")
        if slot.exists():
            (slot / MANIFEST_FILE).unlink(missing_ok=True)
            fsync_dir(slot)
            shutil.rmtree(slot)
        self.slots_dir.mkdir(parents=True, exist_ok=True)
        fsync_dir(self.slots_dir)

    def _discard_slot(self, slot: Path) -> None:
        """Best effort after a failure: no manifest.json and no leftover files in ``slot``."""
        if slot.is_symlink():
            return
        with contextlib.suppress(OSError):
            (slot / MANIFEST_FILE).unlink(missing_ok=True)
        shutil.rmtree(slot, ignore_errors=True)
        try:
            slot.mkdir(mode=0o755, exist_ok=True)
            fsync_dir(self.slots_dir)
        except OSError:
            pass  # the next install clears and recreates it; without manifest.json it never boots

    def _write_files(self, manifest: ReleaseManifest, sources: dict[str, _Source], slot: Path) -> None:
        buffer = bytearray(READ_BLOCK)
        linked: dict[str, int] = {}
        known: set[Path] = set()
        for item in sorted(manifest.files, key=lambda f: f.path):
            dest = slot / item.path
            make_parents(slot, dest, known)
            source = sources[item.sha256]
            if self._can_link(source, item.mode, linked, item.sha256):
                os.link(source.path, dest)
                shared = item.sha256 in linked or os.lstat(dest).st_nlink > 2
                linked.setdefault(item.sha256, item.mode)
                digest, size = _hash_path(dest, buffer)
                if (digest, size) != (item.sha256, item.length):
                    dest.unlink()
                    self._bad_source(source, item.sha256, item.length)
                if not shared:
                    os.chmod(dest, item.mode)
                continue
            digest, size = _copy(source.path, dest, item.mode, buffer)
            if (digest, size) != (item.sha256, item.length):
                self._bad_source(source, item.sha256, item.length)

    def _bad_source(self, source: _Source, sha256: str, length: int) -> None:
        if source.staged:
            source.path.unlink(missing_ok=True)
            where = f"the downloaded object {source.path} was damaged on disk and was deleted"
        else:
            self._damaged.add(sha256)
            where = f"{source.path} of the running release is damaged"
        raise IntegrityError(
            f"{where} (expected {length} bytes with sha256 {sha256}); the file will be downloaded "
            "again on the next try"
        )

    # -- verify ------------------------------------------------------------------------------------

    def slot_manifest(self, slot: Path) -> ReleaseManifest | None:
        path = slot / MANIFEST_FILE
        try:
            if path.is_symlink():
                return None
            return parse_manifest(path.read_bytes())
        except (OSError, PayloadError):
            return None

    def verify(self, slot: Path) -> ReleaseManifest:
        path = slot / MANIFEST_FILE
        if path.is_symlink():
            raise InstallError(f"{path} is a symlink; the slot is not trusted — install the release again")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InstallError(
                f"slot {slot} has no {MANIFEST_FILE}: it is empty or its install was cut short; "
                "install the release again"
            ) from None
        except OSError as exc:
            raise InstallError(f"could not read {path}: {exc.strerror}") from None
        try:
            manifest = parse_manifest(data)
        except PayloadError as exc:
            raise InstallError(f"{path} is not a valid release manifest: {exc}") from None
        buffer = bytearray(READ_BLOCK)
        for item in manifest.files:
            file_path = slot / item.path
            if not _inside(slot, file_path):
                raise IntegrityError(f"{file_path} leads outside slot {slot} through a symlink")
            try:
                digest, size, mode = _hash_with_mode(file_path, buffer)
            except OSError as exc:
                raise IntegrityError(
                    f"{file_path} of release {manifest.version} is missing or not a plain file "
                    f"({exc.strerror}); the slot is damaged — install the release again"
                ) from None
            if size != item.length or digest != item.sha256:
                raise IntegrityError(
                    f"{file_path} does not match release {manifest.version} (expected {item.length} "
                    f"bytes with sha256 {item.sha256}, found {size} bytes with sha256 {digest}); "
                    "the slot is damaged — install the release again"
                )
            if mode != item.mode:
                raise IntegrityError(
                    f"{file_path} has mode {mode:o} but release {manifest.version} lists "
                    f"{item.mode:o}; the slot was changed — install the release again"
                )
        site = slot / SITE_DIR
        for item in manifest.files:
            if is_wheel_path(item.path):
                for _ in check_site(slot / item.path, site, name=item.path):
                    pass
        return manifest


def _is_file(path: Path, length: int) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size == length


def _inside(slot: Path, path: Path) -> bool:
    """True when ``path``'s directory, symlinks resolved, is ``slot`` or below it."""
    base = os.path.realpath(slot)
    parent = os.path.realpath(path.parent)
    return parent == base or parent.startswith(base + os.sep)


def _open_read(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return fd


def _hash_path(path: Path, buffer: bytearray) -> tuple[str, int]:
    fd = _open_read(path)
    try:
        return _hash_fd(fd, buffer)
    finally:
        os.close(fd)


def _hash_with_mode(path: Path, buffer: bytearray) -> tuple[str, int, int]:
    fd = _open_read(path)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        digest, size = _hash_fd(fd, buffer)
        return digest, size, mode
    finally:
        os.close(fd)


def _copy(source: Path, dest: Path, mode: int, buffer: bytearray) -> tuple[str, int]:
    """Copy ``source`` to a new file ``dest`` (mode ``mode``), hashing on the way."""
    digest = hashlib.sha256()
    view = memoryview(buffer)
    size = 0
    src = _open_read(source)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        out = os.open(dest, flags, mode)
        try:
            os.fchmod(out, mode)
            while True:
                count = os.readv(src, [buffer])
                if not count:
                    break
                chunk = view[:count]
                digest.update(chunk)
                while chunk:
                    chunk = chunk[os.write(out, chunk) :]
                size += count
        finally:
            os.close(out)
    finally:
        os.close(src)
    return digest.hexdigest(), size
