"""The kiosk's peripherals: the QR scanner, the receipt printer and the document camera
(``hw.scanner``, ``hw.printer``, ``hw.doccam``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.kiosk.metrics import KioskMetrics
from hw.doccam import DocumentCamera, DocumentCameraError
from hw.printer import (
    PaperOut,
    PaperState,
    PrinterError,
    PrinterOffline,
    ReceiptPrinter,
    SimulatedPrinter,
)
from hw.scanner import QrScanner, ScannerState, SimulatedQrScanner
from hw.serialframe import Garbage
from kiosk_ui.config import KioskSettings

log = logging.getLogger(__name__)


def build_scanner(settings: KioskSettings) -> QrScanner | None:
    if settings.scanner:
        from hw.scanner import SerialQrScanner

        return SerialQrScanner(settings.scanner)
    if settings.simulate_peripherals:
        return SimulatedQrScanner()
    return None


def build_printer(settings: KioskSettings) -> ReceiptPrinter | None:
    if settings.printer:
        from hw.printer import EscPosPrinter

        return EscPosPrinter(settings.printer)
    if settings.simulate_peripherals:
        return SimulatedPrinter()
    return None


MAX_PAGE_JPEG = 150 * 1024
"""A cleaned page must fit one ``dossier.upload_page`` request (the gateway takes up to 160 KiB)."""


def build_doccam(settings: KioskSettings) -> DocumentCamera | None:
    if settings.doccam:
        from hw.doccam import V4L2DocumentCamera

        return V4L2DocumentCamera(settings.doccam)
    if settings.simulate_peripherals:
        from hw.doccam import SimulatedDocumentCamera

        return SimulatedDocumentCamera()
    return None


@dataclass(frozen=True)
class Shot:
    """One photographed page: the cleaned page as JPEG, or why it was refused (vi, en)."""

    jpeg: bytes | None
    reason: tuple[str, str] | None = None


PrintOutcome = str
"""An i18n key: print.ok, print.paper_out, print.offline, print.none."""


class Devices:
    """Scanner callbacks in, printer jobs out, both states kept in the kiosk metrics."""

    def __init__(
        self,
        scanner: QrScanner | None,
        printer: ReceiptPrinter | None,
        metrics: KioskMetrics,
        doccam: DocumentCamera | None = None,
    ) -> None:
        self.scanner = scanner
        self.printer = printer
        self.doccam = doccam
        self.metrics = metrics
        self._print_lock = threading.Lock()
        self._camera_lock = threading.Lock()
        if scanner is None:
            metrics.set_scanner("absent")
        if printer is None:
            metrics.set_printer("absent")

    def start(self, on_payload: Callable[[str], None], on_garbage: Callable[[], None]) -> None:
        if self.scanner is None:
            return

        def garbage(_: Garbage) -> None:
            self.metrics.count("scan_garbage")
            on_garbage()

        self.scanner.start(on_payload, self._scanner_state, garbage)

    def stop(self) -> None:
        if self.scanner is not None:
            self.scanner.stop()
        if self.doccam is not None:
            self.doccam.close()

    def photograph_page(self) -> Shot:
        """Take a photo of the tray and clean it (``kiosk_ui.docpipeline``); the photo itself is
        dropped here, only the cleaned page (JPEG, in memory) is kept."""
        if self.doccam is None:
            return Shot(None, ("Máy này không có camera chụp giấy tờ.", "This kiosk has no document camera."))
        import cv2

        from kiosk_ui.docpipeline import clean_page

        with self._camera_lock:
            try:
                photo = self.doccam.capture()
            except DocumentCameraError as exc:
                log.warning("document camera: %s", exc)
                self.metrics.count("doccam_errors")
                return Shot(
                    None,
                    (
                        "Camera chụp giấy tờ đang không hoạt động. Vui lòng báo cán bộ tiếp nhận.",
                        "The document camera is not working. Please tell a staff member.",
                    ),
                )
        result = clean_page(photo)
        del photo
        if not result.ok or result.page is None:
            self.metrics.count("pages_refused")
            return Shot(None, (result.reason_vi, result.reason_en))
        for quality in (70, 55, 40):  # small enough for one upload request (fleet.gateway: 160 KiB)
            ok, encoded = cv2.imencode(".jpg", result.page, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok or len(encoded) <= MAX_PAGE_JPEG:
                break
        if not ok or len(encoded) > MAX_PAGE_JPEG:
            return Shot(
                None, ("Không lưu được ảnh. Vui lòng chụp lại.", "The photo was not kept. Please retake it.")
            )
        self.metrics.count("pages")
        return Shot(encoded.tobytes())

    def _scanner_state(self, state: ScannerState) -> None:
        self.metrics.set_scanner(state.status.value, message=state.message)

    def scanner_stats(self) -> dict[str, Any]:
        return self.scanner.stats.to_dict() if self.scanner is not None else {}

    def poll_printer(self) -> None:
        """Refresh the printer state for telemetry (a few hundred ms on a serial printer)."""
        if self.printer is None or not self._print_lock.acquire(timeout=0.1):
            return
        try:
            status = self.printer.status()
        except Exception as exc:  # boundary: a status query must not break telemetry
            self.metrics.set_printer("error", message=type(exc).__name__)
            return
        finally:
            self._print_lock.release()
        if not status.online:
            state = "offline"
        elif status.paper is PaperState.OUT:
            state = "paper_out"
        elif status.paper is PaperState.NEAR_END:
            state = "paper_low"
        else:
            state = "ok"
        self.metrics.set_printer(state, paper=status.paper.value, message=status.message)

    def print_receipt(self, receipt: Any) -> PrintOutcome:
        if self.printer is None:
            return "print.none"
        with self._print_lock:
            try:
                self.printer.print_receipt(receipt)
            except PaperOut:
                self.metrics.set_printer("paper_out")
                return "print.paper_out"
            except (PrinterOffline, PrinterError) as exc:
                self.metrics.set_printer("offline", message=str(exc))
                return "print.offline"
            except Exception as exc:  # boundary: e.g. receipt rendering (font) problems
                log.error("printing failed: %s", type(exc).__name__)
                self.metrics.set_printer("error", message=type(exc).__name__)
                return "print.offline"
        self.metrics.count("receipts")
        self.metrics.set_printer("ok")
        return "print.ok"

    def forget_jobs(self) -> None:
        """The simulated printer keeps printed jobs in memory: drop them at session end."""
        clear = getattr(self.printer, "clear", None)
        if callable(clear):
            clear()
