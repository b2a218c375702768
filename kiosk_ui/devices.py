"""The kiosk's peripherals: the QR scanner and the receipt printer (``hw.scanner``, ``hw.printer``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from agent.kiosk.metrics import KioskMetrics
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


PrintOutcome = str
"""An i18n key: print.ok, print.paper_out, print.offline, print.none."""


class Devices:
    """Scanner callbacks in, printer jobs out, both states kept in the kiosk metrics."""

    def __init__(
        self, scanner: QrScanner | None, printer: ReceiptPrinter | None, metrics: KioskMetrics
    ) -> None:
        self.scanner = scanner
        self.printer = printer
        self.metrics = metrics
        self._print_lock = threading.Lock()
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
