"""Serial QR scanner: framing core (unit + hypothesis), simulated scanner, and a real pty."""

from __future__ import annotations

import itertools
import os
import threading
import time
import tty
import unicodedata
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw.scanner import QrScanner, ScannerState, ScannerStatus, SerialQrScanner, SimulatedQrScanner
from hw.serialframe import Deduplicator, FramePipeline, Garbage, LineFramer, Payload, clean_text
from kiosk_ui.parsers import parse_cccd

CARD = "001188012345|123456789|Nguyễn Thị Minh Khai|15031988|Nữ|Số 12 Khương Đình, Hà Nội|10052021"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- framing core


def frames(data: bytes, max_frame_bytes: int = 64) -> list[bytes | Garbage]:
    framer = LineFramer(max_frame_bytes)
    return framer.feed(data) + framer.flush()


def test_cr_lf_and_crlf_all_end_frames() -> None:
    assert frames(b"a\rb\nc\r\nd\n\r\r\ne") == [b"a", b"b", b"c", b"d", b"e"]


def test_an_over_long_frame_is_reported_once_and_the_next_one_survives() -> None:
    out = frames(b"x" * 200 + b"\r\nok\r\n", max_frame_bytes=64)
    assert len(out) == 2 and isinstance(out[0], Garbage) and out[1] == b"ok"
    assert out[0].nbytes == 65 and "64" in out[0].reason and out[0].reason_vi


def test_invalid_utf8_is_garbage_not_a_crash() -> None:
    pipe = FramePipeline()
    events = pipe.feed(b"\xff\xfe\xc3(\r\n" + CARD.encode() + b"\r\n")
    assert isinstance(events[0], Garbage) and "UTF-8" in events[0].reason
    assert events[1] == Payload(CARD)


def test_cleaning_normalises_to_nfc_and_strips_controls() -> None:
    decomposed = unicodedata.normalize("NFD", "Nguyễn") + "\x00\x1b\u200b\ufeff "
    assert clean_text(" \x00" + decomposed) == "Nguyễn"


def test_dedup_window_slides_and_then_expires() -> None:
    clock = FakeClock()
    dedup = Deduplicator(2.0, clock)
    assert dedup.accept("a")
    clock.now += 1.5
    assert not dedup.accept("a")
    clock.now += 1.5  # 3 s after the first, 1.5 s after the repeat: still the same card
    assert not dedup.accept("a")
    clock.now += 2.5
    assert dedup.accept("a")
    assert dedup.accept("b") and dedup.accept("a")


def _run(chunks: list[bytes], max_frame_bytes: int) -> list[object]:
    pipe = FramePipeline(max_frame_bytes=max_frame_bytes, dedup_window_s=0.0, clock=FakeClock())
    events: list[object] = []
    for chunk in chunks:
        events += pipe.feed(chunk)
    return events


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


stream_bytes = st.one_of(
    st.binary(max_size=400),
    st.lists(
        st.sampled_from([b"\r", b"\n", b"\r\n", b"\x00", b"\xff", CARD.encode(), "Nữ".encode(), b"x" * 40]),
        max_size=30,
    ).map(b"".join),
)


@settings(max_examples=400)
@given(stream_bytes, st.lists(st.integers(min_value=0), max_size=20), st.integers(min_value=1, max_value=120))
def test_frames_do_not_depend_on_how_the_stream_was_split(data: bytes, cuts: list[int], limit: int) -> None:
    whole = _run([data], limit)
    assert _run(_split(data, cuts), limit) == whole
    assert _run([bytes([b]) for b in data], limit) == whole
    for event in whole:
        if isinstance(event, Payload):
            assert event.text and event.text == clean_text(event.text)
            assert len(event.text.encode()) <= limit


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash_the_pipeline(data: bytes) -> None:
    pipe = FramePipeline(max_frame_bytes=256)
    for event in pipe.feed(data) + pipe.flush():
        assert isinstance(event, (Payload, Garbage))


# ---------------------------------------------------------------- simulated scanner


class Recorder:
    def __init__(self) -> None:
        self.payloads: list[str] = []
        self.states: list[ScannerState] = []
        self.garbage: list[Garbage] = []
        self.lock = threading.Lock()

    def start(self, scanner: QrScanner) -> None:
        scanner.start(self._payload, self._state, self._garbage)

    def _payload(self, text: str) -> None:
        with self.lock:
            self.payloads.append(text)

    def _state(self, state: ScannerState) -> None:
        with self.lock:
            self.states.append(state)

    def _garbage(self, report: Garbage) -> None:
        with self.lock:
            self.garbage.append(report)

    def statuses(self) -> list[ScannerStatus]:
        with self.lock:
            return [s.status for s in self.states]


def wait_for(condition: Callable[[], Any], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_simulated_scanner_cleans_dedups_and_reports_state() -> None:
    clock = FakeClock()
    scanner = SimulatedQrScanner(clock=clock)
    rec = Recorder()
    rec.start(scanner)
    assert scanner.state.connected and rec.statuses() == [ScannerStatus.CONNECTED]
    scanner.feed("\x00" + CARD + "\r\n")
    scanner.feed(CARD)
    assert rec.payloads == [CARD] and scanner.stats.duplicates == 1
    scanner.feed_bytes(b"\xff\xfe garbage\r\n")
    assert len(rec.garbage) == 1 and scanner.stats.garbage == 1
    scanner.unplug()
    scanner.feed("000.00.01.H26-260930-0012")  # nothing arrives from an unplugged reader
    scanner.plug()
    scanner.fail("USB overcurrent")
    assert rec.statuses() == [
        ScannerStatus.CONNECTED,
        ScannerStatus.DISCONNECTED,
        ScannerStatus.CONNECTED,
        ScannerStatus.ERROR,
    ]
    assert rec.states[-1].message == "USB overcurrent" and rec.states[-1].message_vi
    assert rec.payloads == [CARD]


def test_a_raising_callback_does_not_stop_the_scanner() -> None:
    scanner = SimulatedQrScanner()
    seen: list[str] = []

    def bad(text: str) -> None:
        seen.append(text)
        raise RuntimeError("handler bug")

    scanner.start(bad, lambda state: None)
    scanner.feed("a")
    scanner.feed("b")
    assert seen == ["a", "b"]


# ---------------------------------------------------------------- real pty


class Pty:
    """A pseudo-terminal standing in for a USB-CDC scanner; ``path`` is a re-pointable symlink."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master = -1
        self.plug()

    def plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        name = os.ttyname(slave)
        os.close(slave)  # the scanner opens it by path, like a real device node
        self.master = master
        tmp = self.link.with_suffix(".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(name)
        os.replace(tmp, self.link)

    def unplug(self) -> None:
        os.close(self.master)
        self.master = -1

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        if self.master >= 0:
            self.unplug()


@pytest.fixture
def pty_port(tmp_path: Path) -> Iterator[Pty]:
    port = Pty(tmp_path / "ttyACM-scanner")
    try:
        yield port
    finally:
        port.close()


@pytest.fixture
def serial_scanner(pty_port: Pty) -> Iterator[tuple[SerialQrScanner, Recorder]]:
    scanner = SerialQrScanner(
        str(pty_port.link), inter_char_timeout=0.05, reconnect_min_s=0.05, reconnect_max_s=0.2
    )
    rec = Recorder()
    rec.start(scanner)
    try:
        wait_for(lambda: scanner.state.connected)
        yield scanner, rec
    finally:
        scanner.stop()


@pytest.mark.timeout(30)
def test_a_card_with_nul_bytes_read_twice_gives_one_payload(
    serial_scanner: tuple[SerialQrScanner, Recorder], pty_port: Pty
) -> None:
    scanner, rec = serial_scanner
    noisy = b"\x00" + CARD.encode().replace(b"|", b"|\x00") + b"\x00\r\n"
    pty_port.send(noisy[:20])
    time.sleep(0.01)
    pty_port.send(noisy[20:] + noisy)  # the reader repeats the card
    wait_for(lambda: rec.payloads)
    time.sleep(0.3)
    assert rec.payloads == [CARD]
    assert scanner.stats.payloads == 1 and scanner.stats.duplicates == 1
    person = parse_cccd(rec.payloads[0], today=date(2026, 11, 22))
    assert person.masked_id == "001*****2345" and person.name == "Nguyễn Thị Minh Khai"


@pytest.mark.timeout(30)
def test_a_frame_without_terminator_ends_when_the_line_goes_quiet(
    serial_scanner: tuple[SerialQrScanner, Recorder], pty_port: Pty
) -> None:
    _, rec = serial_scanner
    pty_port.send(b"000.00.01.H26-260930-0012")
    wait_for(lambda: rec.payloads)
    assert rec.payloads == ["000.00.01.H26-260930-0012"]


@pytest.mark.timeout(30)
def test_garbage_is_reported_and_reading_goes_on(
    serial_scanner: tuple[SerialQrScanner, Recorder], pty_port: Pty
) -> None:
    scanner, rec = serial_scanner
    pty_port.send(b"\xc3\x28\xa0\xa1\xff\r\n" + b"#" * 5000 + b"\r\n")
    wait_for(lambda: len(rec.garbage) >= 2)
    pty_port.send(CARD.encode() + b"\n")
    wait_for(lambda: rec.payloads)
    assert rec.payloads == [CARD] and scanner.state.connected
    assert {"UTF-8" in g.reason or "longer" in g.reason for g in rec.garbage} == {True}
    assert all(CARD not in g.reason for g in rec.garbage)


@pytest.mark.timeout(30)
def test_unplug_reports_disconnected_and_a_new_port_at_the_same_path_reconnects(
    serial_scanner: tuple[SerialQrScanner, Recorder], pty_port: Pty
) -> None:
    scanner, rec = serial_scanner
    pty_port.send(b"first\r\n")
    wait_for(lambda: rec.payloads == ["first"])
    pty_port.unplug()
    wait_for(lambda: scanner.state.status is ScannerStatus.DISCONNECTED)
    time.sleep(0.3)  # a few reconnect attempts while nothing is there: no crash, no state spam
    pty_port.plug()
    wait_for(lambda: scanner.state.connected)
    pty_port.send(b"second\r\n")
    wait_for(lambda: rec.payloads == ["first", "second"])
    # one callback per change, however many reconnect attempts failed in between
    assert rec.statuses() == [ScannerStatus.CONNECTED, ScannerStatus.DISCONNECTED, ScannerStatus.CONNECTED]
    assert scanner.stats.reconnects == 1


@pytest.mark.timeout(30)
def test_a_port_that_is_not_there_yet_is_waited_for(tmp_path: Path) -> None:
    link = tmp_path / "later"
    scanner = SerialQrScanner(str(link), reconnect_min_s=0.05, reconnect_max_s=0.1)
    rec = Recorder()
    rec.start(scanner)
    port: Pty | None = None
    try:
        wait_for(lambda: rec.states)
        assert scanner.state.status is ScannerStatus.DISCONNECTED and "later" in scanner.state.message
        port = Pty(link)
        wait_for(lambda: scanner.state.connected)
    finally:
        scanner.stop()
        if port is not None:
            port.close()
    assert scanner.state.status is ScannerStatus.DISCONNECTED  # stop() reports it


@pytest.mark.timeout(30)
def test_the_reader_thread_idles_without_spinning(serial_scanner: tuple[SerialQrScanner, Recorder]) -> None:
    cpu_before = time.process_time()
    time.sleep(1.0)
    assert time.process_time() - cpu_before < 0.2, "reader thread busy-loops while idle"


@pytest.mark.timeout(30)
def test_pyserial_loop_url_works() -> None:
    opened: list[Any] = []

    def opener(url: str, baudrate: int, timeout: float) -> Any:
        import serial

        port = serial.serial_for_url(url, baudrate=baudrate, timeout=timeout)
        opened.append(port)
        return port

    scanner = SerialQrScanner("loop://", inter_char_timeout=0.05, opener=opener)
    rec = Recorder()
    rec.start(scanner)
    try:
        wait_for(lambda: opened and scanner.state.connected)
        opened[0].write("Mã: 000.00.01.H26-260930-0012\r\n".encode())
        wait_for(lambda: rec.payloads)
    finally:
        scanner.stop()
    assert rec.payloads == ["Mã: 000.00.01.H26-260930-0012"]
