"""One helper for atomic file writes: temp file in the same directory, fsync, rename, fsync dir.

A crash or power cut at any instant leaves either the old file or the new one, never a mix.
Standard library only, so the OTA launcher's logic (which must not depend on a release) can use
the same rules.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` (created with ``mode``); raises OSError on failure and
    leaves no temporary file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, data: Any, mode: int = 0o644, *, indent: int | None = None) -> None:
    """``atomic_write_bytes`` of ``data`` as UTF-8 JSON with sorted keys."""
    separators = (",", ":") if indent is None else (",", ": ")
    text = json.dumps(data, sort_keys=True, indent=indent, separators=separators)
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def atomic_symlink(target: str, link: Path) -> None:
    """Point ``link`` at ``target`` atomically (a new symlink renamed over the old one)."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.new")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)
