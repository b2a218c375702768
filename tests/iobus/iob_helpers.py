"""A scripted board on a real pty, speaking the frame format with the host's own codec.

It stands for the firmware in driver tests that need to misbehave on purpose (drop requests,
repeat events); the real firmware is exercised through the software-in-the-loop tests.
"""

from __future__ import annotations

import os
import select
import threading
import time
import tty
from collections.abc import Callable
from typing import Any

from hw.iobus_frame import Frame, FrameCodec, FrameDecoder, FrameType

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class ScriptedBoard:
    def __init__(self) -> None:
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        self._slave = slave  # kept open so the pty survives between host opens
        self.codec = FrameCodec()
        self.decoder = FrameDecoder(self.codec)
        self.requests: list[Frame] = []
        self.acks: list[int] = []
        self.drop_next = 0
        self.fixed_ticks: int | None = None
        self._t0 = time.monotonic()
        self.handlers: dict[str, Handler] = {
            "hello": lambda _r: {
                "ok": True,
                "fw": "9.9.9",
                "proto": 1,
                "board": "scripted",
                "host_reset": None,
            },
            "hb": lambda _r: {"ok": True, "t": self.ticks},
            "status": lambda _r: {"ok": True, "temp_c": 30.5, "phase": "green"},
        }
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def ticks(self) -> int:
        """The board's clock in ms: running with real time unless ``fixed_ticks`` freezes it."""
        if self.fixed_ticks is not None:
            return self.fixed_ticks
        return int((time.monotonic() - self._t0) * 1000)

    def send(self, frame: Frame) -> None:
        os.write(self.master, self.codec.encode(frame))

    def send_raw(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        os.close(self.master)
        os.close(self._slave)

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            for frame in self.decoder.feed(data):
                if frame.type is FrameType.ACK:
                    self.acks.append(frame.msgid)
                    continue
                self.requests.append(frame)
                if self.drop_next > 0:
                    self.drop_next -= 1
                    continue
                op = str(frame.payload.get("op"))
                handler = self.handlers.get(op)
                reply = (
                    handler(frame.payload) if handler else {"ok": False, "error": f"unknown operation '{op}'"}
                )
                self.send(Frame(FrameType.RSP, frame.msgid, reply))
