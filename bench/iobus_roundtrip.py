"""Host ↔ I/O board round trip over a pty: the real driver (hw/iobus.py) against the real firmware
(SIL board, MicroPython unix port), against a bare pyserial echo over a pty in the same run.

* ours: ``SerialIoBoard.request("hb")`` — frame built, COBS + CRC, written, the firmware decodes it,
  answers, the driver decodes and matches the answer; p50, p99 and requests/s, sequential.
* baseline: pyserial writes the same number of bytes to a pty whose other side echoes them back
  (a Python thread), and reads them back: the floor any protocol over this pty pays.

    python -m bench.iobus_roundtrip [--runs 3] [--requests 500]
"""

from __future__ import annotations

import os
import select
import statistics
import tempfile
import threading
import time
import tty
from pathlib import Path

from bench.common import parser, report
from hil.iobsil import SilBoard
from hw.iobus import SerialIoBoard
from hw.iobus_frame import Frame, FrameCodec, FrameType


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ours(link: Path, count: int) -> list[float]:
    driver = SerialIoBoard(str(link))
    driver.start(lambda _e: None)
    try:
        assert driver.wait_connected(10)
        driver.request("hb")
        times = []
        for _ in range(count):
            start = time.perf_counter()
            driver.request("hb")
            times.append(time.perf_counter() - start)
        return times
    finally:
        driver.stop()


def baseline(size: int, count: int) -> list[float]:
    import serial

    master, slave = os.openpty()
    tty.setraw(slave)
    stop = threading.Event()

    def echo() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                os.write(master, os.read(master, 4096))

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    port = serial.Serial(os.ttyname(slave), 115200, timeout=2)
    payload = b"x" * size
    times = []
    try:
        for _ in range(count):
            start = time.perf_counter()
            port.write(payload)
            got = b""
            while len(got) < size:
                got += port.read(size - len(got))
            times.append(time.perf_counter() - start)
    finally:
        stop.set()
        thread.join(1)
        port.close()
        os.close(master)
        os.close(slave)
    return times


def main() -> None:
    args = parser(__doc__ or "", runs=3)
    args.add_argument("--requests", type=int, default=500)
    opts = args.parse_args()
    size = len(FrameCodec().encode(Frame(FrameType.REQ, 1, {"op": "hb"})))
    ours_p50, ours_p99, ours_rate, base_p50, base_p99, base_rate = [], [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp, SilBoard(Path(tmp) / "board") as board:
        for _ in range(opts.runs):
            t = ours(board.link, opts.requests)
            ours_p50.append(statistics.median(t) * 1000)
            ours_p99.append(percentile(t, 0.99) * 1000)
            ours_rate.append(len(t) / sum(t))
            b = baseline(size, opts.requests)
            base_p50.append(statistics.median(b) * 1000)
            base_p99.append(percentile(b, 0.99) * 1000)
            base_rate.append(len(b) / sum(b))
    report("round trip p50", "ms", ours_p50, base_p50, baseline_name="pyserial echo", digits=3)
    report("round trip p99", "ms", ours_p99, base_p99, baseline_name="pyserial echo", digits=3)
    report("sustained exchanges", "/s", ours_rate, base_rate, baseline_name="pyserial echo", digits=0)


if __name__ == "__main__":
    main()
