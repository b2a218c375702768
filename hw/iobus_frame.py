"""Pure framing core of the cabinet I/O bus (host side); no I/O. Specification: docs/iobus.md.

On the wire a frame is ``COBS(body) 0x00`` and ``body = ver | type | msgid(2) | payload | crc(2)``
with a CRC-16/CCITT-FALSE over everything before it. :class:`FrameDecoder` takes bytes as they
arrive, in any split, and returns the frames it could check; everything else (garbage between
frames, truncated or corrupted frames, an unknown version) is counted and dropped, never raised:
the decoder resynchronises at the next 0x00. The firmware implements the same rules in
``firmware/`` (MicroPython); the two are kept in step by the tests in ``tests/iobus``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from cobs import cobs

from protocol.crc16 import Crc16

VERSION = 1
MAX_BODY = 500
"""Largest decoded body: 4 header bytes + payload (≤ 494) + 2 CRC bytes."""
MAX_PAYLOAD = MAX_BODY - 6
MAX_ENCODED = MAX_BODY + 3
"""COBS adds one byte per 254 (two here; the delimiter is not counted)."""


class FrameType(IntEnum):
    REQ = 0x01
    RSP = 0x02
    EVT = 0x03
    ACK = 0x04


class FrameError(ValueError):
    """A frame that cannot be built (too big, bad id)."""


@dataclass(frozen=True)
class Frame:
    type: FrameType
    msgid: int
    payload: dict[str, Any]


@dataclass
class DecodeStats:
    """Counters of what the decoder dropped, by reason (for telemetry and ``firmware status``)."""

    frames: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    @property
    def total_dropped(self) -> int:
        return sum(self.dropped.values())


class FrameCodec:
    """Builds bodies and checks them; one instance per link (it holds the CRC table)."""

    def __init__(self) -> None:
        self.crc = Crc16()

    def encode(self, frame: Frame) -> bytes:
        """The bytes to write, delimiter included."""
        if not 1 <= frame.msgid <= 0xFFFF:
            raise FrameError(f"message id {frame.msgid} is outside 1..65535")
        payload = (
            json.dumps(frame.payload, separators=(",", ":"), ensure_ascii=False).encode()
            if frame.payload or frame.type is not FrameType.ACK
            else b""
        )
        if len(payload) > MAX_PAYLOAD:
            raise FrameError(f"payload of {len(payload)} bytes is over the {MAX_PAYLOAD}-byte limit")
        body = bytes((VERSION, int(frame.type))) + frame.msgid.to_bytes(2, "big") + payload
        body += self.crc(body).to_bytes(2, "big")
        return bytes(cobs.encode(body)) + b"\x00"

    def check(self, body: bytes, stats: DecodeStats) -> Frame | None:
        """A decoded body → the frame, or None (reason counted in ``stats``)."""
        if len(body) < 6:
            stats.drop("short")
            return None
        if len(body) > MAX_BODY:
            stats.drop("long")
            return None
        if self.crc(body[:-2]) != int.from_bytes(body[-2:], "big"):
            stats.drop("crc")
            return None
        if body[0] != VERSION:
            stats.drop("version")
            return None
        try:
            kind = FrameType(body[1])
        except ValueError:
            stats.drop("type")
            return None
        msgid = int.from_bytes(body[2:4], "big")
        if msgid == 0:
            stats.drop("msgid")
            return None
        raw = body[4:-2]
        payload: Any = {}
        if raw:
            try:
                payload = json.loads(raw.decode())
            except (UnicodeDecodeError, ValueError):
                stats.drop("payload")
                return None
        if not isinstance(payload, dict):
            stats.drop("payload")
            return None
        stats.frames += 1
        return Frame(kind, msgid, payload)


class FrameDecoder:
    """Stream → frames. Bytes before the first delimiter are treated as a (probably cut) frame."""

    def __init__(self, codec: FrameCodec | None = None) -> None:
        self.codec = codec or FrameCodec()
        self.stats = DecodeStats()
        self._buf = bytearray()
        self._overflow = False

    def feed(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        start = 0
        while True:
            end = data.find(b"\x00", start)
            if end < 0:
                self._append(data[start:])
                return out
            self._append(data[start:end])
            frame = self._finish()
            if frame is not None:
                out.append(frame)
            start = end + 1

    def _append(self, chunk: bytes) -> None:
        if self._overflow or not chunk:
            return
        if len(self._buf) + len(chunk) > MAX_ENCODED:
            self._overflow = True
            self._buf.clear()
            return
        self._buf += chunk

    def _finish(self) -> Frame | None:
        overflow, encoded = self._overflow, bytes(self._buf)
        self._overflow = False
        self._buf.clear()
        if overflow:
            self.stats.drop("long")
            return None
        if not encoded:
            return None  # back-to-back delimiters: idle line, not an error
        try:
            body = bytes(cobs.decode(encoded))
        except cobs.DecodeError:
            self.stats.drop("cobs")
            return None
        return self.codec.check(body, self.stats)
