"""What the agent asks of the operating system (reboot), behind one interface.

``LinuxSystem`` runs ``systemctl reboot``; ``SimulatedSystem`` only records the request (the
default, so that development machines and CI never reboot). Chosen by ``[system] backend``.
"""

from __future__ import annotations

import logging
import subprocess
from typing import Literal, Protocol

from agent.errors import AgentError
from protocol.timefmt import now_ts

log = logging.getLogger(__name__)


class SystemActionFailed(AgentError):
    """The operating system refused or failed an action (e.g. reboot)."""


class System(Protocol):
    simulated: bool

    def reboot(self) -> None:
        """Reboot the device now (returns only if the reboot could not be started)."""
        ...


class SimulatedSystem:
    """Records reboot requests instead of rebooting."""

    simulated = True

    def __init__(self) -> None:
        self.reboots: list[str] = []

    def reboot(self) -> None:
        self.reboots.append(now_ts())
        log.warning("simulated reboot requested (system backend 'simulated': nothing happens)")


class LinuxSystem:
    """Reboots through systemd."""

    simulated = False

    def __init__(self, command: tuple[str, ...] = ("systemctl", "reboot")) -> None:
        self.command = command

    def reboot(self) -> None:
        log.warning("rebooting the device (%s)", " ".join(self.command))
        try:
            done = subprocess.run(self.command, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SystemActionFailed(f"reboot failed: {exc}") from exc
        if done.returncode != 0:
            raise SystemActionFailed(f"reboot failed: {done.stderr.strip() or done.returncode}")


def build_system(backend: Literal["simulated", "linux"]) -> System:
    return LinuxSystem() if backend == "linux" else SimulatedSystem()
