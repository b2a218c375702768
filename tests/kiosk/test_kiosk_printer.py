"""Receipt rendering (Vietnamese glyphs, QR) and the ESC/POS printer (bytes, status, faults)."""

from __future__ import annotations

import io
import os
import select
import threading
import tty
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import zxingcpp
from PIL import Image, ImageChops

from hw import escpos
from hw.printer import (
    CoverOpen,
    EscPosPrinter,
    PaperOut,
    PaperState,
    PrinterError,
    PrinterFault,
    PrinterOffline,
    SimulatedEscPosDevice,
    SimulatedPrinter,
    status_from_bytes,
)
from kiosk_ui.parsers import parse_dossier_code
from kiosk_ui.receipt import (
    FONT_ENV,
    VIETNAMESE_LETTERS,
    FontNotFound,
    MissingGlyphs,
    Receipt,
    ReceiptLine,
    dossier_receipt,
    find_fonts,
    missing_glyphs,
)

CODE = "000.00.01.H26-260930-0012"
DOSSIER = {
    "code": CODE,
    "procedure": "Cấp giấy phép xây dựng nhà ở riêng lẻ (điều chỉnh, gia hạn) đối với công trình cấp III",
    "status": "processing",
    "status_vi": "Đang xử lý",
    "received_date": "2026-09-30",
    "due_date": "2026-11-25",
    "agency": "UBND phường Khương Đình, Hà Nội",
    "note": "Hồ sơ đang được kiểm tra thực địa; ông/bà chưa cần bổ sung giấy tờ.",
}
PRINTED_AT = datetime(2026, 11, 22, 21, 30)


def receipt(lookup_url: str | None = None) -> Receipt:
    return dossier_receipt(DOSSIER, printed_at=PRINTED_AT, lookup_url=lookup_url)


def decode_qr(image: Image.Image) -> list[str]:
    return [b.text for b in zxingcpp.read_barcodes(image.convert("L"))]


# ---------------------------------------------------------------- rendering


def test_the_system_font_covers_every_vietnamese_letter() -> None:
    fonts = find_fonts()
    assert missing_glyphs(fonts.regular, VIETNAMESE_LETTERS) == set()
    assert missing_glyphs(fonts.bold, VIETNAMESE_LETTERS) == set()


def test_rendered_receipt_has_every_character_of_its_text_in_the_font() -> None:
    r = receipt()
    image = r.render(576)
    assert image.mode == "1" and image.width == 576 and image.height > 600
    text = "".join(r.texts())
    assert "Đang xử lý" in text and "Ngày hẹn trả kết quả" in text and "25/11/2026" in text
    fonts = find_fonts()
    assert missing_glyphs(fonts.regular, text) == set() and missing_glyphs(fonts.bold, text) == set()
    ink = image.convert("L").histogram()[0]
    assert ink > 5000  # text and QR were drawn


def test_text_the_font_cannot_draw_is_refused_not_printed_as_boxes() -> None:
    with pytest.raises(MissingGlyphs) as caught:
        Receipt(title="Hồ sơ 漢字").render(576)
    assert "漢" in caught.value.missing and "fonts-noto-core" in str(caught.value)


def test_a_missing_font_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(FONT_ENV, str(tmp_path / "none.ttf"))
    with pytest.raises(FontNotFound, match="apt-get install fonts-noto-core"):
        receipt().render(576)


def test_the_receipt_qr_decodes_back_to_the_dossier_code() -> None:
    assert decode_qr(receipt().render(576)) == [CODE]
    assert decode_qr(receipt().render(384)) == [CODE]


def test_a_lookup_url_qr_is_read_back_by_the_kiosk_parser() -> None:
    r = receipt(lookup_url="https://dichvucong.hanoi.gov.vn/tra-cuu?code={code}")
    (text,) = decode_qr(r.render(576))
    assert text.startswith("https://") and parse_dossier_code(text) == CODE


def test_long_words_wrap_inside_the_paper() -> None:
    r = Receipt(title="T", lines=(ReceiptLine("Ghi chú", "Ư" * 200),), fonts=find_fonts())
    image = r.render(384)
    assert image.width == 384 and image.height > 300


# ---------------------------------------------------------------- ESC/POS bytes


def test_raster_bytes_follow_gs_v_0() -> None:
    image = Image.new("1", (16, 2), 1)
    image.putpixel((0, 0), 0)
    image.putpixel((15, 1), 0)
    assert escpos.raster(image) == b"\x1dv0\x00\x02\x00\x02\x00" + b"\x80\x00\x00\x01"


def test_odd_widths_are_padded_white() -> None:
    image = Image.new("1", (10, 1), 0)
    assert escpos.raster(image) == b"\x1dv0\x00\x02\x00\x01\x00\xff\xc0"


def test_the_job_is_init_raster_bands_then_cut_and_decodes_to_the_image() -> None:
    printer = SimulatedPrinter()
    printer.print_receipt(receipt())
    (job,) = printer.jobs
    commands = escpos.decode(job.data)
    names = [c.name for c in commands if c.name != "status_query"]
    assert names[0] == "init" and names[-1] == "cut" and set(names[1:-1]) == {"raster"}
    assert len(names) - 2 == -(-job.image.height // escpos.BAND_ROWS)
    assert commands[-5].name == "cut" and commands[-5].args == b"B\x00"  # then the after-print status check
    printed = escpos.raster_image(commands)
    assert printed.size == job.image.size
    differing = ImageChops.logical_xor(printed, job.image).histogram()[255]
    assert differing <= 20  # only dots dropped to defuse real-time command bytes
    assert decode_qr(printed) == [CODE]


def test_image_bytes_never_spell_a_real_time_command() -> None:
    image = Image.new("1", (24, 4), 1)
    row = bytes((0x10, 0x04, 0x01)).translate(bytes(255 - i for i in range(256)))  # white = set
    for y in range(4):
        image.paste(Image.frombytes("1", (24, 1), row), (0, y))
    data = escpos.raster(image)
    assert b"\x10\x04" not in data[8:] and data[8:11] == b"\x00\x04\x01"
    assert [c.name for c in escpos.decode(data)] == ["raster"]


# ---------------------------------------------------------------- status and faults


def test_status_bytes_are_interpreted() -> None:
    ready = status_from_bytes(0x12, 0x12, 0x12, 0x12)
    assert ready.online and ready.paper is PaperState.OK and not ready.cover_open and not ready.error
    assert status_from_bytes(0x12, 0x12, 0x12, 0x1E).paper is PaperState.NEAR_END
    out = status_from_bytes(0x1A, 0x32, 0x12, 0x7E)
    assert not out.online and out.paper is PaperState.OUT and "paper out" in out.message
    cover = status_from_bytes(0x1A, 0x16, 0x12, 0x12)
    assert cover.cover_open and not cover.online
    assert status_from_bytes(0x12, 0x12, 0x1A, 0x12).error  # cutter error
    garbled = status_from_bytes(0xFF, 0x12, 0x12, 0x12)
    assert garbled.error and garbled.paper is PaperState.UNKNOWN


@pytest.mark.parametrize(
    ("setup", "error"),
    [
        (lambda p: p.set_paper(PaperState.OUT), PaperOut),
        (lambda p: p.set_online(False), PrinterOffline),
        (lambda p: p.set_cover_open(True), CoverOpen),
        (lambda p: p.set_powered(False), PrinterOffline),
        (lambda p: setattr(p.device, "cutter_error", True), PrinterFault),
    ],
    ids=["paper-out", "offline", "cover-open", "powered-off", "cutter-error"],
)
def test_faults_stop_printing_with_bilingual_messages(setup: object, error: type[PrinterError]) -> None:
    printer = SimulatedPrinter()
    setup(printer)  # type: ignore[operator]
    with pytest.raises(error) as caught:
        printer.print_receipt(receipt())
    assert (
        caught.value.message_vi and caught.value.message_en and str(caught.value) == caught.value.message_en
    )
    assert printer.jobs == [] and b"\x1dv0" not in printer.device.received


def test_paper_out_message_speaks_vietnamese() -> None:
    printer = SimulatedPrinter(paper=PaperState.OUT)
    assert printer.status().paper is PaperState.OUT and not printer.status().online
    with pytest.raises(PaperOut) as caught:
        printer.print_receipt(receipt())
    assert "hết giấy" in caught.value.message_vi


def test_near_end_still_prints_and_is_reported() -> None:
    printer = SimulatedPrinter(paper=PaperState.NEAR_END)
    printer.print_receipt(receipt())
    assert len(printer.jobs) == 1
    assert printer.status().paper is PaperState.NEAR_END and printer.status().online
    assert printer.status().to_dict()["paper"] == "near_end"


def test_recovering_from_paper_out() -> None:
    printer = SimulatedPrinter(paper=PaperState.OUT)
    with pytest.raises(PaperOut):
        printer.print_receipt(receipt())
    printer.set_paper(PaperState.OK)
    printer.print_receipt(receipt())
    assert len(printer.jobs) == 1
    printer.clear()
    assert printer.jobs == [] and not printer.device.received


def test_one_way_transport_prints_with_unknown_status() -> None:
    sink = io.BytesIO()
    printer = EscPosPrinter(sink, bidirectional=False, width_px=384)
    printer.print_receipt(receipt())
    assert printer.status().paper is PaperState.UNKNOWN
    names = [c.name for c in escpos.decode(sink.getvalue())]
    assert names[0] == "init" and names[-1] == "cut" and "status_query" not in names


# ---------------------------------------------------------------- over a real pty


class PtyPrinter:
    """A thread behind a pty master that behaves like a printer (answers DLE EOT)."""

    def __init__(self, link: Path) -> None:
        self.device = SimulatedEscPosDevice()
        self.master, slave = os.openpty()
        tty.setraw(slave)
        link.symlink_to(os.ttyname(slave))
        os.close(slave)
        self.path = str(link)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self.master, 65536)
            except OSError:
                continue  # nobody has the slave open right now
            self.device.write(data)
            answer = self.device.read(64)
            if answer:
                os.write(self.master, answer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        os.close(self.master)


@pytest.fixture
def pty_printer(tmp_path: Path) -> Iterator[PtyPrinter]:
    printer = PtyPrinter(tmp_path / "ttyUSB-printer")
    try:
        yield printer
    finally:
        printer.close()


@pytest.mark.timeout(30)
def test_printing_over_a_serial_line(pty_printer: PtyPrinter) -> None:
    printer = EscPosPrinter(pty_printer.path, baudrate=19200, status_timeout_s=0.5)
    try:
        assert printer.status().online
        printer.print_receipt(receipt())
        pty_printer.device.paper = PaperState.OUT
        assert printer.status().paper is PaperState.OUT
        with pytest.raises(PaperOut):
            printer.print_receipt(receipt())
    finally:
        printer.close()
    commands = escpos.decode(bytes(pty_printer.device.received))
    assert decode_qr(escpos.raster_image(commands)) == [CODE]
    assert sum(c.name == "cut" for c in commands) == 1


@pytest.mark.timeout(30)
def test_a_silent_printer_is_offline_within_the_status_timeout(pty_printer: PtyPrinter) -> None:
    pty_printer.device.powered = False
    printer = EscPosPrinter(pty_printer.path, status_timeout_s=0.2)
    try:
        status = printer.status()
        assert not status.online and "did not answer" in status.message
        with pytest.raises(PrinterOffline):
            printer.print_receipt(receipt())
    finally:
        printer.close()


def test_a_missing_port_is_offline(tmp_path: Path) -> None:
    printer = EscPosPrinter(str(tmp_path / "no-such-tty"))
    assert not printer.status().online
    with pytest.raises(PrinterOffline, match="cannot open printer port"):
        printer.print_receipt(receipt())
