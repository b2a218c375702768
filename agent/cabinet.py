"""The cabinet I/O board inside the agent: heartbeats, board events → contract events, sensors →
telemetry, firmware version → ``shadow/reported``, the signal phase → the camera role.

The decisions are pure (:func:`contract_event`, :class:`PhaseHistory`); :class:`CabinetMonitor`
is the I/O shell: one thread that (re)introduces itself to the board (``hello``: firmware
version, the reason of the last power-cycle the board did), pushes the thresholds (``config``),
sends heartbeats and reads the sensors. Board events arrive on the driver's thread and go straight
into the outbox. Specification of the board side: docs/iobus.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from agent.config import IobusSection
from hw.iobus import BoardEvent, IoBoard, IoBoardError, SerialIoBoard, SimulatedIoBoard
from protocol.timefmt import format_ts

log = logging.getLogger(__name__)

Emit = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class ContractEvent:
    kind: str
    data: dict[str, Any]


def _at(event: BoardEvent) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if event.board_t is not None:
        out["board_t_ms"] = event.board_t
    if event.host_ts is not None:
        out["at"] = format_ts(datetime.fromtimestamp(event.host_ts, timezone.utc))
    return out


def contract_event(event: BoardEvent) -> ContractEvent | None:
    """A board event → the contract's event (PROTOCOL.md, "Cabinet I/O board events"), or None."""
    d = event.data
    if event.kind == "tamper":
        return ContractEvent("cabinet.tamper", {"state": d.get("state"), **_at(event)})
    if event.kind == "overheat":
        return ContractEvent("cabinet.overheat", {"temp_c": d.get("temp_c"), **_at(event)})
    if event.kind == "overheat_cleared":
        return ContractEvent("cabinet.overheat_cleared", {"temp_c": d.get("temp_c"), **_at(event)})
    if event.kind == "fan_fault":
        return ContractEvent("cabinet.fan_fault", {"fan_rpm": d.get("fan_rpm"), **_at(event)})
    if event.kind == "sensor_fault":
        return ContractEvent("cabinet.sensor_fault", {"error": d.get("error"), **_at(event)})
    if event.kind == "power":
        kind = "power.on_battery" if d.get("on_battery") else "power.restored"
        return ContractEvent(kind, {"battery_v": d.get("battery_v"), **_at(event)})
    if event.kind == "low_battery":
        return ContractEvent("power.low_battery", {"battery_v": d.get("battery_v"), **_at(event)})
    if event.kind == "phase":
        return ContractEvent("signal.phase", {"phase": d.get("phase"), **_at(event)})
    return None


def status_metrics(status: dict[str, Any]) -> dict[str, Any]:
    """The board's ``status`` answer → telemetry role metrics (prefixed ``cabinet_``)."""
    return {
        "cabinet_temp_c": status.get("temp_c"),
        "cabinet_rh": status.get("rh"),
        "cabinet_fan": status.get("fan"),
        "cabinet_fan_rpm": status.get("fan_rpm"),
        "cabinet_tamper": status.get("tamper"),
        "cabinet_tamper_latched": status.get("tamper_latched"),
        "battery_v": status.get("battery_v"),
        "on_battery": status.get("on_battery"),
        "low_battery": status.get("low_battery"),
    }


class PhaseHistory:
    """The signal phase over time, from board-timestamped changes (host clock)."""

    def __init__(self, keep: int = 64) -> None:
        self._changes: deque[tuple[float, str]] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def record(self, at: float, phase: str) -> None:
        with self._lock:
            self._changes.append((at, phase))

    def snapshot(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self._changes)

    def phase_at(self, wall: float) -> str:
        return phase_at(self.snapshot(), wall)


def phase_at(changes: list[tuple[float, str]], wall: float) -> str:
    """The phase in force at ``wall``: the last change at or before it ("unknown" if none)."""
    current = "unknown"
    for at, phase in sorted(changes):
        if at > wall:
            break
        current = phase
    return current


class CabinetMonitor:
    """Runs the I/O board for the agent (see the module docstring)."""

    def __init__(
        self,
        board: IoBoard,
        config: Callable[[], IobusSection],
        emit: Emit,
        report_metrics: Callable[[dict[str, Any]], None],
        report_peripherals: Callable[[dict[str, Any]], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.board = board
        self._config = config
        self._emit = emit
        self._report_metrics = report_metrics
        self._report_peripherals = report_peripherals
        self._clock = clock
        self.phases = PhaseHistory()
        self.info: dict[str, Any] = {}
        self.last_status: dict[str, Any] = {}
        self.last_error: str | None = None
        self.heartbeats = 0
        self.events = 0
        self._introduced = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self.board.start(self.on_board_event)
        self._thread = threading.Thread(target=self._run, name="cabinet", daemon=True)
        self._thread.start()

    def stop(self, *, disarm: bool = False) -> None:
        """Stop; ``disarm`` (a deliberate shutdown) tells the board not to power-cycle us."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(3.0)
        if disarm:
            try:
                self.board.request("wd_disarm")
            except IoBoardError as exc:
                log.warning("I/O board: could not disarm the watchdog before stopping: %s", exc)
        self.board.stop()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def state(self) -> dict[str, Any]:
        """For the local API and ``provision selftest``."""
        return {
            "connected": self.board.connected and self._introduced,
            "firmware": self.info.get("fw"),
            "board": self.info.get("board"),
            "heartbeats": self.heartbeats,
            "events": self.events,
            "status": self.last_status,
            "last_error": self.last_error,
            "link": self.board.stats(),
        }

    def ack_tamper(self) -> dict[str, Any]:
        """A technician closed the cabinet: clear the board's tamper latch (AgentError if it cannot)."""
        from agent.errors import AgentError

        try:
            answer = self.board.request("ack_tamper")
        except IoBoardError as exc:
            raise AgentError(str(exc)) from exc
        self.last_status = {**self.last_status, "tamper_latched": answer.get("tamper_latched")}
        return {"tamper_latched": bool(answer.get("tamper_latched"))}

    def signal_phase(self) -> dict[str, Any]:
        changes = self.phases.snapshot()
        return {
            "phase": phase_at(changes, self._clock()),
            "changes": [[at, phase] for at, phase in changes],
        }

    # -- events (driver thread) ------------------------------------------------------------------

    def on_board_event(self, event: BoardEvent) -> None:
        self.events += 1
        out = contract_event(event)
        if out is None:
            log.info("I/O board: event '%s' has no contract event; ignored", event.kind)
            return
        if event.kind == "tamper":  # keep the last reading's tamper state current for selftest
            opened = event.data.get("state") == "open"
            latched = opened or bool(self.last_status.get("tamper_latched"))
            self.last_status = {
                **self.last_status,
                "tamper": event.data.get("state"),
                "tamper_latched": latched,
            }
        if out.kind == "signal.phase":
            at = event.host_ts if event.host_ts is not None else self._clock()
            self.phases.record(at, str(out.data.get("phase")))
        self._emit(out.kind, out.data)

    # -- thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        next_status = 0.0
        while not self._stop.is_set():
            cfg = self._config()
            try:
                if not self._introduced:
                    self._introduce(cfg)
                    next_status = 0.0
                beat = self.board.heartbeat()
                self.heartbeats += 1
                if self._restarted(beat):
                    log.warning("I/O board restarted (boot %s): introducing the agent again", beat["boot"])
                    self._introduce(cfg)
                    next_status = 0.0
                now = time.monotonic()
                if now >= next_status:
                    self._read_status()
                    next_status = now + cfg.status_s
                self.last_error = None
            except IoBoardError as exc:
                if self.last_error != str(exc):
                    log.warning("I/O board: %s", exc)
                self.last_error = str(exc)
                self._introduced = False
            self._stop.wait(cfg.heartbeat_s)

    def _restarted(self, beat: dict[str, Any]) -> bool:
        """The board rebooted since ``hello`` (a new firmware, a brown-out): it lost the thresholds."""
        boot, known = beat.get("boot"), self.info.get("boot")
        return isinstance(boot, int) and isinstance(known, int) and boot != known

    def firmware(self, timeout_s: float, stop: threading.Event) -> str | None:
        """The firmware version the board reports, waiting up to ``timeout_s`` for it to answer."""
        deadline = time.monotonic() + timeout_s
        while not self._introduced and time.monotonic() < deadline:
            if stop.wait(0.1):
                break
        fw = self.info.get("fw") if self._introduced else None
        return fw if isinstance(fw, str) else None

    def wait_firmware(self, version: str, timeout_s: float, stop: threading.Event) -> str | None:
        """Wait until the board answers, introduced, running ``version``: None, or why not (words)."""
        deadline = time.monotonic() + timeout_s
        while not (self._introduced and self.info.get("fw") == version):
            if stop.wait(0.1):
                return "the agent stopped while waiting for the I/O board"
            if time.monotonic() > deadline:
                if not self._introduced:
                    why = self.last_error or "no answer on its serial port"
                    return f"the I/O board did not come back within {timeout_s:.0f} s ({why})"
                return (
                    f"the I/O board runs firmware {self.info.get('fw')}, not {version}, "
                    f"{timeout_s:.0f} s after flashing"
                )
        return None

    def _introduce(self, cfg: IobusSection) -> None:
        hello = self.board.request("hello")
        self.info = {k: hello.get(k) for k in ("fw", "proto", "board", "boot")}
        self.board.request("config", **cfg.board_config())
        reset = hello.get("host_reset")
        if isinstance(reset, dict):
            self._emit("watchdog.reset", {"cause": reset.get("cause"), **_reset_details(reset)})
            self.board.request("clear_reset")
        self._report_peripherals(
            {"iobus": {"firmware": hello.get("fw"), "board": hello.get("board"), "proto": hello.get("proto")}}
        )
        self._introduced = True
        log.info("I/O board: firmware %s on %s", hello.get("fw"), hello.get("board"))

    def _read_status(self) -> None:
        status = self.board.request("status")
        self.last_status = {k: v for k, v in status.items() if k != "ok"}
        self._report_metrics(status_metrics(status))
        phase = status.get("phase")
        if isinstance(phase, str) and not self.phases.snapshot() and phase != "unknown":
            board_t = status.get("t")
            at = self.board.host_time(board_t) if isinstance(board_t, int) else None
            self.phases.record(at if at is not None else self._clock(), phase)  # the phase at start


def _reset_details(reset: dict[str, Any]) -> dict[str, Any]:
    return {k: reset[k] for k in ("silence_s", "count") if k in reset}


def build_board(config: IobusSection) -> IoBoard | None:
    """The board named by ``[iobus] port``: none, the in-memory simulation, or a serial port."""
    if config.port is None:
        return None
    if config.port == "simulated":
        return SimulatedIoBoard()
    return SerialIoBoard(config.port, baudrate=config.baudrate)
