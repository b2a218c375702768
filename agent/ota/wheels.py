"""Unpack wheels into a slot's ``site/`` directory, and check ``site/`` against the wheels' RECORD.

A wheel is a zip archive (PEP 427). Its members go to ``site/`` as an installer would lay out a
purelib/platlib ``site-packages``: ``NAME.data/purelib/X`` and ``NAME.data/platlib/X`` become
``site/X``; other ``.data`` schemes (``scripts``, ``headers``, ``data``) are skipped (the launcher
runs ``{python} -m ...`` with ``site/`` on the path; no console scripts are needed). A member that
would land outside ``site/``, a symlink member, or a member missing from the wheel's RECORD is
refused. The RECORD's sha256 of every unpacked file is what ``verify`` checks later, so ``site/``
is covered by the signed manifest through the wheel's own hash.

Standard library only (``zipfile``), no pip at install time.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from agent.ota.errors import InstallError, IntegrityError
from protocol.release import check_relative_path

SITE_DIR = "site"
WHEELS_DIR = "wheels"
_SKIPPED_SCHEMES = ("scripts", "headers", "data")
_LIBRARY_SCHEMES = ("purelib", "platlib")
_UNSIGNED_RECORD = ("RECORD", "RECORD.jws", "RECORD.p7s")
BLOCK = 1024 * 1024


@dataclass(frozen=True)
class Member:
    """One file of a wheel as it lands in ``site/``."""

    archive_name: str
    target: str
    size: int
    mode: int
    algorithm: str
    digest: str
    """RECORD hash, urlsafe base64 without padding (empty for RECORD itself)."""


def is_wheel_path(path: str) -> bool:
    """Files the installer unpacks: ``wheels/<name>.whl`` directly under ``wheels/``."""
    parts = PurePosixPath(path).parts
    return len(parts) == 2 and parts[0] == WHEELS_DIR and parts[1].endswith(".whl")


def target_of(archive_name: str) -> str | None:
    """Where a wheel member goes below ``site/`` (None: skipped); ValueError if it escapes."""
    parts = archive_name.split("/")
    if len(parts) >= 2 and parts[0].endswith(".data"):
        if parts[1] in _LIBRARY_SCHEMES:
            rest = "/".join(parts[2:])
            return check_relative_path(rest) if rest else None
        if parts[1] in _SKIPPED_SCHEMES:
            return None
        raise ValueError(f"{archive_name!r} is in an unknown wheel data scheme {parts[1]!r}")
    return check_relative_path(archive_name)


def _read_record(archive: zipfile.ZipFile, wheel: str) -> dict[str, tuple[str, str]]:
    names = [n for n in archive.namelist() if n.endswith(".dist-info/RECORD") and n.count("/") == 1]
    if len(names) != 1:
        raise InstallError(f"wheel {wheel} has no single .dist-info/RECORD: it is not a valid wheel")
    text = archive.read(names[0]).decode("utf-8")
    record: dict[str, tuple[str, str]] = {}
    for row in csv.reader(io.StringIO(text)):
        if not row or not row[0]:
            continue
        name, hashed = row[0], row[1] if len(row) > 1 else ""
        if hashed:
            algorithm, _, digest = hashed.partition("=")
            record[name] = (algorithm, digest)
        else:
            record[name] = ("", "")
    return record


def members(archive: zipfile.ZipFile, wheel: str) -> list[Member]:
    """The members of ``archive`` that land in ``site/``, checked; InstallError names the bad one."""
    record = _read_record(archive, wheel)
    result: list[Member] = []
    for info in archive.infolist():
        if info.is_dir():
            continue
        unix = info.external_attr >> 16
        if stat.S_ISLNK(unix):
            raise InstallError(f"wheel {wheel} holds a symlink {info.filename!r}; refused")
        try:
            target = target_of(info.filename)
        except ValueError as exc:
            raise InstallError(
                f"wheel {wheel} has a member that would be written outside site/: {exc}; refused"
            ) from None
        if target is None:
            continue
        algorithm, digest = record.get(info.filename, ("", ""))
        base = info.filename.rsplit("/", 1)[-1]
        unsigned = info.filename.endswith(".dist-info/" + base) and base in _UNSIGNED_RECORD
        if not digest and not unsigned:
            raise InstallError(f"wheel {wheel}: member {info.filename!r} has no hash in RECORD; refused")
        if algorithm and algorithm not in hashlib.algorithms_available:
            raise InstallError(f"wheel {wheel}: RECORD uses an unknown hash {algorithm!r}")
        mode = 0o755 if unix & 0o111 else 0o644
        result.append(Member(info.filename, target, info.file_size, mode, algorithm, digest))
    return result


def unpacked_size(wheel: Path, block: int = 4096) -> tuple[int, int]:
    """(bytes on disk rounded to ``block``, number of files) the wheel takes once unpacked."""
    with zipfile.ZipFile(wheel) as archive:
        sizes = [info.file_size for info in archive.infolist() if not info.is_dir()]
    return sum(-(-size // block) * block for size in sizes), len(sizes)


def _open_new(path: Path, mode: int) -> int:
    # O_NOFOLLOW: a symlink planted at the target is never followed out of the slot.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, mode)
    os.fchmod(fd, mode)
    return fd


def unpack(
    wheel: Path, site: Path, *, name: str, owners: dict[str, tuple[str, str]] | None = None
) -> list[Path]:
    """Unpack ``wheel`` into ``site`` (which must exist); returns the files written. ``name`` is
    the wheel's path in the manifest, used in messages. ``owners`` (shared by the wheels of one
    install: target -> (wheel, RECORD digest)) refuses two wheels that put different content at
    the same place; identical content (e.g. a shared namespace ``__init__.py``) is written once.
    OSError (ENOSPC, ...) is left to the caller."""
    written: list[Path] = []
    owners = {} if owners is None else owners
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as exc:
        raise IntegrityError(f"wheel {name} is not a readable zip archive: {exc}") from None
    known: set[Path] = set()
    with archive:
        for member in members(archive, name):
            if member.target in owners:
                other, digest = owners[member.target]
                if digest and digest == member.digest:
                    continue
                raise InstallError(
                    f"wheels {other} and {name} both install site/{member.target} with different "
                    "content; rebuild the release without the conflicting wheel"
                )
            owners[member.target] = (name, member.digest)
            dest = site / member.target
            make_parents(site, dest, known)
            fd = _open_new(dest, member.mode)
            try:
                with archive.open(member.archive_name) as source:
                    while True:
                        block = source.read(BLOCK)
                        if not block:
                            break
                        view = memoryview(block)
                        while view:
                            view = view[os.write(fd, view) :]
            except zipfile.BadZipFile as exc:
                raise IntegrityError(
                    f"wheel {name}: member {member.archive_name!r} is damaged: {exc}"
                ) from None
            finally:
                os.close(fd)
            written.append(dest)
    return written


def make_parents(base: Path, dest: Path, known: set[Path] | None = None) -> None:
    """Create the directories between ``base`` and ``dest``, refusing any symlink on the way.
    ``known``: directories already checked or made by this caller (skipped; new ones added)."""
    if known is not None and dest.parent in known:
        return
    current = base
    for part in dest.relative_to(base).parts[:-1]:
        current = current / part
        if known is not None:
            if current in known:
                continue
            known.add(current)
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            os.mkdir(current, 0o755)
            continue
        if not stat.S_ISDIR(info.st_mode):
            raise InstallError(f"{current} is in the way of a directory (not a directory); refused")


def record_digest(data_digest: bytes) -> str:
    """A digest as RECORD writes it: urlsafe base64 without padding."""
    return base64.urlsafe_b64encode(data_digest).rstrip(b"=").decode("ascii")


def check_site(wheel: Path, site: Path, *, name: str) -> Iterator[int]:
    """Re-hash every file ``wheel`` put into ``site`` against its RECORD; yields bytes hashed per
    file; IntegrityError names the first file that differs or is missing."""
    with zipfile.ZipFile(wheel) as archive:
        expected = members(archive, name)
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    for member in expected:
        if not member.algorithm:
            continue
        path = site / member.target
        digest = hashlib.new(member.algorithm)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise IntegrityError(
                f"{path} (from wheel {name}) is missing or not a plain file: {exc.strerror}"
            ) from None
        size = 0
        try:
            while True:
                count = os.readv(fd, [buffer])
                if not count:
                    break
                digest.update(view[:count])
                size += count
        finally:
            os.close(fd)
        if record_digest(digest.digest()) != member.digest:
            raise IntegrityError(
                f"{path} does not match wheel {name} (its {member.algorithm} differs from the wheel's "
                "RECORD): the slot is damaged; install the release again"
            )
        yield size
