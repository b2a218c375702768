"""The real firmware checked against the written protocol, not against hw/iobus.py: a raw pyserial
client with its own COBS framing (PyPI cobs) and its own CRC-16/CCITT-FALSE."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import serial
from cobs import cobs

from hil.iobsil import SilBoard

REQ, RSP, EVT, ACK = 1, 2, 3, 4


def crc16(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def encode(kind: int, msgid: int, payload: bytes) -> bytes:
    body = struct.pack(">BBH", 1, kind, msgid) + payload
    framed: bytes = cobs.encode(body + struct.pack(">H", crc16(body)))
    return framed + b"\x00"


class RawClient:
    def __init__(self, port: str) -> None:
        self.ser = serial.Serial(port, 115200, timeout=0.05)
        self.buf = b""
        self.msgid = 0

    def send(self, kind: int, msgid: int, payload: bytes = b"") -> None:
        self.ser.write(encode(kind, msgid, payload))

    def frames(self, seconds: float) -> list[tuple[int, int, dict[str, Any]]]:
        out: list[tuple[int, int, dict[str, Any]]] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.buf += self.ser.read(256)
            while b"\x00" in self.buf:
                raw, self.buf = self.buf.split(b"\x00", 1)
                body: bytes = cobs.decode(raw)
                assert crc16(body[:-2]) == struct.unpack(">H", body[-2:])[0]
                ver, kind, msgid = struct.unpack(">BBH", body[:4])
                assert ver == 1 and 1 <= msgid <= 65535
                out.append((kind, msgid, json.loads(body[4:-2]) if body[4:-2] else {}))
        return out

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        self.msgid += 1
        payload = json.dumps({"op": op, **args}, separators=(",", ":")).encode()
        for _ in range(40):
            self.send(REQ, self.msgid, payload)
            for kind, msgid, body in self.frames(0.25):
                if kind == RSP and msgid == self.msgid:
                    return body
        raise AssertionError(f"no answer to {op}")


@pytest.fixture
def board(tmp_path: Path) -> Iterator[tuple[SilBoard, RawClient]]:
    with SilBoard(tmp_path / "board") as sil:
        client = RawClient(str(sil.link))
        yield sil, client
        client.ser.close()


def test_crc_check_value() -> None:
    assert crc16(b"123456789") == 0x29B1


def test_hello_status_and_tamper_event_resent_until_acked(board: tuple[SilBoard, RawClient]) -> None:
    sil, client = board
    hello = client.request("hello")
    assert hello["ok"] is True and hello["proto"] == 1 and hello["board"] == "unix"
    assert client.request("status")["tamper"] == "closed"
    assert client.request("nope") == {"ok": False, "error": "unknown operation 'nope'"}
    sil.set_inputs(tamper="open")
    seen: list[int] = []
    deadline = time.monotonic() + 10
    while len(seen) < 3 and time.monotonic() < deadline:  # not acked: the same EVT comes again
        seen += [m for k, m, b in client.frames(0.2) if k == EVT and b.get("ev") == "tamper"]
    assert len(seen) >= 3 and len(set(seen)) == 1
    client.send(ACK, seen[0])
    client.frames(0.3)  # a resend may already be on the wire
    later = [m for k, m, b in client.frames(1.5) if k == EVT and b.get("ev") == "tamper"]
    assert later == []  # acknowledged: no more resends
    assert client.request("status")["tamper_latched"] is True
