"""Receipt layout and rendering to a 1-bit raster image for thermal printers.

Vietnamese text is drawn by Pillow with a system font that covers it: ``CITYEDGE_RECEIPT_FONT``
if set, else Noto Sans (Debian ``fonts-noto-core``, installed by ``scripts/setup.sh``), else
DejaVu Sans (``fonts-dejavu-core``). Each candidate's character map is checked (fontTools), and
rendering refuses text the font cannot draw rather than printing empty boxes.

Receipts carry the dossier code, procedure, status and dates — never the resident's name or id.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from PIL import Image, ImageFont

FONT_ENV = "CITYEDGE_RECEIPT_FONT"
FONT_CANDIDATES: tuple[tuple[str, str], ...] = (
    # (regular, bold)
    (
        "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
        "/usr/share/fonts/truetype/noto/NotoSans-Bold.ttf",
    ),
    (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    ),
)
# Every letter Vietnamese needs (lower and upper case, all tones): a font must cover these.
VIETNAMESE_SAMPLE = (
    "aàáảãạăằắẳẵặâầấẩẫậbcdđeèéẻẽẹêềếểễệghiìíỉĩịklmnoòóỏõọôồốổỗộơờớởỡợpqrstuùúủũụưừứửữựvxyỳýỷỹỵ"
)
VIETNAMESE_LETTERS = VIETNAMESE_SAMPLE + VIETNAMESE_SAMPLE.upper()
PAPER_80MM_PX = 576  # 72 mm printable at 203 dpi
PAPER_58MM_PX = 384


class ReceiptRenderError(Exception):
    """A receipt cannot be drawn; the message says what to install or change."""


class FontNotFound(ReceiptRenderError):
    pass


class MissingGlyphs(ReceiptRenderError):
    def __init__(self, font: Path, missing: Iterable[str]) -> None:
        self.missing = "".join(sorted(set(missing)))
        super().__init__(f"font {font} cannot draw {self.missing!r}; install fonts-noto-core")


@functools.lru_cache(maxsize=16)
def font_codepoints(path: Path) -> frozenset[int]:
    """The characters a TrueType/OpenType font maps to glyphs."""
    from fontTools.ttLib import TTFont

    with TTFont(str(path), lazy=True) as font:
        cmap: dict[int, str] = font.getBestCmap() or {}
    return frozenset(cmap)


def missing_glyphs(path: Path, text: str) -> set[str]:
    """Characters of ``text`` (other than whitespace) that the font at ``path`` lacks."""
    have = font_codepoints(path)
    return {ch for ch in text if not ch.isspace() and ord(ch) not in have}


@dataclass(frozen=True)
class FontPair:
    regular: Path
    bold: Path


def find_fonts() -> FontPair:
    """The first installed font pair that covers Vietnamese, or FontNotFound saying what to do."""
    override = os.environ.get(FONT_ENV)
    candidates = [(override, override)] if override else list(FONT_CANDIDATES)
    for regular, bold in candidates:
        pair = FontPair(Path(regular), Path(bold) if Path(bold).is_file() else Path(regular))
        if pair.regular.is_file() and not missing_glyphs(pair.regular, VIETNAMESE_LETTERS):
            return pair
    searched = ", ".join(r for r, _ in candidates)
    raise FontNotFound(
        f"no font covering Vietnamese found (looked for {searched}); install one with "
        f"'sudo apt-get install fonts-noto-core' or set {FONT_ENV} to a .ttf file"
    )


@dataclass(frozen=True)
class ReceiptLine:
    label: str
    value: str


@dataclass(frozen=True)
class Receipt:
    """What goes on paper; :meth:`render` draws it (the printer calls it with its dot width)."""

    title: str
    lines: tuple[ReceiptLine, ...] = ()
    header: tuple[str, ...] = ()
    qr_data: str | None = None
    qr_caption: str | None = None
    footer: tuple[str, ...] = ()
    printed_at: datetime | None = None
    fonts: FontPair | None = field(default=None, compare=False)

    def texts(self) -> list[str]:
        """Every string that is printed as text."""
        out = [self.title, *self.header, *self.footer]
        out += [part for line in self.lines for part in (line.label, line.value)]
        if self.qr_caption:
            out.append(self.qr_caption)
        if self.printed_at:
            out.append(_printed_at(self.printed_at))
        return out

    def render(self, width_px: int = PAPER_80MM_PX) -> Image.Image:
        fonts = self.fonts or find_fonts()
        for path in {fonts.regular, fonts.bold}:
            missing = missing_glyphs(path, "".join(self.texts()))
            if missing:
                raise MissingGlyphs(path, missing)
        return _Canvas(fonts, width_px).draw(self)


def _printed_at(moment: datetime) -> str:
    return "In lúc " + moment.strftime("%H:%M %d/%m/%Y")


def _vi_date(value: Any) -> str:
    if not isinstance(value, str) or not value:
        return "—"
    try:
        return date.fromisoformat(value[:10]).strftime("%d/%m/%Y")
    except ValueError:
        return value


def dossier_receipt(
    dossier: Mapping[str, Any],
    *,
    lookup_url: str | None = None,
    header: tuple[str, ...] = ("TRA CỨU HỒ SƠ HÀNH CHÍNH",),
    printed_at: datetime | None = None,
) -> Receipt:
    """A receipt for a ``dossier.lookup`` result (``protocol.dossier.Dossier`` as a dict).

    ``lookup_url``: e.g. ``https://dichvucong.hanoi.gov.vn/tra-cuu?code={code}``; the QR then
    carries that URL, else the bare code (both are read back by ``parse_dossier_code``).
    """
    code = str(dossier.get("code", ""))
    status = str(dossier.get("status_vi") or dossier.get("status") or "")
    lines = [
        ReceiptLine("Mã hồ sơ", code),
        ReceiptLine("Thủ tục", str(dossier.get("procedure", ""))),
        ReceiptLine("Trạng thái", status),
        ReceiptLine("Ngày tiếp nhận", _vi_date(dossier.get("received_date"))),
        ReceiptLine("Ngày hẹn trả kết quả", _vi_date(dossier.get("due_date"))),
    ]
    if dossier.get("agency"):
        lines.append(ReceiptLine("Cơ quan giải quyết", str(dossier["agency"])))
    if dossier.get("note"):
        lines.append(ReceiptLine("Ghi chú", str(dossier["note"])))
    qr = lookup_url.replace("{code}", quote(code, safe="")) if lookup_url else code
    return Receipt(
        title="PHIẾU THÔNG TIN HỒ SƠ",
        header=header,
        lines=tuple(lines),
        qr_data=qr or None,
        qr_caption="Quét mã để tra cứu lại hồ sơ",
        footer=("Phiếu không chứa thông tin cá nhân.", "Xin cảm ơn!"),
        printed_at=printed_at,
    )


PAYMENT_LINES = {
    "none": "Không thu lệ phí",
    "unpaid": "Chưa thanh toán",
    "paid": "Đã thanh toán",
    "pending": "Đang chờ gửi",
}


def vnd(amount: int) -> str:
    """``10000`` → ``10.000 đồng``."""
    return f"{amount:,}".replace(",", ".") + " đồng"


def submission_receipt(
    result: Mapping[str, Any],
    procedure: str,
    *,
    lookup_url: str | None = None,
    printed_at: datetime | None = None,
) -> Receipt:
    """The receipt of a dossier submitted at the kiosk (the ``dossier.submit`` answer): its code as
    text and QR (the lookup screen reads it back), the procedure, the fee and whether it is paid."""
    code = str(result.get("code", ""))
    payment = str(result.get("payment", "none"))
    fee = result.get("fee")
    lines = [ReceiptLine("Mã hồ sơ", code), ReceiptLine("Thủ tục", procedure)]
    if isinstance(fee, int) and fee > 0:
        lines.append(ReceiptLine("Lệ phí", vnd(fee)))
    lines.append(ReceiptLine("Thanh toán", PAYMENT_LINES.get(payment, payment)))
    footer = ["Phiếu không chứa thông tin cá nhân.", "Xin cảm ơn!"]
    if payment == "unpaid":
        footer.insert(0, "Quý vị có thể thanh toán sau bằng mã VietQR khi tra cứu hồ sơ.")
    qr = lookup_url.replace("{code}", quote(code, safe="")) if lookup_url else code
    return Receipt(
        title="GIẤY BIÊN NHẬN HỒ SƠ",
        header=("NỘP HỒ SƠ TRỰC TUYẾN TẠI KIOSK",),
        lines=tuple(lines),
        qr_data=qr or None,
        qr_caption="Quét mã để tra cứu hồ sơ",
        footer=tuple(footer),
        printed_at=printed_at,
    )


def qr_svg(data: str, size_px: int = 360) -> str:
    """``data`` as an inline SVG QR code (the page's CSP allows no data: images)."""
    import qrcode

    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=4)
    code.add_data(data)
    code.make(fit=True)
    matrix: list[list[bool]] = code.get_matrix()
    n = len(matrix)
    path = "".join(f"M{x},{y}h1v1h-1z" for y, row in enumerate(matrix) for x, cell in enumerate(row) if cell)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {n} {n}" width="{size_px}" '
        f'height="{size_px}" shape-rendering="crispEdges" role="img">'
        f'<rect width="{n}" height="{n}" fill="#fff"/><path d="{path}" fill="#000"/></svg>'
    )


class _Canvas:
    """Lays a receipt out top to bottom on an 8-bit image, then thresholds it to 1 bit."""

    MARGIN = 12
    GAP = 8

    def __init__(self, fonts: FontPair, width_px: int) -> None:
        from PIL import Image, ImageDraw, ImageFont

        if width_px < 200 or width_px % 8:
            raise ReceiptRenderError(f"paper width {width_px} px must be a multiple of 8, at least 200")
        self.width = width_px
        self.inner = width_px - 2 * self.MARGIN
        scale = width_px / PAPER_80MM_PX

        def font(path: Path, size: int) -> ImageFont.FreeTypeFont:
            return ImageFont.truetype(str(path), max(12, round(size * scale)))

        self.title = font(fonts.bold, 34)
        self.heading = font(fonts.regular, 24)
        self.label = font(fonts.regular, 22)
        self.value = font(fonts.bold, 28)
        self.small = font(fonts.regular, 20)
        self.image = Image.new("L", (width_px, 4000), 255)
        self.pen = ImageDraw.Draw(self.image)
        self.y = self.MARGIN

    def draw(self, receipt: Receipt) -> Image.Image:
        for text in receipt.header:
            self.text(text, self.heading, center=True)
        self.text(receipt.title, self.title, center=True)
        self.rule()
        for line in receipt.lines:
            self.text(line.label, self.label)
            self.text(line.value, self.value)
            self.y += self.GAP
        if receipt.qr_data:
            self.rule()
            self.qr(receipt.qr_data)
            if receipt.qr_caption:
                self.text(receipt.qr_caption, self.small, center=True)
        self.rule()
        if receipt.printed_at:
            self.text(_printed_at(receipt.printed_at), self.small, center=True)
        for text in receipt.footer:
            self.text(text, self.small, center=True)
        bottom = self.y + self.MARGIN
        return self.image.crop((0, 0, self.width, bottom)).point(lambda v: 255 if v >= 160 else 0, mode="1")

    def text(self, text: str, font: ImageFont.FreeTypeFont, *, center: bool = False) -> None:
        ascent, descent = font.getmetrics()
        for line in wrap_text(text, font, self.inner):
            self._grow(ascent + descent)
            width = font.getlength(line)
            x = self.MARGIN + (self.inner - width) / 2 if center else self.MARGIN
            self.pen.text((x, self.y), line, font=font, fill=0)
            self.y += ascent + descent + 2

    def rule(self) -> None:
        self._grow(self.GAP * 2)
        self.y += self.GAP
        self.pen.line((self.MARGIN, self.y, self.width - self.MARGIN, self.y), fill=0, width=2)
        self.y += self.GAP

    def qr(self, data: str) -> None:
        import qrcode
        from PIL import Image

        code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=4)
        code.add_data(data)
        code.make(fit=True)
        matrix: list[list[bool]] = code.get_matrix()
        modules = len(matrix)
        box = max(2, int(self.inner * 0.6) // modules)
        small = Image.new("L", (modules, modules), 255)
        small.putdata([0 if cell else 255 for row in matrix for cell in row])
        big = small.resize((modules * box, modules * box), Image.Resampling.NEAREST)
        self._grow(big.height)
        self.image.paste(big, ((self.width - big.width) // 2, self.y))
        self.y += big.height

    def _grow(self, needed: int) -> None:
        from PIL import Image, ImageDraw

        if self.y + needed + self.MARGIN <= self.image.height:
            return
        taller = Image.new("L", (self.width, self.image.height * 2 + needed), 255)
        taller.paste(self.image, (0, 0))
        self.image = taller
        self.pen = ImageDraw.Draw(self.image)


def wrap_text(text: str, font: ImageFont.FreeTypeFont, width: float) -> list[str]:
    """Greedy word wrap by rendered width; words wider than a line are broken by character."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if font.getlength(candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = ""
        for ch in word:
            if current and font.getlength(current + ch) > width:
                lines.append(current)
                current = ""
            current += ch
    if current or not lines:
        lines.append(current)
    return lines
