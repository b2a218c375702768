"""Frames: ``COBS(ver | type | msgid(2) | payload | crc(2)) 0x00`` (docs/iobus.md)."""

import json

from iob import VERSION
from iob import cobs
from iob.crc16 import crc16

REQ = 0x01
RSP = 0x02
EVT = 0x03
ACK = 0x04
MAX_BODY = 500
MAX_ENCODED = MAX_BODY + 3


def encode(kind, msgid, payload):
    """The bytes to write for one frame (``payload``: a dict, or None for an empty one)."""
    raw = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
    body = bytes((VERSION, kind)) + msgid.to_bytes(2, "big") + raw
    if len(body) + 2 > MAX_BODY:
        raise ValueError("frame too long")
    body += crc16(body).to_bytes(2, "big")
    return cobs.encode(body) + b"\x00"


class Decoder:
    """Bytes in any split → (kind, msgid, payload) tuples; bad frames are counted and dropped."""

    def __init__(self):
        self.buf = bytearray()
        self.overflow = False
        self.frames = 0
        self.dropped = 0

    def feed(self, data, out):
        """Append the frames found in ``data`` to the list ``out``."""
        for b in data:
            if b == 0:
                self._finish(out)
            elif self.overflow:
                continue
            elif len(self.buf) >= MAX_ENCODED:
                self.overflow = True
                self.buf = bytearray()
            else:
                self.buf.append(b)

    def _finish(self, out):
        encoded = self.buf
        overflow = self.overflow
        self.buf = bytearray()
        self.overflow = False
        if overflow:
            self.dropped += 1
            return
        if not encoded:
            return
        frame = check(cobs.decode(encoded))
        if frame is None:
            self.dropped += 1
        else:
            self.frames += 1
            out.append(frame)


def check(body):
    """A decoded body → (kind, msgid, payload dict), or None."""
    if body is None or len(body) < 6 or len(body) > MAX_BODY:
        return None
    if crc16(body[:-2]) != int.from_bytes(body[-2:], "big"):
        return None
    if body[0] != VERSION or body[1] not in (REQ, RSP, EVT, ACK):
        return None
    msgid = int.from_bytes(body[2:4], "big")
    if msgid == 0:
        return None
    raw = body[4:-2]
    payload = {}
    if raw:
        try:
            payload = json.loads(raw)
        except ValueError:
            return None
    if not isinstance(payload, dict):
        return None
    return (body[1], msgid, payload)
