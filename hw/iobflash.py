"""Flashing the cabinet I/O board's firmware: the real board over its USB REPL (mpremote), the
simulated board in memory. Both take a firmware build (``cityedge firmware build``: compiled files
and ``manifest.json`` with the version and each file's sha256) and raise :class:`FlashError` in
words a technician understands."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from hw.iobus import SimulatedIoBoard

Say = Callable[[str], None]


class FlashError(RuntimeError):
    """The firmware could not be flashed; the board keeps (or boots back into) its old one."""


MANIFEST = "manifest.json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def read_build(build: Path) -> dict[str, Any]:
    """The manifest of a firmware build (``version``, ``files``: path → sha256), checked."""
    path = build / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FlashError(
            f"{build} is not a firmware build (no {MANIFEST}): "
            "make one with `cityedge firmware build --out DIR`"
        ) from None
    except (OSError, ValueError) as exc:
        raise FlashError(f"the firmware manifest {path} cannot be read: {exc}") from exc
    if not isinstance(manifest, dict):
        raise FlashError(f"the firmware manifest {path} is not a JSON object")
    version, files = manifest.get("version"), manifest.get("files")
    if not isinstance(version, str) or not version or not isinstance(files, dict) or not files:
        raise FlashError(f"the firmware manifest {path} has no version or no files")
    for rel, digest in files.items():
        if not isinstance(digest, str) or not _SHA256.match(digest) or ".." in Path(rel).parts:
            raise FlashError(f"the firmware manifest {path} lists {rel!r} wrongly")
    return manifest


class BoardFlasher(Protocol):
    def flash(self, build: Path, say: Say) -> None:
        """Copy ``build`` to the board, check every file there, restart it into the new firmware."""
        ...


class MpremoteFlasher:
    """The real board, through ``provisioning.firmware.flash_firmware`` (mpremote over USB): files
    to ``next/``, every sha256 read back, the manifest last, then a reset; ``boot.py`` on the board
    installs ``next/`` only when it is complete."""

    def __init__(self, usb_port: str) -> None:
        self.usb_port = usb_port

    def flash(self, build: Path, say: Say) -> None:
        from provisioning.firmware import FirmwareError, flash_firmware

        try:
            flash_firmware(build, self.usb_port, progress=say)
        except FirmwareError as exc:
            raise FlashError(exc.message) from exc


class SimulatedFlasher:
    """The in-memory board: it restarts running the build's version."""

    def __init__(self, board: SimulatedIoBoard) -> None:
        self.board = board

    def flash(self, build: Path, say: Say) -> None:
        version = read_build(build)["version"]
        say(f"install firmware {version} on the simulated board")
        self.board.install(version)
