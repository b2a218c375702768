"""QR / chip-ID-card scanners on a serial line (USB-CDC or RS-232), real and simulated.

Real devices
------------
Put the reader in *USB-CDC* ("USB virtual COM", "USB serial") mode, not HID keyboard mode: a
keyboard wedge cannot carry Vietnamese text. It then appears as ``/dev/ttyACM0`` (CDC-ACM) or
``/dev/ttyUSB0`` (USB-serial bridge). Prefer the stable by-id path, which survives re-plugging
into another port, e.g. ``/dev/serial/by-id/usb-Newland_Auto-ID_NLS-FR40_XXXX-if00``. RS-232
readers usually run at 9600 baud 8N1 (some at 115200; CDC ignores the baud rate). Configure the
reader to end each code with CR, LF or CRLF (the usual "suffix" setting) and to send UTF-8. The
kiosk user needs read access to the port (group ``dialout`` on Debian / Raspberry Pi OS).

Any pyserial URL works too (``loop://``, ``rfc2217://host:port``, ``socket://host:port``).

Threading: :class:`SerialQrScanner` reads on one daemon thread; the callbacks run on that thread
and must return quickly (hand the payload to your event loop, e.g. ``loop.call_soon_threadsafe``).
A callback that raises is logged (type only, never the payload) and the reader carries on.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Protocol

from hw.serialframe import DEFAULT_MAX_FRAME_BYTES, FrameEvent, FramePipeline, Garbage, Payload

log = logging.getLogger(__name__)


class ScannerStatus(str, Enum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    ERROR = "error"


_VI = {
    ScannerStatus.CONNECTED: "Máy quét sẵn sàng",
    ScannerStatus.DISCONNECTED: "Máy quét chưa được kết nối",
    ScannerStatus.ERROR: "Máy quét bị lỗi, vui lòng báo kỹ thuật viên",
}


@dataclass(frozen=True)
class ScannerState:
    """Connection state; ``message`` is for technicians (English), ``message_vi`` for residents."""

    status: ScannerStatus
    message: str = ""
    message_vi: str = ""

    @classmethod
    def of(cls, status: ScannerStatus, message: str = "") -> ScannerState:
        return cls(status=status, message=message, message_vi=_VI[status])

    @property
    def connected(self) -> bool:
        return self.status is ScannerStatus.CONNECTED

    def to_dict(self) -> dict[str, str]:
        return {"status": self.status.value, "message": self.message}


@dataclass
class ScannerStats:
    """Counters for telemetry / ``shadow.reported.peripherals`` (no content, only counts)."""

    payloads: int = 0
    duplicates: int = 0
    garbage: int = 0
    reconnects: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


PayloadCallback = Callable[[str], None]
StateCallback = Callable[[ScannerState], None]
GarbageCallback = Callable[[Garbage], None]


class QrScanner(Protocol):
    """A code reader. ``start`` returns at once; callbacks may run on another thread."""

    @property
    def state(self) -> ScannerState: ...

    @property
    def stats(self) -> ScannerStats: ...

    def start(
        self,
        on_payload: PayloadCallback,
        on_state: StateCallback,
        on_garbage: GarbageCallback | None = None,
    ) -> None: ...

    def stop(self) -> None: ...


@dataclass
class _Dispatch:
    """Shared callback plumbing: state changes reported once, callback errors contained."""

    state: ScannerState = field(default_factory=lambda: ScannerState.of(ScannerStatus.DISCONNECTED))
    stats: ScannerStats = field(default_factory=ScannerStats)
    on_payload: PayloadCallback | None = None
    on_state: StateCallback | None = None
    on_garbage: GarbageCallback | None = None
    last_reported: ScannerState | None = None  # the first state is always reported

    def set_state(self, new: ScannerState) -> None:
        """Report status changes (and a changed error message); keep the latest message always."""
        last, self.state, self.last_reported = self.last_reported, new, new
        if (
            last is not None
            and new.status is last.status
            and (new.status is not ScannerStatus.ERROR or new == last)
        ):
            return
        if new.status is not ScannerStatus.CONNECTED:
            log.warning("scanner %s: %s", new.status.value, new.message)
        self._call(self.on_state, new, "state")

    def events(self, events: list[FrameEvent], duplicates: int) -> None:
        self.stats.duplicates = duplicates
        for event in events:
            if isinstance(event, Payload):
                self.stats.payloads += 1
                self._call(self.on_payload, event.text, "payload")
            else:
                self.stats.garbage += 1
                log.warning("scanner: %s", event.reason)
                self._call(self.on_garbage, event, "garbage")

    @staticmethod
    def _call(callback: Callable[[Any], None] | None, arg: object, what: str) -> None:
        if callback is None:
            return
        try:
            callback(arg)
        except Exception as exc:  # callback boundary: one bad handler must not stop the reader
            log.error("scanner %s callback raised %s", what, type(exc).__name__)


class _SerialPort(Protocol):
    """What the reader needs from a pyserial port object."""

    @property
    def in_waiting(self) -> int: ...

    def read(self, size: int = 1) -> bytes: ...

    def close(self) -> None: ...


def _open_serial(url: str, baudrate: int, timeout: float) -> _SerialPort:
    import serial  # pyserial; imported here so that importing hw.scanner stays cheap

    port: _SerialPort = serial.serial_for_url(url, baudrate=baudrate, timeout=timeout)
    return port


def _classify_open_error(port: str, exc: BaseException) -> ScannerState:
    code = getattr(exc, "errno", None)
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO, errno.EIO):
        return ScannerState.of(ScannerStatus.DISCONNECTED, f"{port} is not there (scanner unplugged?)")
    if code in (errno.EACCES, errno.EPERM):
        return ScannerState.of(
            ScannerStatus.ERROR, f"permission denied on {port}: add the kiosk user to the 'dialout' group"
        )
    if code == errno.EBUSY:
        return ScannerState.of(
            ScannerStatus.ERROR, f"{port} is busy: another program (e.g. ModemManager) holds it"
        )
    return ScannerState.of(ScannerStatus.ERROR, f"cannot open {port}: {exc}")


class SerialQrScanner:
    """A reader on a serial port or pyserial URL, with framing, de-duplication and reconnects.

    ``port_url_or_path``: ``/dev/ttyACM0``, ``/dev/serial/by-id/...``, a pty path or any pyserial
    URL. ``inter_char_timeout``: seconds of silence that end a frame without a terminator.
    ``dedup_window_s``: the same payload again within this window is dropped. After an unplug the
    port is re-opened with exponential backoff from ``reconnect_min_s`` to ``reconnect_max_s``.
    """

    def __init__(
        self,
        port_url_or_path: str,
        *,
        baudrate: int = 9600,
        inter_char_timeout: float = 0.1,
        dedup_window_s: float = 2.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        reconnect_min_s: float = 0.2,
        reconnect_max_s: float = 5.0,
        opener: Callable[[str, int, float], _SerialPort] = _open_serial,
    ) -> None:
        if inter_char_timeout <= 0:
            raise ValueError("inter_char_timeout must be > 0 seconds")
        self.port = port_url_or_path
        self.baudrate = baudrate
        self.inter_char_timeout = inter_char_timeout
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self._pipeline = FramePipeline(max_frame_bytes=max_frame_bytes, dedup_window_s=dedup_window_s)
        self._opener = opener
        self._dispatch = _Dispatch()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ever_connected = False

    @property
    def state(self) -> ScannerState:
        return self._dispatch.state

    @property
    def stats(self) -> ScannerStats:
        return self._dispatch.stats

    def start(
        self,
        on_payload: PayloadCallback,
        on_state: StateCallback,
        on_garbage: GarbageCallback | None = None,
    ) -> None:
        if self._thread is not None:
            raise RuntimeError("scanner already started")
        self._dispatch.on_payload = on_payload
        self._dispatch.on_state = on_state
        self._dispatch.on_garbage = on_garbage
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="qr-scanner", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        delay = self.reconnect_min_s
        while not self._stop.is_set():
            try:
                port = self._opener(self.port, self.baudrate, self.inter_char_timeout)
            except (OSError, ValueError) as exc:  # SerialException is an OSError
                self._dispatch.set_state(_classify_open_error(self.port, exc))
                if self._stop.wait(delay):
                    break
                delay = min(delay * 2, self.reconnect_max_s)
                continue
            delay = self.reconnect_min_s
            if self._ever_connected:
                self._dispatch.stats.reconnects += 1
            self._ever_connected = True
            self._dispatch.set_state(ScannerState.of(ScannerStatus.CONNECTED, f"reading {self.port}"))
            try:
                self._read_loop(port)
            except OSError as exc:
                self._dispatch.set_state(
                    ScannerState.of(ScannerStatus.DISCONNECTED, f"{self.port} went away: {exc}")
                )
            finally:
                self._close(port)
        self._dispatch.set_state(ScannerState.of(ScannerStatus.DISCONNECTED, "scanner stopped"))

    def _read_loop(self, port: _SerialPort) -> None:
        pipeline = self._pipeline
        while not self._stop.is_set():
            data = port.read(max(1, port.in_waiting))
            if data:
                events = pipeline.feed(data)
            elif pipeline.framer.pending:
                events = pipeline.flush()  # the line went quiet: the frame is complete
            else:
                continue  # read() blocked for inter_char_timeout: idle, not a busy loop
            self._dispatch.events(events, pipeline.duplicates)

    def _close(self, port: _SerialPort) -> None:
        # A frame cut by an unplug is incomplete: drop it rather than deliver half a payload.
        self._pipeline.framer.reset()
        with contextlib.suppress(OSError):
            port.close()


class SimulatedQrScanner:
    """A scanner driven by code (tests, demo, the kiosk's "simulate scan" button).

    Payloads go through the same cleaning and de-duplication as the serial reader; callbacks run
    synchronously on the calling thread.
    """

    def __init__(
        self,
        *,
        dedup_window_s: float = 2.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        connected: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pipeline = FramePipeline(
            max_frame_bytes=max_frame_bytes, dedup_window_s=dedup_window_s, clock=clock
        )
        self._dispatch = _Dispatch()
        self._plugged = connected
        self._running = False
        self._lock = threading.RLock()

    @property
    def state(self) -> ScannerState:
        return self._dispatch.state

    @property
    def stats(self) -> ScannerStats:
        return self._dispatch.stats

    def start(
        self,
        on_payload: PayloadCallback,
        on_state: StateCallback,
        on_garbage: GarbageCallback | None = None,
    ) -> None:
        with self._lock:
            self._dispatch.on_payload = on_payload
            self._dispatch.on_state = on_state
            self._dispatch.on_garbage = on_garbage
            self._running = True
            if self._plugged:
                self._dispatch.set_state(ScannerState.of(ScannerStatus.CONNECTED, "simulated scanner"))

    def stop(self) -> None:
        with self._lock:
            self._running = False
            self._dispatch.set_state(ScannerState.of(ScannerStatus.DISCONNECTED, "scanner stopped"))

    def feed(self, payload: str) -> None:
        """A code was scanned (ignored while unplugged or stopped, like a real reader)."""
        with self._lock:
            if self._live():
                self._dispatch.events(self._pipeline.feed_text(payload), self._pipeline.duplicates)

    def feed_bytes(self, data: bytes, *, end_of_burst: bool = True) -> None:
        """Raw bytes as the reader would send them; ``end_of_burst`` = the line then goes quiet."""
        with self._lock:
            if not self._live():
                return
            events = self._pipeline.feed(data)
            if end_of_burst:
                events += self._pipeline.flush()
            self._dispatch.events(events, self._pipeline.duplicates)

    def unplug(self, message: str = "simulated unplug") -> None:
        with self._lock:
            self._plugged = False
            if self._running:
                self._dispatch.set_state(ScannerState.of(ScannerStatus.DISCONNECTED, message))

    def plug(self) -> None:
        with self._lock:
            self._plugged = True
            if self._running:
                self._dispatch.stats.reconnects += 1
                self._dispatch.set_state(ScannerState.of(ScannerStatus.CONNECTED, "simulated scanner"))

    def fail(self, message: str) -> None:
        """Put the scanner in the error state (e.g. to show the technician screen)."""
        with self._lock:
            self._plugged = False
            if self._running:
                self._dispatch.set_state(ScannerState.of(ScannerStatus.ERROR, message))

    def _live(self) -> bool:
        return self._running and self._plugged
