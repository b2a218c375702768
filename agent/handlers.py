"""Built-in command handlers: ping, restart, reboot, set_config, get_logs.

Each factory receives exactly what its handler needs, so the handlers are testable alone.
(``snapshot`` and ``update`` answer "not available on this device yet" until a role registers
its own handler through ``CommandProcessor.register_handler``.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.commands import Handler, Outcome
from agent.errors import CommandFailed
from agent.logs import tail_lines
from agent.system import System, SystemActionFailed
from protocol.timefmt import now_ts

log = logging.getLogger(__name__)


def ping(version: str, started: float) -> Handler:
    def handler(_args: dict[str, Any]) -> dict[str, Any]:
        return {
            "pong": True,
            "ts": now_ts(),
            "version": version,
            "agent_uptime_s": round(time.monotonic() - started, 1),
        }

    return handler


def restart(request_restart: Callable[[], None]) -> Handler:
    def handler(_args: dict[str, Any]) -> Outcome:
        return Outcome({"restarting": True}, then=request_restart)

    return handler


def reboot(system: System) -> Handler:
    def do_reboot() -> None:
        try:
            system.reboot()
        except SystemActionFailed as exc:
            log.error("%s", exc)

    def handler(_args: dict[str, Any]) -> Outcome:
        return Outcome({"rebooting": True, "simulated": system.simulated}, then=do_reboot)

    return handler


def set_config(apply: Callable[[dict[str, Any]], dict[str, Any]]) -> Handler:
    """``args`` is a partial agent config (e.g. ``{"telemetry": {"interval_s": 10}}``)."""

    def handler(args: dict[str, Any]) -> dict[str, Any]:
        if not args:
            raise CommandFailed("set_config needs the settings to change in its args")
        return apply(args)

    return handler


def get_logs(log_file: Callable[[], Path | None], max_lines: Callable[[], int]) -> Handler:
    def handler(args: dict[str, Any]) -> dict[str, Any]:
        wanted = args.get("lines", 100)
        if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 1:
            raise CommandFailed("args.lines must be a positive whole number")
        path = log_file()
        if path is None:
            raise CommandFailed("file logging is off on this device ([logging] file = false)")
        lines = tail_lines(path, min(wanted, max_lines()))
        return {"lines": lines, "count": len(lines)}

    return handler
