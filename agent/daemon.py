"""The agent daemon: builds every part in factory functions and supervises them.

This module is the supervisor boundary, the only place with a broad ``except``: ``Supervisor``
runs every message handler, command, telemetry tick and local API request so that one bad message
or failing handler is logged (with its topic), counted and never stops a loop. The main loop pings
the systemd watchdog only while every worker thread is alive, and stops cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import sdnotify
from ulid import ULID

from agent import handlers
from agent.cabinet import CabinetMonitor, build_board
from agent.commands import CommandProcessor, CommandVerifier
from agent.config import AgentConfig, deep_merge, set_config_overrides
from agent.devicekey import DeviceKeyError, load_or_create_key, make_signer
from agent.errors import AgentError, CommandFailed, ConfigError
from agent.link import Link
from agent.localapi import LocalApiServer, Req
from agent.logs import set_level, setup_logging
from agent.ota.boardfw import BoardFirmware
from agent.ota.errors import OtaError
from agent.ota.updater import BoardSync, Updater, running_slot_from_env
from agent.ota.wiring import add_local_ops, build_parts, launched_root, update_handler
from agent.outbox import Outbox
from agent.renewal import CertRenewer
from agent.results import ResultStore
from agent.rolerelay import RoleRelay, serve_role_commands
from agent.rpc import RpcClient
from agent.sender import OutboxSender
from agent.shadow import Shadow
from agent.state import write_json
from agent.system import System, build_system
from agent.telemetry import TelemetryPublisher, TelemetrySampler
from agent.version import agent_version
from agent.wiring import OVERRIDES_FILE, ConfigLayers, choose_verifier, load_plugin, lock_data_dir
from hw.iobflash import BoardFlasher, MpremoteFlasher, SimulatedFlasher
from hw.iobus import IoBoard, SimulatedIoBoard
from protocol.errors import ProtocolError

log = logging.getLogger(__name__)

T = TypeVar("T")
RESTART_EXIT_CODE = 75
"""Exit code of the ``restart`` command in exit mode (systemd: Restart=always restarts it)."""
FAILURE_EXIT_CODE = 70
LIVE_SECTIONS = ("telemetry", "logging", "renewal")


class Supervisor:
    """The guard: runs ``fn``, logs and counts what it raises, returns None on failure."""

    def __init__(self) -> None:
        self.bad_messages = 0
        self.errors = 0
        self.last_error: str | None = None

    def __call__(self, where: str, fn: Callable[[], T], /) -> T | None:
        try:
            return fn()
        except (ProtocolError, AgentError) as exc:
            self.bad_messages += 1
            self.last_error = f"{where}: {exc}"
            log.warning("%s: %s", where, exc)
        except Exception as exc:  # the supervisor boundary: nothing escapes into a worker loop
            self.errors += 1
            self.last_error = f"{where}: unexpected {type(exc).__name__}: {exc}"
            log.exception("%s: unexpected error", where)
        return None


class Agent:
    """Every part of a running agent, wired together (built by ``build_agent``)."""

    def __init__(
        self,
        layers: ConfigLayers,
        config: AgentConfig,
        *,
        verifier: CommandVerifier | None = None,
        system: System | None = None,
        board: IoBoard | None = None,
    ) -> None:
        self.layers = layers
        self.config = config
        self.device_id = config.device_id
        self.data_dir = config.data_dir
        self.started = time.monotonic()
        self.version = agent_version()
        self.boot_id = str(ULID())
        self.guard = Supervisor()
        self.stop_event = threading.Event()
        self.exit_code = 0
        self.log_file: Path | None = None
        self.system = system or build_system(config.system.backend)
        self._lock_handle = lock_data_dir(self.data_dir)
        self.outbox = self._build_outbox(config)
        identity = {"role": config.device.role, "version": self.version, "boot_id": self.boot_id}
        self.link = Link(config.mqtt, self.device_id, identity, self._on_message, self._on_ack)
        self.sender = OutboxSender(self.outbox, self.link, config.mqtt.inflight_window)
        self.verifier = choose_verifier(config, verifier)
        self.results = ResultStore(self.data_dir / "commands.db", config.commands.result_retention)
        max_bytes = config.mqtt.max_payload_bytes
        self.commands = CommandProcessor(self.link, self.results, self.verifier, self.guard, max_bytes)
        software = {"agent": self.version, "python": sys.version.split()[0], "platform": sys.platform}
        self.shadow = Shadow(
            self.data_dir, self.link, software, self.verifier, self.apply_desired_agent, max_bytes
        )
        self.shadow.set_local(layers.local, layers.revision)
        sampler = TelemetrySampler(self.data_dir)
        self.telemetry = TelemetryPublisher(
            self.link, sampler, lambda: self.config.telemetry, self.counters, self.guard
        )
        self.rpc_client = RpcClient(self.link, max_bytes)
        self.localapi: LocalApiServer | None = None
        if config.local_api.enabled:
            self.localapi = LocalApiServer(
                self.data_dir,
                self,
                self.guard,
                mode=config.local_api.socket_mode,
                max_request_bytes=config.local_api.max_request_bytes,
                rpc_timeout_max_s=config.local_api.rpc_timeout_max_s,
            )
        self.renewer = CertRenewer(self.data_dir, lambda: self.config.renewal)
        self.cabinet = self._build_cabinet(config, board)
        self.ota_error: str | None = None
        self.updater = self._build_updater(config)
        topics = self.link.topics
        self._routes: dict[str, Callable[[bytes], None]] = {
            topics.commands_req(self.device_id): self.commands.submit,
            topics.shadow_desired(self.device_id): self.shadow.handle_desired,
            topics.rpc_res(self.device_id): self.rpc_client.handle_response,
        }
        self.link.add_connect_hook(lambda: self.guard("shadow on connect", self.shadow.on_connect))
        self.link.add_connect_hook(self.telemetry.trigger)
        self.link.add_connect_hook(self.commands.resend_unsent)
        self._register_builtins()
        if self.localapi is not None:
            role_commands = ("snapshot",) if config.device.role == "camera" else ()
            serve_role_commands(self.localapi, RoleRelay(), self.commands, role_commands)

    # -- wiring --------------------------------------------------------------------------------

    def _build_outbox(self, config: AgentConfig) -> Outbox:
        """The outbox, signing with the device key; without a usable key the agent still runs
        (telemetry, commands, unsigned events) and refuses only events that must be signed."""
        path = config.device.key_path or self.data_dir / "device_key.pem"
        try:
            signer = make_signer(load_or_create_key(path), self.device_id)
        except DeviceKeyError as exc:
            log.error("evidence cannot be signed: %s", exc)
            return Outbox(
                self.data_dir / "outbox.db", self.device_id, config.outbox, None, no_signer_reason=str(exc)
            )
        return Outbox(self.data_dir / "outbox.db", self.device_id, config.outbox, signer)

    def _build_updater(self, config: AgentConfig) -> Updater | None:
        """The OTA updater when ``[ota] enabled``; a device whose updater cannot be built (no
        root of trust, no repository URL) still runs and reports why in its status."""
        if not config.ota.enabled:
            return None
        try:
            parts = build_parts(config)
        except (ConfigError, OtaError) as exc:
            self.ota_error = str(exc)
            log.error("updates are off: %s", exc)
            return None
        updater = Updater(
            lambda: self.config.ota,
            self.data_dir,
            parts,
            running_version=self.version,
            running_slot=running_slot_from_env(),
            emit=self._emit_event,
            request_exit=self._exit_for_update,
            connected=lambda: self.link.connected,
            board_firmware=self._board_firmware(config),
        )
        self.shadow.add_release_hook(updater.on_desired)
        if self.localapi is not None:
            add_local_ops(self.localapi, updater)
        return updater

    def _board_firmware(self, config: AgentConfig) -> BoardSync | None:
        """With an I/O board, releases carry its firmware (agent/ota/boardfw.py)."""
        monitor = self.cabinet
        if monitor is None:
            return None
        flasher: BoardFlasher | None = None
        if isinstance(monitor.board, SimulatedIoBoard):
            flasher = SimulatedFlasher(monitor.board)
        elif config.iobus.usb_port:
            flasher = MpremoteFlasher(config.iobus.usb_port)
        return BoardFirmware(
            flasher, monitor.firmware, monitor.wait_firmware, lambda: self.config.iobus.firmware_timeout_s
        )

    def _build_cabinet(self, config: AgentConfig, board: IoBoard | None) -> CabinetMonitor | None:
        """The cabinet I/O board when ``[iobus] port`` is set (or a board is passed in)."""
        board = board or build_board(config.iobus)
        if board is None:
            return None
        monitor = CabinetMonitor(
            board,
            lambda: self.config.iobus,
            self._emit_event,
            self.telemetry.report_metrics,
            self.shadow.set_peripherals,
        )
        if self.localapi is not None:
            self.localapi.add_op("iobus_status", Req, lambda _r: monitor.state())
            self.localapi.add_op("signal_phase", Req, lambda _r: monitor.signal_phase())
            self.localapi.add_op("iobus_ack_tamper", Req, lambda _r: monitor.ack_tamper())
        return monitor

    def _emit_event(self, kind: str, data: dict[str, Any]) -> None:
        self.outbox.enqueue(kind, data)

    def _exit_for_update(self, code: int) -> None:
        self.exit_code = code
        self.stop_event.set()

    def _register_builtins(self) -> None:
        register = self.commands.register_handler
        register("ping", handlers.ping(self.version, self.started))
        register("restart", handlers.restart(self.request_restart))
        register("reboot", handlers.reboot(self.system))
        register("set_config", handlers.set_config(self.apply_local_overrides))
        register("update", update_handler(lambda: self.updater))
        register(
            "get_logs", handlers.get_logs(lambda: self.log_file, lambda: self.config.commands.max_log_lines)
        )
        for spec in self.config.commands.plugins:
            load_plugin(spec)(register)

    def _on_message(self, topic: str, payload: bytes) -> None:
        """Every incoming MQTT message (link thread); never raises."""
        self.guard(f"message on {topic}", lambda: self._route(topic, payload))

    def _route(self, topic: str, payload: bytes) -> None:
        limit = self.config.mqtt.max_payload_bytes
        if len(payload) > limit:
            raise ProtocolError(f"dropped: {len(payload)} bytes is over the {limit}-byte limit")
        handler = self._routes.get(topic)
        if handler is None:
            raise ProtocolError("message on a topic the agent does not handle")
        handler(payload)

    def _on_ack(self, generation: int, mid: int, ok: bool, reason: str) -> None:
        self.sender.on_ack(generation, mid, ok, reason)

    # -- configuration changes -------------------------------------------------------------------

    def _rebuild(self) -> dict[str, Any]:
        old, new = self.config, self.layers.build()
        self.config = new
        set_level(new.logging.level)
        changed = [k for k in type(new).model_fields if getattr(old, k) != getattr(new, k)]
        restart_required = any(k not in LIVE_SECTIONS for k in changed)
        if "telemetry" in changed:
            self.telemetry.trigger()
        return {"changed": changed, "restart_required": restart_required}

    def apply_local_overrides(self, args: dict[str, Any]) -> dict[str, Any]:
        """set_config: merge ``args`` into the persisted local overrides and apply them."""
        try:
            args = set_config_overrides(args)
        except ConfigError as exc:
            raise CommandFailed(str(exc)) from exc
        previous = self.layers.local
        self.layers.local = deep_merge(previous, args)
        try:
            self.layers.build()
        except ConfigError as exc:
            self.layers.local = previous
            raise CommandFailed(str(exc)) from exc
        self.layers.revision += 1
        write_json(
            self.data_dir / OVERRIDES_FILE, {"overrides": self.layers.local, "revision": self.layers.revision}
        )
        outcome = self._rebuild()
        self.shadow.set_local(self.layers.local, self.layers.revision)
        log.info("set_config applied (revision %d): %s", self.layers.revision, ", ".join(outcome["changed"]))
        return {"local_revision": self.layers.revision, **outcome}

    def apply_desired_agent(self, layer: dict[str, Any]) -> None:
        """Shadow: validate and apply the ``agent`` member of a desired config (ConfigError if bad)."""
        previous = self.layers.desired
        self.layers.desired = layer
        try:
            self.layers.build()
        except ConfigError:
            self.layers.desired = previous
            raise
        self._rebuild()

    # -- local API backend -------------------------------------------------------------------------

    def emit(self, kind: str, data: dict[str, Any], sign: bool) -> dict[str, Any]:
        stored = self.outbox.enqueue(kind, data, sign=sign)
        return {"id": stored.id, "seq": stored.seq}

    def rpc(self, service: str, method: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        return self.rpc_client.call(service, method, params, timeout)

    def report_metrics(self, metrics: dict[str, Any]) -> None:
        self.telemetry.report_metrics(metrics)

    def report_peripherals(self, peripherals: dict[str, Any]) -> None:
        self.shadow.set_peripherals(peripherals)

    def desired_config(self) -> dict[str, Any]:
        return self.shadow.desired_config(self.config.device.role)

    def counters(self) -> dict[str, Any]:
        return {
            "outbox_depth": self.outbox.depth,
            "outbox_evicted": self.outbox.evicted,
            "bad_messages": self.guard.bad_messages,
            "link_connects": self.link.connects,
            **(self.updater.telemetry() if self.updater is not None else {}),
        }

    def status(self) -> dict[str, Any]:
        return {
            "device": self.device_id,
            "role": self.config.device.role,
            "version": self.version,
            "boot_id": self.boot_id,
            "agent_uptime_s": round(time.monotonic() - self.started, 1),
            "link": self.link.state(),
            "outbox": {
                **self.outbox.stats(),
                "inflight": self.sender.inflight,
                "sent": self.sender.sent,
                "acked": self.sender.acked,
                "refused_by_broker": self.sender.refused_by_broker,
            },
            "seq": self.outbox.last_seq,
            "config_version": self.shadow.config_version,
            "commands": dict(self.commands.counts),
            "telemetry_published": self.telemetry.published,
            "bad_messages": self.guard.bad_messages,
            "errors": self.guard.errors,
            "last_error": self.guard.last_error or self.link.last_error,
            "verifier": type(self.verifier).__name__,
            "simulated_reboots": len(getattr(self.system, "reboots", [])),
            "ota": self._ota_summary(),
            "certificate": self.renewer.state(),
            "iobus": self.cabinet.state() if self.cabinet is not None else None,
        }

    def _ota_summary(self) -> dict[str, Any]:
        if self.updater is None:
            return {"enabled": False, "error": self.ota_error}
        state = self.updater.state
        slot = self.updater.running_slot
        return {"enabled": True, "slot": slot, "phase": state.phase, "waiting": state.waiting}

    # -- lifecycle -----------------------------------------------------------------------------------

    def request_restart(self) -> None:
        log.warning("restart requested by command")
        self.exit_code = RESTART_EXIT_CODE
        self.stop_event.set()

    def start(self) -> None:
        self.commands.start()
        self.sender.start()
        self.telemetry.start()
        self.link.start()
        self.renewer.start()
        if self.cabinet is not None:
            self.cabinet.start()
        if self.localapi is not None:
            self.localapi.start()
        if self.updater is not None:
            self.updater.start()
            self.updater.on_desired(self.shadow.release)
        log.info(
            "agent %s started: device %s (%s), broker %s, data dir %s",
            self.version,
            self.device_id,
            self.config.device.role,
            self.config.mqtt.broker,
            self.data_dir,
        )

    def dead_parts(self) -> list[str]:
        parts = {
            "outbox writer": self.outbox.is_alive(),
            "outbox sender": self.sender.is_alive(),
            "MQTT link": self.link.is_alive(),
            "commands": self.commands.is_alive(),
            "telemetry": self.telemetry.is_alive(),
            "local API": self.localapi is None or self.localapi.is_alive(),
            "updater": self.updater is None or self.updater.is_alive(),
            "certificate renewal": self.renewer.is_alive(),
            "I/O board": self.cabinet is None or self.cabinet.is_alive(),
        }
        return [name for name, alive in parts.items() if not alive]

    def stop(self) -> None:
        if self.updater is not None:
            self.updater.stop()
        if self.localapi is not None:
            self.localapi.stop()
        self.renewer.stop()
        if self.cabinet is not None:
            self.cabinet.stop(disarm=self.exit_code == 0)
        self.telemetry.stop()
        self.commands.stop()
        self.link.stop()
        self.sender.stop()
        self.outbox.flush()
        self.outbox.close()
        self.results.close()
        self._lock_handle.close()
        log.info("agent stopped")

    def run(self) -> int:
        """Run until SIGTERM/SIGINT, a restart command or a dead worker; returns the exit code."""
        notifier = sdnotify.SystemdNotifier()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda _s, _f: self.stop_event.set())
        self.start()
        notifier.notify("READY=1")
        watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        tick = min(5.0, watchdog_usec / 2e6) if watchdog_usec else 5.0
        while not self.stop_event.wait(tick):
            dead = self.dead_parts()
            if dead:
                log.error("stopping: worker thread(s) died: %s", ", ".join(dead))
                self.exit_code = FAILURE_EXIT_CODE
                break
            notifier.notify("WATCHDOG=1")
        notifier.notify("STOPPING=1")
        self.stop()
        return self.exit_code


def build_agent(
    config_path: Path | None,
    flags: dict[str, Any],
    *,
    verifier: CommandVerifier | None = None,
    system: System | None = None,
    log_to_file: bool = True,
) -> Agent:
    """Read the configuration layers, set up logging and build the agent (not started)."""
    layers = ConfigLayers(config_path, flags)
    base = layers.build()
    _ = base.device_id  # raises ConfigError when there is no device id
    config = layers.load_persisted(base.data_dir)
    log_file = setup_logging(config.logging, config.data_dir) if log_to_file else None
    agent = Agent(layers, config, verifier=verifier, system=system)
    agent.log_file = log_file
    return agent


def run_agent(config_path: Path | None, flags: dict[str, Any]) -> int:
    """Build and run the agent; handles the restart command (exit code or re-exec)."""
    agent = build_agent(config_path, flags)
    code = agent.run()
    if code == RESTART_EXIT_CODE and _restart_by_exec(agent.config):
        logging.shutdown()
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    return code


def _restart_by_exec(config: AgentConfig) -> bool:
    mode = config.system.restart_mode
    if launched_root() is not None:
        return False  # the launcher restarts us (and may switch slots): exit
    if mode == "auto":
        under_systemd = bool(os.environ.get("NOTIFY_SOCKET") or os.environ.get("INVOCATION_ID"))
        return not under_systemd
    return mode == "exec"
