"""Traffic-signal phase for red-light rules: one ``SignalPhase`` protocol, several sources.

- ``FixedPhase``: a constant (tests, or a junction whose light is out);
- ``SchedulePhase``: a fixed-time plan (cycle, green, amber, offset) — the common case in Hanoi
  where controllers run fixed plans;
- ``AgentPhase``: the phase pushed by the city in the camera's desired config (polled through the
  agent's local API, cached for ``ttl_s``);
- ``BoardPhase``: the cabinet I/O board's signal input (a wire from the controller's red lamp),
  timestamped by the board at each debounced change and read through the agent's local API
  (``signal_phase``), so the phase at a frame's time is known even when the frame is late;
- ``CallbackPhase``: any callable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, get_args

from agent.camera.config import Phase, SignalConfig

log = logging.getLogger(__name__)
PHASES: tuple[str, ...] = get_args(Phase)


class SignalPhase(Protocol):
    def phase(self, wall: float) -> Phase:
        """The phase at Unix time ``wall`` ("unknown" when it cannot be told)."""
        ...


class FixedPhase:
    def __init__(self, value: Phase) -> None:
        self.value: Phase = value

    def phase(self, wall: float) -> Phase:
        return self.value


class SchedulePhase:
    """Green from the cycle start for ``green_s``, then amber for ``amber_s``, red for the rest."""

    def __init__(self, cycle_s: float, green_s: float, amber_s: float, offset_s: float = 0.0) -> None:
        self.cycle_s, self.green_s, self.amber_s, self.offset_s = cycle_s, green_s, amber_s, offset_s

    def phase(self, wall: float) -> Phase:
        at = (wall - self.offset_s) % self.cycle_s
        if at < self.green_s:
            return "green"
        if at < self.green_s + self.amber_s:
            return "amber"
        return "red"

    def red_since(self, wall: float) -> float:
        """Seconds since red started (0 if not red)."""
        at = (wall - self.offset_s) % self.cycle_s
        start = self.green_s + self.amber_s
        return at - start if at >= start else 0.0


class CallbackPhase:
    def __init__(self, read: Callable[[], str]) -> None:
        self.read = read

    def phase(self, wall: float) -> Phase:
        value = self.read()
        return value if value in PHASES else "unknown"  # type: ignore[return-value]


class BoardPhase:
    """The phase from the I/O board's timestamped changes (agent local API ``signal_phase``).

    The change list is re-read at most every ``ttl_s``; the phase at ``wall`` is the last change at
    or before it, so a frame analysed a little late still gets the phase it was taken under.
    """

    def __init__(self, read: Callable[[], dict[str, Any]], ttl_s: float = 0.1) -> None:
        self.read, self.ttl_s = read, ttl_s
        self._changes: list[tuple[float, str]] = []
        self._at = -1e9
        self._failing = False

    def phase(self, wall: float) -> Phase:
        from agent.cabinet import phase_at

        now = time.monotonic()
        if now - self._at >= self.ttl_s:
            self._at = now
            try:
                answer = self.read()
                self._changes = [(float(at), str(p)) for at, p in answer.get("changes", [])]
                self._failing = False
            except Exception as exc:  # the agent may be restarting: the phase is then unknown
                if not self._failing:
                    log.warning("signal: cannot read the I/O board's phase from the agent (%s)", exc)
                self._failing = True
                self._changes = []
        value = phase_at(self._changes, wall)
        return value if value in PHASES else "unknown"  # type: ignore[return-value]


class AgentPhase:
    """Reads ``desired_config()[key]`` (the city pushes the phase); cached for ``ttl_s``."""

    def __init__(self, desired: Callable[[], dict[str, Any]], key: str, ttl_s: float = 0.5) -> None:
        self.desired, self.key, self.ttl_s = desired, key, ttl_s
        self._value: Phase = "unknown"
        self._at = -1e9

    def phase(self, wall: float) -> Phase:
        now = time.monotonic()
        if now - self._at >= self.ttl_s:
            self._at = now
            try:
                value = self.desired().get(self.key, "unknown")
            except Exception as exc:  # the agent may be restarting; the phase is then unknown
                log.warning("signal: cannot read desired config (%s)", exc)
                value = "unknown"
            self._value = value if value in PHASES else "unknown"
        return self._value


def build_signal(
    config: SignalConfig,
    desired: Callable[[], dict[str, Any]] | None = None,
    board: Callable[[], dict[str, Any]] | None = None,
) -> SignalPhase:
    if config.kind == "fixed":
        return FixedPhase(config.phase)
    if config.kind == "schedule":
        return SchedulePhase(config.cycle_s, config.green_s, config.amber_s, config.offset_s)
    if config.kind == "board":
        if board is None:
            log.warning("signal: kind=board but no agent connection; phase unknown (no red-light events)")
            return FixedPhase("unknown")
        return BoardPhase(board)
    if desired is None:
        log.warning("signal: kind=agent but no agent connection; phase unknown (no red-light events)")
        return FixedPhase("unknown")
    return AgentPhase(desired, config.key)
