"""Pure framing core for line-oriented serial readers (QR / ID-card scanners); no I/O.

Bytes go in with :meth:`FramePipeline.feed` (and :meth:`FramePipeline.flush` when the line has
been quiet for the inter-character timeout); events come out:

- :class:`Payload` — one decoded, cleaned, de-duplicated frame;
- :class:`Garbage` — something was discarded (not UTF-8, over the length limit). It carries a
  reason and a byte count, never the bytes themselves: a bad frame may still hold personal data.

Framing rules: a frame ends at CR, LF or CRLF (any run of CR/LF), or at a flush; empty frames are
dropped; a frame longer than ``max_frame_bytes`` is reported once and discarded up to the next
terminator. Because every rule looks at one byte at a time, the frames do not depend on how the
stream was split into reads.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

TERMINATORS = b"\r\n"
DEFAULT_MAX_FRAME_BYTES = 2048


@dataclass(frozen=True)
class Payload:
    """A frame that decoded to clean text."""

    text: str


@dataclass(frozen=True)
class Garbage:
    """Bytes that were discarded, with the reason in English and Vietnamese (no content)."""

    reason: str
    reason_vi: str
    nbytes: int


FrameEvent = Payload | Garbage


class LineFramer:
    """Split a byte stream into frames at CR/LF, with a maximum frame length."""

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be at least 1")
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._overflow = 0  # bytes dropped in the current over-long frame (0: not overflowing)

    @property
    def pending(self) -> bool:
        """True while a partial frame (or an over-long one being discarded) is buffered."""
        return bool(self._buf) or self._overflow > 0

    def feed(self, data: bytes) -> list[bytes | Garbage]:
        """Add bytes; return completed raw frames and over-length reports, in stream order."""
        out: list[bytes | Garbage] = []
        start = 0
        for index, byte in enumerate(data):
            if byte in TERMINATORS:
                self._take(data[start:index], out)
                self._end_frame(out)
                start = index + 1
        self._take(data[start:], out)
        return out

    def flush(self) -> list[bytes | Garbage]:
        """End the current frame (the line went quiet)."""
        out: list[bytes | Garbage] = []
        self._end_frame(out)
        return out

    def reset(self) -> None:
        """Forget any partial frame (e.g. after the port went away mid-frame)."""
        self._buf.clear()
        self._overflow = 0

    def _take(self, chunk: bytes, out: list[bytes | Garbage]) -> None:
        if not chunk:
            return
        if self._overflow:
            self._overflow += len(chunk)
            return
        room = self.max_frame_bytes - len(self._buf)
        if len(chunk) <= room:
            self._buf += chunk
            return
        self._overflow = len(self._buf) + len(chunk)
        self._buf.clear()
        # nbytes is the limit + 1 (how much was seen when the frame was cut), not the final
        # length, so that the report does not depend on how the stream was split into reads.
        out.append(
            Garbage(
                reason=f"frame longer than {self.max_frame_bytes} bytes discarded (no line end)",
                reason_vi=f"Dữ liệu quá dài (trên {self.max_frame_bytes} byte), đã bỏ qua",
                nbytes=self.max_frame_bytes + 1,
            )
        )

    def _end_frame(self, out: list[bytes | Garbage]) -> None:
        if self._overflow:
            self._overflow = 0
            return
        if self._buf:
            out.append(bytes(self._buf))
            self._buf.clear()


def clean_text(text: str) -> str:
    """NFC-normalise, drop NUL/control/format characters (keeping none), strip outer spaces."""
    normalised = unicodedata.normalize("NFC", text)
    kept = "".join(ch for ch in normalised if unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co"))
    return kept.strip()


def decode_frame(raw: bytes) -> Payload | Garbage | None:
    """Decode one raw frame: UTF-8 (a BOM is dropped) then :func:`clean_text`.

    Returns ``None`` for a frame that is empty once cleaned (e.g. only NULs).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Garbage(
            reason=f"frame of {len(raw)} bytes is not UTF-8 (bad byte at offset {exc.start})",
            reason_vi="Dữ liệu quét không đọc được (không phải UTF-8)",
            nbytes=len(raw),
        )
    cleaned = clean_text(text)
    return Payload(cleaned) if cleaned else None


class Deduplicator:
    """Drop a payload equal to the previous one seen within ``window_s`` seconds.

    The window slides: a reader that keeps repeating while a card lies on it yields one payload.
    """

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if window_s < 0:
            raise ValueError("dedup window must be >= 0 seconds")
        self.window_s = window_s
        self._clock = clock
        self._last: str | None = None
        self._last_seen = 0.0

    def accept(self, text: str) -> bool:
        now = self._clock()
        repeat = text == self._last and (now - self._last_seen) <= self.window_s
        self._last = text
        self._last_seen = now
        return not repeat

    def reset(self) -> None:
        self._last = None


class FramePipeline:
    """Framer + decoder + de-duplicator: bytes in, :data:`FrameEvent` out."""

    def __init__(
        self,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        dedup_window_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.framer = LineFramer(max_frame_bytes)
        self.dedup = Deduplicator(dedup_window_s, clock)
        self.duplicates = 0

    def feed(self, data: bytes) -> list[FrameEvent]:
        return self._process(self.framer.feed(data))

    def flush(self) -> list[FrameEvent]:
        return self._process(self.framer.flush())

    def feed_text(self, text: str) -> list[FrameEvent]:
        """A whole payload handed over as text (simulators): cleaned and de-duplicated."""
        cleaned = clean_text(text)
        return self._process([]) if not cleaned else self._accept(Payload(cleaned))

    def _process(self, frames: list[bytes | Garbage]) -> list[FrameEvent]:
        events: list[FrameEvent] = []
        for frame in frames:
            if isinstance(frame, Garbage):
                events.append(frame)
                continue
            decoded = decode_frame(frame)
            if isinstance(decoded, Garbage):
                events.append(decoded)
            elif decoded is not None:
                events.extend(self._accept(decoded))
        return events

    def _accept(self, payload: Payload) -> list[FrameEvent]:
        if self.dedup.accept(payload.text):
            return [payload]
        self.duplicates += 1
        return []
