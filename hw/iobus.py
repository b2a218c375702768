"""The cabinet I/O board (RP2040 / ESP32 running ``firmware/``), host side: real and simulated.

One interface, :class:`IoBoard`, with two implementations side by side:

- :class:`SerialIoBoard` speaks the framed protocol of ``docs/iobus.md`` over a serial port
  (``/dev/serial0`` on a Pi's UART, ``/dev/ttyACM1``, a pty path of the software-in-the-loop board
  or any pyserial URL). Requests are retried with the same message id (the board answers a repeat
  from its cache, so nothing runs twice); every event from the board is acknowledged and delivered
  once. It reconnects with back-off when the port goes away.
- :class:`SimulatedIoBoard` is a board in memory for the simulator and for devices without one:
  same operations, same events, driven by code (``set_inputs``).

Events reach ``on_event`` on the reader thread as :class:`BoardEvent`; the callback must return
quickly. Board times (``t``, milliseconds of the board's monotonic clock) are mapped to the host's
wall clock from the heartbeat exchanges (:class:`ClockMap`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from hw.iobus_frame import Frame, FrameCodec, FrameDecoder, FrameType

log = logging.getLogger(__name__)

TICKS_PERIOD = 1 << 30
"""MicroPython's ``ticks_ms`` wraps at 2**30 (``ticks_diff`` handles it on the board)."""
FIRMWARE_PROTO = 1


class IoBoardError(Exception):
    """Base error of the I/O board driver; the message is meant for a technician."""


class BoardUnavailable(IoBoardError):
    """The board did not answer (unplugged, not flashed, wrong port, wrong wiring)."""


class BoardRefused(IoBoardError):
    """The board answered ``ok: false``; the message is the board's sentence."""


@dataclass(frozen=True)
class BoardEvent:
    """One event from the board: ``kind`` as on the wire (``tamper``, ``phase`` …)."""

    kind: str
    data: dict[str, Any]
    board_t: int | None
    host_ts: float | None
    """The board time mapped to the host's wall clock (None until a heartbeat mapped it)."""


EventCallback = Callable[[BoardEvent], None]


class IoBoard(Protocol):
    """What the agent and the technician's tools need from a cabinet I/O board."""

    @property
    def connected(self) -> bool: ...

    def start(self, on_event: EventCallback) -> None: ...

    def stop(self) -> None: ...

    def request(self, op: str, **args: Any) -> dict[str, Any]: ...

    def heartbeat(self) -> dict[str, Any]: ...

    def host_time(self, board_t: int) -> float | None: ...

    def stats(self) -> dict[str, Any]: ...


class ClockMap:
    """Board ticks → host wall clock, from request/response pairs (NTP-style, least delay wins).

    The board's 30-bit tick counter wraps about every 12.4 days; each reading is placed within half
    a period of the last heartbeat's, so a mapping stays right across a wrap.
    """

    def __init__(self, keep: int = 16) -> None:
        self.keep = keep
        self._samples: list[tuple[float, float]] = []  # (round trip s, offset s)
        self._last: int | None = None  # unwrapped ticks of the last heartbeat

    def unwrap(self, raw: int) -> int:
        """``raw`` ticks placed on the unwrapped time line nearest the last heartbeat."""
        if self._last is None:
            return raw % TICKS_PERIOD
        delta = (raw - self._last) % TICKS_PERIOD
        if delta >= TICKS_PERIOD // 2:
            delta -= TICKS_PERIOD
        return self._last + delta

    def add(self, sent: float, received: float, board_t: int) -> None:
        ticks = self.unwrap(board_t)
        if self._last is not None and ticks < self._last - 1000:
            self.reset()  # the board's clock went back: it restarted
            ticks = self.unwrap(board_t)
        self._last = ticks
        self._samples.append((received - sent, (sent + received) / 2 - ticks / 1000.0))
        del self._samples[: -self.keep]

    def reset(self) -> None:
        """The board rebooted: its clock started again."""
        self._samples.clear()
        self._last = None

    @property
    def offset(self) -> float | None:
        return min(self._samples)[1] if self._samples else None

    def to_host(self, board_t: int) -> float | None:
        offset = self.offset
        return None if offset is None else self.unwrap(board_t) / 1000.0 + offset


class _Port(Protocol):
    """What the driver needs from a pyserial port."""

    @property
    def in_waiting(self) -> int: ...

    def read(self, size: int = 1) -> bytes: ...

    def write(self, data: bytes) -> int | None: ...

    def close(self) -> None: ...


def _open_serial(url: str, baudrate: int, timeout: float) -> _Port:
    import serial  # pyserial, imported here so that importing hw.iobus stays cheap

    port: _Port = serial.serial_for_url(url, baudrate=baudrate, timeout=timeout)
    return port


def describe_open_error(port: str, exc: BaseException) -> str:
    """A sentence for the technician about why ``port`` cannot be opened."""
    code = getattr(exc, "errno", None)
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return f"{port} is not there: is the I/O board's cable plugged in and the UART enabled?"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied on {port}: add the agent's user to the 'dialout' group"
    if code == errno.EBUSY:
        return f"{port} is busy: another program (a serial console, mpremote) holds it"
    return f"cannot open {port}: {exc}"


class _Pending:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply: dict[str, Any] | None = None


@dataclass
class LinkStats:
    requests: int = 0
    retries: int = 0
    timeouts: int = 0
    events: int = 0
    duplicate_events: int = 0
    reconnects: int = 0
    last_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class SerialIoBoard:
    """The real board on a serial port (see the module docstring)."""

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 115200,
        retry_s: float = 0.25,
        tries: int = 4,
        reconnect_min_s: float = 0.2,
        reconnect_max_s: float = 5.0,
        opener: Callable[[str, int, float], _Port] = _open_serial,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.retry_s = retry_s
        self.tries = tries
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self._opener = opener
        self._clock = clock
        self._codec = FrameCodec()
        self._decoder = FrameDecoder(self._codec)
        self.clock_map = ClockMap()
        self._link = LinkStats()
        self._lock = threading.Lock()  # guards _port, _pending, _next_id
        self._write_lock = threading.Lock()
        self._port: _Port | None = None
        self._connected = threading.Event()
        self._pending: dict[int, _Pending] = {}
        self._next_id = 1
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._on_event: EventCallback | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self, on_event: EventCallback) -> None:
        if self._thread is not None:
            raise RuntimeError("I/O board driver already started")
        self._on_event = on_event
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="iobus", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(2.0)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- requests -----------------------------------------------------------------------------

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Send ``op`` and wait for the answer; BoardUnavailable after ``tries`` tries."""
        pending = _Pending()
        with self._lock:
            msgid = self._next_id
            self._next_id = self._next_id % 0xFFFF + 1
            self._pending[msgid] = pending
        data = self._codec.encode(Frame(FrameType.REQ, msgid, {"op": op, **args}))
        self._link.requests += 1
        try:
            for attempt in range(self.tries):
                if attempt:
                    self._link.retries += 1
                if not self._write(data) and not self._connected.wait(self.retry_s):
                    continue
                if pending.done.wait(self.retry_s):
                    break
        finally:
            with self._lock:
                self._pending.pop(msgid, None)
        reply = pending.reply
        if reply is None:
            self._link.timeouts += 1
            raise BoardUnavailable(
                f"the I/O board on {self.port} did not answer '{op}' "
                f"({self.tries} tries, {self.retry_s:.2f} s apart)"
            )
        if reply.get("ok") is not True:
            raise BoardRefused(str(reply.get("error") or f"the I/O board refused '{op}'"))
        return reply

    def heartbeat(self) -> dict[str, Any]:
        sent = self._clock()
        reply = self.request("hb")
        received = self._clock()
        board_t = reply.get("t")
        if isinstance(board_t, int):
            self.clock_map.add(sent, received, board_t)
        return reply

    def host_time(self, board_t: int) -> float | None:
        return self.clock_map.to_host(board_t)

    def stats(self) -> dict[str, Any]:
        link = self._link
        return {
            "port": self.port,
            "connected": self.connected,
            "requests": link.requests,
            "retries": link.retries,
            "timeouts": link.timeouts,
            "events": link.events,
            "duplicate_events": link.duplicate_events,
            "reconnects": link.reconnects,
            "frames": self._decoder.stats.frames,
            "dropped": dict(self._decoder.stats.dropped),
            "last_error": link.last_error,
        }

    # -- I/O thread ---------------------------------------------------------------------------

    def _write(self, data: bytes) -> bool:
        with self._lock:
            port = self._port
        if port is None:
            return False
        try:
            with self._write_lock:
                port.write(data)
        except OSError as exc:
            self._link.last_error = f"write to {self.port} failed: {exc}"
            return False
        return True

    def _run(self) -> None:
        delay = self.reconnect_min_s
        ever = False
        while not self._stop.is_set():
            try:
                port = self._opener(self.port, self.baudrate, 0.05)
            except (OSError, ValueError) as exc:  # SerialException is an OSError
                self._link.last_error = describe_open_error(self.port, exc)
                if self._stop.wait(delay):
                    break
                delay = min(delay * 2, self.reconnect_max_s)
                continue
            delay = self.reconnect_min_s
            if ever:
                self._link.reconnects += 1
            ever = True
            with self._lock:
                self._port = port
            self._connected.set()
            try:
                self._read_loop(port)
            except OSError as exc:
                self._link.last_error = f"{self.port} went away: {exc}"
            finally:
                self._connected.clear()
                with self._lock:
                    self._port = None
                with contextlib.suppress(OSError):
                    port.close()

    def _read_loop(self, port: _Port) -> None:
        while not self._stop.is_set():
            data = port.read(max(1, port.in_waiting))
            if data:
                for frame in self._decoder.feed(data):
                    self._handle(frame)

    def _handle(self, frame: Frame) -> None:
        if frame.type is FrameType.RSP:
            with self._lock:
                pending = self._pending.get(frame.msgid)
            if pending is not None and not pending.done.is_set():
                pending.reply = frame.payload
                pending.done.set()
            return
        if frame.type is not FrameType.EVT:
            return  # a host-only frame type echoed back: ignore
        self._write(self._codec.encode(Frame(FrameType.ACK, frame.msgid, {})))
        if frame.msgid in self._seen:
            self._link.duplicate_events += 1
            return
        self._seen[frame.msgid] = None
        while len(self._seen) > 64:
            self._seen.popitem(last=False)
        self._link.events += 1
        self._deliver(frame.payload)

    def _deliver(self, payload: dict[str, Any]) -> None:
        kind = str(payload.get("ev", ""))
        board_t = payload.get("t") if isinstance(payload.get("t"), int) else None
        data = {k: v for k, v in payload.items() if k not in ("ev", "t")}
        event = BoardEvent(kind, data, board_t, None if board_t is None else self.host_time(board_t))
        callback = self._on_event
        if callback is None:
            return
        try:
            callback(event)
        except Exception:  # the driver's boundary: a failing consumer must not stop the reader
            log.exception("I/O board event handler failed on a '%s' event", kind)


# -- simulated ------------------------------------------------------------------------------------

DEFAULT_SIM_INPUTS: dict[str, Any] = {
    "tamper": "closed",
    "temp_c": 32.0,
    "rh": 55.0,
    "battery_v": 13.2,
    "phase": "green",
}


class SimulatedIoBoard:
    """A board in memory (simulator, devices without a board in the demo).

    Answers the same operations as the firmware with the same shapes and raises the same events
    when its inputs change (``set_inputs``); it does not model the host watchdog's power cycle
    (the software-in-the-loop board does: ``hil/iobsil.py``).
    """

    OVERHEAT_C = 60.0
    ON_BATTERY_V = 11.5

    def __init__(self, *, firmware: str = "1.0.0-sim", clock: Callable[[], float] = time.monotonic) -> None:
        self.firmware = firmware
        self._clock = clock
        self._t0 = clock()
        self.inputs = dict(DEFAULT_SIM_INPUTS)
        self.latched = False
        self.overheated = False
        self.heartbeats = 0
        self.host_reset: dict[str, Any] | None = None
        self.boot = 1
        self._on_event: EventCallback | None = None
        self._running = False

    @property
    def connected(self) -> bool:
        return self._running

    def _t(self) -> int:
        return int((self._clock() - self._t0) * 1000) % TICKS_PERIOD

    def start(self, on_event: EventCallback) -> None:
        self._on_event = on_event
        self._running = True

    def stop(self) -> None:
        self._running = False

    def install(self, firmware: str) -> None:
        """A new firmware was flashed: the board restarts running it."""
        self.firmware = firmware
        self.boot += 1
        self._t0 = self._clock()

    def heartbeat(self) -> dict[str, Any]:
        return self.request("hb")

    def host_time(self, board_t: int) -> float:
        return time.time() - (self._t() - board_t) / 1000.0

    def stats(self) -> dict[str, Any]:
        return {"port": "simulated", "connected": self._running, "heartbeats": self.heartbeats}

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        if not self._running:
            raise BoardUnavailable("the simulated I/O board is stopped")
        if op == "hello":
            return {
                "ok": True,
                "fw": self.firmware,
                "proto": FIRMWARE_PROTO,
                "board": "sim",
                "uptime_ms": self._t(),
                "boot": self.boot,
                "host_reset": self.host_reset,
            }
        if op == "hb":
            self.heartbeats += 1
            return {"ok": True, "t": self._t(), "boot": self.boot}
        if op == "status":
            return {"ok": True, **self._status()}
        if op == "ack_tamper":
            self.latched = self.inputs["tamper"] == "open"
            return {"ok": True, "tamper_latched": self.latched}
        if op == "clear_reset":
            self.host_reset = None
            return {"ok": True}
        if op in ("config", "led", "wd_disarm"):
            return {"ok": True}
        raise BoardRefused(f"unknown operation '{op}'")

    def _status(self) -> dict[str, Any]:
        temp = float(self.inputs["temp_c"])
        volts = float(self.inputs["battery_v"])
        return {
            "t": self._t(),
            "temp_c": temp,
            "rh": float(self.inputs["rh"]),
            "sensor_ok": True,
            "fan": temp >= 45.0,
            "fan_rpm": 2400 if temp >= 45.0 else 0,
            "tamper": self.inputs["tamper"],
            "tamper_latched": self.latched,
            "battery_v": volts,
            "on_battery": volts < self.ON_BATTERY_V,
            "low_battery": volts < 11.0,
            "phase": self.inputs["phase"],
            "wd": {"armed": self.heartbeats > 0, "timeout_s": 60, "resets": 0},
        }

    def set_inputs(self, **inputs: Any) -> None:
        """Change inputs as the cabinet would; raises the events the firmware raises."""
        before = dict(self.inputs)
        self.inputs.update(inputs)
        now = self.inputs
        if now["tamper"] != before["tamper"]:
            if now["tamper"] == "open":
                self.latched = True
            self._emit("tamper", state=now["tamper"])
        if now["phase"] != before["phase"]:
            self._emit("phase", phase=now["phase"])
        temp = float(now["temp_c"])
        if temp >= self.OVERHEAT_C and not self.overheated:
            self.overheated = True
            self._emit("overheat", temp_c=temp)
        elif self.overheated and temp < self.OVERHEAT_C - 5:
            self.overheated = False
            self._emit("overheat_cleared", temp_c=temp)
        was = float(before["battery_v"]) < self.ON_BATTERY_V
        is_on = float(now["battery_v"]) < self.ON_BATTERY_V
        if was != is_on:
            self._emit("power", on_battery=is_on, battery_v=float(now["battery_v"]))

    def _emit(self, kind: str, **data: Any) -> None:
        t = self._t()
        if self._on_event is not None and self._running:
            self._on_event(BoardEvent(kind, data, t, self.host_time(t)))
