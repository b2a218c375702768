"""A sticker for the device: its id in large print and a QR code of its page on the fleet dashboard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from provisioning.errors import ProvisionError

WIDTH, HEIGHT = 696, 300  # 62 mm label at 300 dpi (Brother QL style), landscape


def device_page_url(fleet_url: str, device_id: str) -> str:
    return f"{fleet_url.rstrip('/')}/devices/{device_id}"


def _font(size: int) -> Any:
    from PIL import ImageFont

    for name in ("DejaVuSans-Bold.ttf", "NotoSans-Bold.ttf", "LiberationSans-Bold.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


def _fitting(draw: Any, text: str, width: int, size: int) -> Any:
    """The largest font up to ``size`` in which ``text`` fits ``width`` pixels."""
    while size > 10 and draw.textlength(text, font=_font(size)) > width:
        size -= 2
    return _font(size)


def render_label(device_id: str, url: str, lines: list[str], out: Path) -> Path:
    """Write a 1-bit PNG label: QR code on the left, id and ``lines`` on the right."""
    try:
        import qrcode
        from PIL import Image, ImageDraw
    except ImportError as exc:
        raise ProvisionError(
            "printing labels needs the qrcode and pillow packages", "install cityedge with the kiosk extra"
        ) from exc
    qr = qrcode.QRCode(border=1, box_size=10, error_correction=qrcode.constants.ERROR_CORRECT_M)
    qr.add_data(url)
    qr.make(fit=True)
    code = qr.make_image(fill_color="black", back_color="white").get_image().convert("L")
    side = HEIGHT - 20
    code = code.resize((side, side), Image.Resampling.NEAREST)
    label = Image.new("L", (WIDTH, HEIGHT), 255)
    label.paste(code, (10, 10))
    draw = ImageDraw.Draw(label)
    x = side + 30
    room = WIDTH - x - 10
    draw.text((x, 30), device_id, fill=0, font=_fitting(draw, device_id, room, 40))
    for i, line in enumerate(lines):
        draw.text((x, 100 + i * 36), line, fill=0, font=_fitting(draw, line, room, 24))
    out.parent.mkdir(parents=True, exist_ok=True)
    label.convert("1").save(out, format="PNG")
    return out
