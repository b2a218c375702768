"""Does each configured peripheral answer? One probe per kind, through the hw/ drivers.

Which peripherals a device has comes from ``DATA_DIR/peripherals.json`` (``{"camera": "SPEC",
"scanner": "PORT", "printer": "PORT", "ioboard": "PORT"}``) or the selftest options; a kind
with nothing configured is reported "not configured", not as a failure.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = ("camera", "scanner", "printer", "ioboard")


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str
    fix: str = ""


Probe = Callable[[str, float], ProbeResult]


def load_peripherals(path: Path, overrides: dict[str, str | None]) -> dict[str, str]:
    configured: dict[str, str] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        if isinstance(data, dict):
            configured = {k: str(v) for k, v in data.items() if k in KINDS and v}
    configured.update({k: v for k, v in overrides.items() if v})
    return configured


def probe_camera(spec_text: str, timeout: float) -> ProbeResult:
    from hw.camera import CameraError, FrameSource, parse_source_spec

    fix = "check the camera cable / power / network address and the camera source setting"
    try:
        spec = parse_source_spec(spec_text)
        source: FrameSource
        if spec.kind == "file":
            from hw.camera_cv import VideoFileSource

            source = VideoFileSource(spec.target)
        elif spec.kind in ("rtsp", "v4l2", "gstreamer"):
            from hw.camera_cv import OpenCVStreamSource

            source = OpenCVStreamSource(spec)
        elif spec.kind == "picamera2":
            from hw.camera_pi import Picamera2Source

            source = Picamera2Source()
        else:
            return ProbeResult(False, f"camera source kind {spec.kind!r} cannot be checked here", fix)
    except (CameraError, ImportError, ValueError) as exc:
        return ProbeResult(False, f"camera {spec_text}: {exc}", fix)
    return _first_frame(source, timeout, fix)


def _first_frame(source: object, timeout: float, fix: str) -> ProbeResult:
    from hw.camera import CameraError, FrameSource

    assert isinstance(source, FrameSource)
    outcome: list[ProbeResult] = []

    def grab() -> None:
        try:
            source.open()
            frame = source.read()
            if frame is None:
                outcome.append(ProbeResult(False, f"camera {source.name}: no frame", fix))
            else:
                width, height = frame.size
                outcome.append(ProbeResult(True, f"camera {source.name}: frame {width}x{height}"))
        except (CameraError, OSError) as exc:
            outcome.append(ProbeResult(False, f"camera {source.name}: {exc}", fix))
        finally:
            source.close()

    worker = threading.Thread(target=grab, name="selftest-camera", daemon=True)
    worker.start()
    worker.join(timeout)
    return outcome[0] if outcome else ProbeResult(False, f"camera gave no frame within {timeout:g} s", fix)


def probe_scanner(port: str, timeout: float) -> ProbeResult:
    from hw.scanner import ScannerState, SerialQrScanner

    connected = threading.Event()
    last: list[ScannerState] = []

    def on_state(state: ScannerState) -> None:
        last.append(state)
        if state.connected:
            connected.set()

    scanner = SerialQrScanner(port)
    scanner.start(lambda _payload: None, on_state)
    try:
        ok = connected.wait(timeout)
    finally:
        scanner.stop()
    if ok:
        return ProbeResult(True, f"scanner on {port}: connected")
    why = last[-1].message if last else "no answer"
    return ProbeResult(False, f"scanner on {port}: {why}", "check the scanner's USB cable and the port name")


def probe_printer(port: str, timeout: float) -> ProbeResult:
    from hw.printer import EscPosPrinter

    status = EscPosPrinter(port, status_timeout_s=min(timeout, 2.0)).status()
    detail = f"printer on {port}: {status.message or ('online' if status.online else 'offline')}"
    if status.online and not status.error:
        return ProbeResult(True, detail)
    return ProbeResult(False, detail, "check the printer power, cable, paper and cover")


def probe_ioboard(port: str, timeout: float) -> ProbeResult:
    """Talk to the board (docs/iobus.md): firmware version, a heartbeat, a sensor reading, tamper.

    Only when no agent holds the port: a running agent's view is used instead (selftest)."""
    from hw.iobus import IoBoardError, SerialIoBoard

    fix = "check the I/O board's cable and power; flash it: cityedge firmware flash --port PORT"
    board = SerialIoBoard(port, retry_s=min(0.25, timeout / 4))
    board.start(lambda _event: None)
    try:
        if not board.wait_connected(timeout):
            return ProbeResult(False, str(board.stats()["last_error"] or f"{port} does not open"), fix)
        hello = board.request("hello")
        board.heartbeat()
        status = board.request("status")
    except IoBoardError as exc:
        return ProbeResult(False, str(exc), fix)
    finally:
        board.stop()
    return ioboard_result({"firmware": hello.get("fw"), "board": hello.get("board"), "status": status})


def ioboard_result(state: dict[str, Any]) -> ProbeResult:
    """Judge an I/O board from its firmware and ``status`` (a probe's or the running agent's)."""
    status = state.get("status") or {}
    name = f"I/O board {state.get('firmware') or '?'} ({state.get('board') or '?'})"
    if not status:
        return ProbeResult(False, f"{name}: no sensor reading yet", "wait a few seconds and run it again")
    temp = status.get("temp_c")
    reading = f"{temp:.1f} °C" if isinstance(temp, (int, float)) else "no temperature"
    detail = f"{name}: {reading}, tamper {status.get('tamper', '?')}"
    if isinstance(status.get("battery_v"), (int, float)):
        detail += f", supply {status['battery_v']:.1f} V"
    if status.get("sensor_ok") is False or temp is None:
        return ProbeResult(False, detail, "check the temperature sensor's cable (I2C)")
    if status.get("tamper") == "open" or status.get("tamper_latched"):
        return ProbeResult(False, detail, "close the cabinet door, then: cityedge provision ack-tamper")
    if status.get("on_battery"):
        return ProbeResult(False, detail + " (on battery)", "check the mains supply to the cabinet")
    return ProbeResult(True, detail)


PROBES: dict[str, Probe] = {
    "camera": probe_camera,
    "scanner": probe_scanner,
    "printer": probe_printer,
    "ioboard": probe_ioboard,
}


def run_probe(kind: str, target: str, timeout: float, probes: dict[str, Probe] | None = None) -> ProbeResult:
    probe = (probes or PROBES)[kind]
    try:
        return probe(target, timeout)
    except Exception as exc:  # a driver failing in an unexpected way is a failed check, not a crash
        return ProbeResult(False, f"{kind} on {target}: unexpected error {type(exc).__name__}: {exc}")
