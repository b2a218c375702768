"""Receipt printers: ESC/POS thermal printers (real) and a simulated one, behind one Protocol.

Real devices
------------
``EscPosPrinter("/dev/ttyUSB0", baudrate=19200)`` for RS-232/USB-serial printers (Epson TM-T20/T82,
Xprinter, ...; 19200 or 38400 baud 8N1 are usual), ``/dev/ttyACM0`` for USB-CDC ones, or any
pyserial URL (``socket://10.0.0.5:9100`` for network printers). Serial and socket ports are
bidirectional, so the printer answers ``DLE EOT`` status queries: paper out, cover open and
offline are reported before printing. A one-way transport (``open("/dev/usb/lp0", "wb")``) can be
passed as a file object with ``bidirectional=False``: printing works, status is then unknown.

Receipts are drawn by the caller's object (``receipt.render(width_px)`` → 1-bit Pillow image,
see ``kiosk_ui.receipt``) and sent as one raster image followed by a partial cut.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol, cast

from hw import escpos

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

WIDTH_80MM_PX = 576
WIDTH_58MM_PX = 384


class PaperState(str, Enum):
    OK = "ok"
    NEAR_END = "near_end"
    OUT = "out"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class PrinterStatus:
    online: bool
    paper: PaperState
    cover_open: bool = False
    error: bool = False
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "online": self.online,
            "paper": self.paper.value,
            "cover_open": self.cover_open,
            "error": self.error,
            "message": self.message,
        }


class PrinterError(Exception):
    """Printing failed; ``message_vi`` is for the resident, ``message_en`` (``str()``) for technicians."""

    message_vi = "Máy in đang gặp sự cố. Vui lòng báo nhân viên hỗ trợ."

    def __init__(self, message_en: str, message_vi: str | None = None) -> None:
        super().__init__(message_en)
        self.message_en = message_en
        self.message_vi = message_vi or type(self).message_vi


class PaperOut(PrinterError):
    message_vi = "Máy in đã hết giấy. Vui lòng báo nhân viên thay giấy."


class PrinterOffline(PrinterError):
    message_vi = "Máy in chưa sẵn sàng (mất kết nối hoặc tắt nguồn). Vui lòng báo nhân viên."


class CoverOpen(PrinterOffline):
    message_vi = "Nắp máy in đang mở. Vui lòng báo nhân viên đóng nắp."


class PrinterFault(PrinterError):
    message_vi = "Máy in bị lỗi (dao cắt hoặc đầu in). Vui lòng báo nhân viên."


class Printable(Protocol):
    """Anything that draws itself as a 1-bit image ``width_px`` dots wide (kiosk_ui.receipt.Receipt)."""

    def render(self, width_px: int) -> Image.Image: ...


class ReceiptPrinter(Protocol):
    def print_receipt(self, receipt: Printable) -> None: ...

    def status(self) -> PrinterStatus: ...


class Transport(Protocol):
    """The byte pipe to a printer (a pyserial port, a file, a simulated device)."""

    def write(self, data: bytes, /) -> int | None: ...

    def read(self, size: int = 1, /) -> bytes: ...

    def flush(self) -> None: ...


def _open_serial(url: str, baudrate: int, timeout: float) -> Transport:
    import serial

    return cast(Transport, serial.serial_for_url(url, baudrate=baudrate, timeout=timeout, write_timeout=10))


def status_from_bytes(printer: int, offline: int, errors: int, paper: int) -> PrinterStatus:
    """Interpret the answers to DLE EOT 1, 2, 3, 4."""
    if not all(escpos.is_status_byte(b) for b in (printer, offline, errors, paper)):
        return PrinterStatus(False, PaperState.UNKNOWN, error=True, message="garbled status answer")
    out = bool(paper & 0x60) or bool(offline & 0x20)
    near = bool(paper & 0x0C)
    state = PaperState.OUT if out else PaperState.NEAR_END if near else PaperState.OK
    cover = bool(offline & 0x04)
    fault = bool(offline & 0x40) or bool(errors & 0x68)
    is_offline = bool(printer & 0x08)
    problems = [
        text
        for flag, text in (
            (is_offline, "offline"),
            (out, "paper out"),
            (near and not out, "paper near end"),
            (cover, "cover open"),
            (bool(errors & 0x08), "cutter error"),
            (bool(errors & 0x60), "printer error"),
        )
        if flag
    ]
    return PrinterStatus(not is_offline, state, cover, fault, ", ".join(problems) or "ready")


class EscPosPrinter:
    """An ESC/POS printer on a serial port / pyserial URL (opened on demand) or a given transport."""

    def __init__(
        self,
        port_url_or_transport: str | Transport,
        *,
        baudrate: int = 19200,
        width_px: int = WIDTH_80MM_PX,
        status_timeout_s: float = 0.5,
        bidirectional: bool = True,
    ) -> None:
        self._url = port_url_or_transport if isinstance(port_url_or_transport, str) else None
        self._transport: Transport | None = None if self._url else cast(Transport, port_url_or_transport)
        self.baudrate = baudrate
        self.width_px = width_px
        self.status_timeout_s = status_timeout_s
        self.bidirectional = bidirectional

    def status(self) -> PrinterStatus:
        if not self.bidirectional:
            return PrinterStatus(True, PaperState.UNKNOWN, message="one-way port: status not readable")
        try:
            return self._query_status()
        except PrinterOffline as exc:
            return PrinterStatus(False, PaperState.UNKNOWN, message=str(exc))

    def print_receipt(self, receipt: Printable) -> None:
        """Render and print; raises PaperOut, CoverOpen, PrinterOffline or PrinterFault."""
        self.check_ready()
        self.send_image(receipt.render(self.width_px))

    def print_image(self, image: Image.Image) -> None:
        self.check_ready()
        self.send_image(image)

    def send_image(self, image: Image.Image) -> None:
        """Send one job without the readiness check (call :meth:`check_ready` first)."""
        self._send(escpos.receipt_job(image))
        if self.bidirectional:
            after = self._query_status()
            if after.paper is PaperState.OUT:
                raise PaperOut("paper ran out while printing; the receipt may be incomplete")

    def close(self) -> None:
        if self._url and self._transport is not None:
            self._drop()

    def check_ready(self) -> None:
        """Raise the PrinterError that stops printing now, if any (no-op on a one-way port)."""
        if not self.bidirectional:
            return
        status = self._query_status()
        if status.paper is PaperState.OUT:
            raise PaperOut(f"printer is out of paper ({status.message})")
        if status.cover_open:
            raise CoverOpen(f"printer cover is open ({status.message})")
        if status.error:
            raise PrinterFault(f"printer reports an error ({status.message})")
        if not status.online:
            raise PrinterOffline(f"printer is offline ({status.message})")

    def _port(self) -> Transport:
        if self._transport is None:
            assert self._url is not None
            try:
                self._transport = _open_serial(self._url, self.baudrate, self.status_timeout_s)
            except (OSError, ValueError) as exc:  # SerialException is an OSError
                raise PrinterOffline(f"cannot open printer port {self._url}: {exc}") from exc
        return self._transport

    def _drop(self) -> None:
        transport, self._transport = self._transport, None
        close = getattr(transport, "close", None)
        if self._url and callable(close):
            with contextlib.suppress(OSError):
                close()

    def _send(self, data: bytes) -> None:
        port = self._port()
        try:
            port.write(data)
            port.flush()
        except OSError as exc:
            self._drop()
            raise PrinterOffline(f"writing to the printer failed: {exc}") from exc

    def _ask(self, n: int) -> int:
        port = self._port()
        try:
            port.write(escpos.status_query(n))
            port.flush()
            answer = port.read(1)
        except OSError as exc:
            self._drop()
            raise PrinterOffline(f"status query failed: {exc}") from exc
        if not answer:
            raise PrinterOffline(
                f"printer did not answer a status query within {self.status_timeout_s:g}s "
                "(powered off, cable out, or wrong baud rate)"
            )
        return answer[0]

    def _query_status(self) -> PrinterStatus:
        port = self._port()
        reset = getattr(port, "reset_input_buffer", None)
        if callable(reset):  # drop stale answers (e.g. to DLE EOT bytes inside raster data)
            with contextlib.suppress(OSError):
                reset()
        answers = [self._ask(n) for n in (1, 2, 3, 4)]
        return status_from_bytes(*answers)


class SimulatedEscPosDevice:
    """A printer at the end of a transport: records bytes, answers DLE EOT from its state."""

    def __init__(self, *, paper: PaperState = PaperState.OK, online: bool = True) -> None:
        self.paper = paper
        self.online = online
        self.cover_open = False
        self.cutter_error = False
        self.powered = True  # False: no answers at all (power off / cable out)
        self.received = bytearray()
        self._answers = bytearray()
        self._pending = b""

    def write(self, data: bytes, /) -> int:
        if not self.powered:
            return len(data)  # a dead serial line swallows bytes
        self.received += data
        stream = self._pending + data
        self._pending = b""
        i = 0
        while i < len(stream):
            j = stream.find(bytes((escpos.DLE, escpos.EOT)), i)
            if j < 0 or j + 2 >= len(stream):
                self._pending = stream[j:] if j >= 0 else b""
                break
            self._answers.append(self._status_byte(stream[j + 2]))
            i = j + 3
        return len(data)

    def read(self, size: int = 1, /) -> bytes:
        out = bytes(self._answers[:size])
        del self._answers[:size]
        return out

    def flush(self) -> None:
        return None

    def reset_input_buffer(self) -> None:
        self._answers.clear()

    def _status_byte(self, n: int) -> int:
        out = self.paper is PaperState.OUT
        if n == 1:
            return 0x12 | (0x08 if (not self.online or out or self.cover_open) else 0)
        if n == 2:
            return 0x12 | (0x04 if self.cover_open else 0) | (0x20 if out else 0)
        if n == 3:
            return 0x12 | (0x08 if self.cutter_error else 0)
        near = self.paper in (PaperState.NEAR_END, PaperState.OUT)
        return 0x12 | (0x0C if near else 0) | (0x60 if out else 0)


@dataclass(frozen=True)
class PrintedReceipt:
    image: Image.Image
    data: bytes


class SimulatedPrinter:
    """The ESC/POS driver talking to :class:`SimulatedEscPosDevice`; keeps printed jobs in memory.

    Tell it to fail with ``set_paper(PaperState.OUT)``, ``set_online(False)``,
    ``set_cover_open(True)`` or ``set_powered(False)``. ``clear()`` forgets printed jobs.
    """

    def __init__(self, *, width_px: int = WIDTH_80MM_PX, paper: PaperState = PaperState.OK) -> None:
        self.device = SimulatedEscPosDevice(paper=paper)
        self._driver = EscPosPrinter(self.device, width_px=width_px)
        self.width_px = width_px
        self.jobs: list[PrintedReceipt] = []

    def set_paper(self, paper: PaperState) -> None:
        self.device.paper = paper

    def set_online(self, online: bool) -> None:
        self.device.online = online

    def set_cover_open(self, cover_open: bool) -> None:
        self.device.cover_open = cover_open

    def set_powered(self, powered: bool) -> None:
        self.device.powered = powered

    def status(self) -> PrinterStatus:
        return self._driver.status()

    def print_receipt(self, receipt: Printable) -> None:
        self._driver.check_ready()
        image = receipt.render(self.width_px)
        start = len(self.device.received)
        self._driver.send_image(image)
        self.jobs.append(PrintedReceipt(image, bytes(self.device.received[start:])))

    def clear(self) -> None:
        self.jobs.clear()
        self.device.received.clear()
