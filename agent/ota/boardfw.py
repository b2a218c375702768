"""The cabinet I/O board's firmware travels in the release (``firmware/`` in the slot, a build of
``cityedge firmware build``) and is rolled forward and back with the rest of it.

- On trial, once the new agent has passed its own health gate, it flashes the board if the board
  runs another firmware version and waits for the board to answer running the release's version;
  only then is the release committed. Any failure is a failed health gate: the launcher rolls back.
- Whenever a slot starts that is not on trial (after a rollback, after a restart), its agent brings
  the board back to that slot's firmware the same way: a rollback undoes a new firmware too.

The decision is pure (:func:`plan`); :class:`BoardFirmware` is the I/O shell.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hw.iobflash import BoardFlasher, FlashError, read_build

log = logging.getLogger(__name__)

SLOT_DIR = "firmware"
FLASH_S = 300.0
"""Time allowed for copying and checking the files over the USB REPL (about 30 s on the bench)."""
PROBE_S = 30.0


@dataclass(frozen=True)
class Plan:
    flash: bool
    reason: str | None = None
    """Why nothing can be done (a release with firmware on a device that cannot flash its board)."""


def plan(wanted: str | None, running: str | None, can_flash: bool) -> Plan:
    """What to do about the board, given the slot's firmware version (``wanted``: None when the
    release carries none) and the board's (``running``: None when unknown)."""
    if wanted is None or wanted == running:
        return Plan(False)
    if not can_flash:
        return Plan(
            False,
            f"the release carries I/O board firmware {wanted} (the board runs "
            f"{running or 'an unknown version'}) but [iobus] usb_port is not set: "
            "the board keeps its firmware",
        )
    return Plan(True)


class BoardFirmware:
    """Brings the board to the firmware of a slot (see the module docstring)."""

    def __init__(
        self,
        flasher: BoardFlasher | None,
        board_version: Callable[[float, threading.Event], str | None],
        wait_version: Callable[[str, float, threading.Event], str | None],
        timeout_s: Callable[[], float],
    ) -> None:
        self.flasher = flasher
        self._board_version = board_version
        self._wait_version = wait_version
        self._timeout_s = timeout_s

    def trial_time_s(self, slot_dir: Path) -> float:
        """What flashing adds to a trial's deadline (the launcher's limit) for ``slot_dir``."""
        if self.flasher is None or not (slot_dir / SLOT_DIR).is_dir():
            return 0.0
        return PROBE_S + FLASH_S + self._timeout_s()

    def ensure(self, slot_dir: Path, stop: threading.Event) -> str | None:
        """None when the board runs ``slot_dir``'s firmware afterwards (or there is nothing to do),
        else why not, in words."""
        build = slot_dir / SLOT_DIR
        if not build.is_dir():
            return None
        try:
            wanted = str(read_build(build)["version"])
        except FlashError as exc:
            return f"the release's I/O board firmware is unusable: {exc}"
        timeout = self._timeout_s()
        running = self._board_version(min(timeout, PROBE_S), stop)
        decision = plan(wanted, running, self.flasher is not None)
        if decision.reason is not None:
            log.warning("%s", decision.reason)
        if not decision.flash or self.flasher is None:
            return None
        log.warning("I/O board: flashing firmware %s (it runs %s)", wanted, running or "an unknown version")
        try:
            self.flasher.flash(build, lambda step: log.info("I/O board flash: %s", step))
        except FlashError as exc:
            return f"the I/O board could not be flashed with firmware {wanted}: {exc}"
        late = self._wait_version(wanted, timeout, stop)
        if late is None:
            log.warning("I/O board: firmware %s runs", wanted)
        return late
