"""Assembly helpers of the daemon: configuration layers, the data-dir lock, verifier and plugins."""

from __future__ import annotations

import fcntl
import importlib
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO, cast

from agent.commands import NO_KEYS_REASON, AcceptUnsigned, CommandVerifier, Handler, RejectAll
from agent.config import AgentConfig, load_config
from agent.errors import AgentError, ConfigError
from agent.shadow import STATE_FILE
from agent.state import read_json
from protocol.errors import ProtocolError

log = logging.getLogger(__name__)

OVERRIDES_FILE = "overrides.json"


class AlreadyRunning(AgentError):
    """Another agent already uses this data directory."""


class ConfigLayers:
    """The configuration sources, rebuilt whenever set_config or a desired state changes one."""

    def __init__(self, path: Path | None, flags: dict[str, Any]) -> None:
        self.path = path
        self.flags = flags
        self.desired: dict[str, Any] = {}
        self.local: dict[str, Any] = {}
        self.revision = 0

    def build(self) -> AgentConfig:
        return load_config(
            self.path,
            self.flags,
            [("desired state (config.agent)", self.desired), ("local overrides (set_config)", self.local)],
        )

    def load_persisted(self, data_dir: Path) -> AgentConfig:
        """Add the persisted layers; a stored layer that no longer validates is dropped (logged)."""
        stored = read_json(data_dir / OVERRIDES_FILE)
        self.local = stored.get("overrides") or {}
        self.revision = int(stored.get("revision") or 0)
        agent_layer = (read_json(data_dir / STATE_FILE).get("config") or {}).get("agent")
        self.desired = agent_layer if isinstance(agent_layer, dict) else {}
        for drop in ("none", "local", "desired"):
            if drop == "local":
                self.local = {}
            elif drop == "desired":
                self.desired = {}
            try:
                return self.build()
            except ConfigError as exc:
                log.error("ignoring a persisted configuration layer: %s", exc)
        return self.build()


def lock_data_dir(data_dir: Path) -> TextIO:
    data_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    handle = open(data_dir / "agent.lock", "a+", encoding="utf-8")  # noqa: SIM115 (held for the run)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise AlreadyRunning(f"another agent is already running with data dir {data_dir}") from exc
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def choose_verifier(config: AgentConfig, supplied: CommandVerifier | None) -> CommandVerifier:
    """The supplied verifier; else, with ``require_signature``, the fleet-key verifier of an
    enrolled device (``agent.verify``) or, without fleet keys, one that rejects everything;
    else the development verifier (unsigned accepted, expired still rejected)."""
    if supplied is not None:
        return supplied
    if not config.commands.require_signature:
        return AcceptUnsigned()
    try:
        from agent.verify import build_verifier

        return build_verifier(config.data_dir, device_id=config.device_id)
    except (ImportError, ProtocolError, OSError, sqlite3.Error) as exc:
        log.error("commands.require_signature is on but %s: every command will be rejected", exc)
        return RejectAll(f"{NO_KEYS_REASON}: {exc}")


def load_plugin(spec: str) -> Callable[[Callable[[str, Handler], None]], None]:
    """``module:function`` from ``commands.plugins``; ConfigError naming it when it cannot be loaded."""
    module_name, _, function = spec.partition(":")
    try:
        plugin = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"commands.plugins: cannot load {spec!r} ({exc})") from exc
    if not callable(plugin):
        raise ConfigError(f"commands.plugins: {spec!r} is not a function")
    return cast(Callable[[Callable[[str, Handler], None]], None], plugin)
