"""The few ESC/POS commands a receipt needs, encoded and decoded; no I/O.

Written against Epson's ESC/POS reference rather than through python-escpos: a receipt needs
only initialise, one raster image (``GS v 0``), feed-and-cut (``GS V``) and the real-time status
queries (``DLE EOT n``), and the decoder below lets tests and the simulated printer read the
stream back.

Status bytes (``DLE EOT n`` answers) have bits 1 and 4 set and bits 0 and 7 clear:

- n=1 printer: bit 3 offline;
- n=2 offline cause: bit 2 cover open, bit 3 paper fed by the button, bit 5 stopped at paper end,
  bit 6 error;
- n=3 error cause: bit 3 cutter error, bit 5 unrecoverable error, bit 6 auto-recoverable error;
- n=4 roll paper sensor: bits 2-3 near end, bits 5-6 paper absent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

ESC, GS, DLE, EOT = 0x1B, 0x1D, 0x10, 0x04
INIT = b"\x1b@"
FEED_AND_CUT = b"\x1dVB\x00"  # GS V 66 0: feed to the cutter, partial cut
BAND_ROWS = 256  # rows per GS v 0 command, small enough for every printer's buffer
STATUS_PRINTER, STATUS_OFFLINE_CAUSE, STATUS_ERROR_CAUSE, STATUS_PAPER = 1, 2, 3, 4

_INVERT = bytes(255 - i for i in range(256))
# Printers act on real-time commands (DLE EOT status, DLE ENQ recover/clear, DLE DC4 pulse/clear)
# even inside image data. Image bytes that would spell one lose a single dot instead.
_REALTIME_IN_DATA = re.compile(rb"\x10(?=[\x04\x05\x14])")


def status_query(n: int) -> bytes:
    """``DLE EOT n``: ask for one status byte."""
    if n not in (1, 2, 3, 4):
        raise ValueError("DLE EOT n is defined for n = 1..4")
    return bytes((DLE, EOT, n))


def is_status_byte(value: int) -> bool:
    """True when the fixed bits of a status byte are right (bits 1, 4 set; 0, 7 clear)."""
    return value & 0x93 == 0x12


def raster(image: Image.Image) -> bytes:
    """``GS v 0`` commands for a 1-bit image (black = printed), in bands of BAND_ROWS rows."""
    from PIL import Image as PILImage

    mono = image if image.mode == "1" else image.convert("1")
    if mono.width % 8:
        padded = PILImage.new("1", (mono.width + 8 - mono.width % 8, mono.height), 1)
        padded.paste(mono, (0, 0))
        mono = padded
    row_bytes = mono.width // 8
    data = mono.tobytes().translate(_INVERT)  # PIL "1": bit set = white; ESC/POS: bit set = black
    data = _REALTIME_IN_DATA.sub(b"\x00", data)
    out = bytearray()
    for top in range(0, mono.height, BAND_ROWS):
        rows = min(BAND_ROWS, mono.height - top)
        out += bytes((GS, 0x76, 0x30, 0, row_bytes & 0xFF, row_bytes >> 8, rows & 0xFF, rows >> 8))
        out += data[top * row_bytes : (top + rows) * row_bytes]
    return bytes(out)


def receipt_job(image: Image.Image) -> bytes:
    """The whole job for one receipt: initialise, the raster image, feed and cut."""
    return INIT + raster(image) + FEED_AND_CUT


@dataclass(frozen=True)
class Command:
    """One decoded command: ``name`` in init/raster/cut/feed/status_query/unknown."""

    name: str
    args: bytes = b""
    data: bytes = b""


class EscPosDecodeError(ValueError):
    """A command was cut short (the stream ends inside it)."""


def _need(stream: bytes, end: int, what: str) -> None:
    if end > len(stream):
        raise EscPosDecodeError(f"stream ends inside {what}")


def decode(stream: bytes) -> list[Command]:
    """Split a byte stream into the commands above; other bytes come out as ``unknown``."""
    out: list[Command] = []
    i = 0
    while i < len(stream):
        head = stream[i : i + 2]
        if head == INIT:
            out.append(Command("init"))
            i += 2
        elif head == b"\x1bd":
            _need(stream, i + 3, "ESC d")
            out.append(Command("feed", stream[i + 2 : i + 3]))
            i += 3
        elif head == bytes((DLE, EOT)):
            _need(stream, i + 3, "DLE EOT")
            out.append(Command("status_query", stream[i + 2 : i + 3]))
            i += 3
        elif stream[i : i + 3] == b"\x1dv0":
            _need(stream, i + 8, "GS v 0 header")
            args = stream[i + 3 : i + 8]
            size = (args[1] | args[2] << 8) * (args[3] | args[4] << 8)
            _need(stream, i + 8 + size, "GS v 0 data")
            out.append(Command("raster", args, stream[i + 8 : i + 8 + size]))
            i += 8 + size
        elif head == b"\x1dV":
            _need(stream, i + 3, "GS V")
            length = 4 if stream[i + 2] in (65, 66, 97, 98, 103, 104) else 3
            _need(stream, i + length, "GS V")
            out.append(Command("cut", stream[i + 2 : i + length]))
            i += length
        else:
            out.append(Command("unknown", stream[i : i + 1]))
            i += 1
    return out


def raster_image(commands: list[Command]) -> Image.Image:
    """Re-assemble the raster bands of a job into one 1-bit image (black = printed)."""
    from PIL import Image as PILImage

    bands = [c for c in commands if c.name == "raster"]
    if not bands:
        raise EscPosDecodeError("no raster image in the stream")
    row_bytes = bands[0].args[1] | bands[0].args[2] << 8
    data = b"".join(c.data for c in bands)
    rows = len(data) // row_bytes
    return PILImage.frombytes("1", (row_bytes * 8, rows), data.translate(_INVERT))
