"""State of one simulated device and every message it sends, built without I/O.

The link (``hil.sim.link``) decides *when* to send; this module decides *what*: status with a
boot id, telemetry with a running ``seq``, event envelopes with ULID ids and a per-device ``seq``
that never goes back, the reported shadow, and answers to commands and desired state, including
the update exchange a desired release starts (``hil.sim.ota``).
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from ulid import ULID

from hil.sim.commands import CommandBook, CommandFailed, Handler
from hil.sim.ota import Action, Boot, Emit, GoOffline, OtaSettings, SimOta
from hil.sim.scenario import TRAFFIC_WINDOW_S, CameraScenario, KioskScenario, Role, Vitals
from protocol.errors import PayloadError
from protocol.models import (
    Command,
    EventEnvelope,
    ShadowDesired,
    ShadowReported,
    Status,
    Telemetry,
    WireModel,
    decode,
)
from protocol.timefmt import now_ts, utc_now
from protocol.topics import Topics

LIVE_SECTIONS = ("telemetry", "logging", "renewal")
"""Settings the agent applies without a restart (agent.daemon.LIVE_SECTIONS)."""


@dataclass(frozen=True)
class Outgoing:
    """One MQTT publication: where, what, how."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    family: str


_PERIPHERALS: dict[Role, dict[str, Any]] = {
    "kiosk": {
        "screen": {"ok": True, "heartbeat_age_s": 2.0, "viewport": [1080, 1920]},
        "scanner": {"state": "ok", "port": "/dev/ttyACM0"},
        "printer": {"state": "ok", "paper": "ok"},
    },
    "camera": {
        "camera": {"ok": True, "resolution": "1920x1080", "fps": 15},
        "io_board": {"ok": True, "signal_phase_input": True},
    },
}


class SimDevice:
    """One virtual kiosk or camera."""

    def __init__(
        self,
        device_id: str,
        role: Role,
        topics: Topics,
        rng: random.Random,
        *,
        version: str = "0.1.0-sim",
        time_scale: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        telemetry_interval_s: float = 30.0,
        ota: OtaSettings | None = None,
        seed: int | str = 0,
        trusted: Mapping[str, Ed25519PublicKey] | None = None,
    ) -> None:
        self.id = device_id
        self.role = role
        self.topics = topics
        self.rng = rng
        self.ota = SimOta(ota or OtaSettings(), seed, device_id, version)
        self.time_scale = time_scale
        self.clock = clock
        self.boot_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        self.booted = clock()
        self.telemetry_seq = 0
        self.event_seq = 0
        self.config: dict[str, Any] = {}
        self.config_version = 0
        self.base_interval_s = telemetry_interval_s
        self.telemetry_interval_s = telemetry_interval_s
        self.local_overrides: dict[str, Any] = {}
        self.local_revision = 0
        self.logs: deque[str] = deque(maxlen=200)
        self.vitals = Vitals(rng, role)
        self.scenario: KioskScenario | CameraScenario = (
            KioskScenario(rng) if role == "kiosk" else CameraScenario(rng, device_id)
        )
        self.scenario.start(0.0)
        self.trusted = trusted
        """Fleet command keys (kid → key): with them, only signed commands and desired states count."""
        self.commands = CommandBook(
            self._handlers(), verify=None if trusted is None else self._verify_command
        )
        self._after_command: list[Outgoing] = []

    @property
    def version(self) -> str:
        """The version the device runs (changes when an update commits or rolls back)."""
        return self.ota.running

    # -- messages -----------------------------------------------------------------------------

    def _out(self, topic: str, model: WireModel, qos: int, retain: bool, family: str) -> Outgoing:
        return Outgoing(topic, model.to_bytes(), qos, retain, family)

    def status(self, online: bool) -> Outgoing:
        msg = Status(online=online, ts=now_ts(), role=self.role, version=self.version, boot_id=self.boot_id)
        return self._out(self.topics.status(self.id), msg, 1, True, "status")

    def telemetry(self) -> Outgoing:
        self.telemetry_seq += 1
        msg = Telemetry(
            ts=now_ts(),
            seq=self.telemetry_seq,
            uptime_s=round(self.clock() - self.booted, 1),
            **self.vitals.step(),
            **self.scenario.metrics(),
        )
        return self._out(self.topics.telemetry(self.id), msg, 0, False, "telemetry")

    def event(self, kind: str, data: dict[str, Any]) -> Outgoing:
        self.event_seq += 1
        env = EventEnvelope(
            id=str(ULID()), seq=self.event_seq, ts=now_ts(), device=self.id, kind=kind, data=data
        )
        return self._out(self.topics.event(self.id, kind), env, 1, False, "events")

    def shadow_reported(self) -> Outgoing:
        msg = ShadowReported.model_validate(
            {
                "ts": now_ts(),
                "config_version": self.config_version,
                "software": {"agent": self.version, "role": self.role, "simulated": True},
                "peripherals": _PERIPHERALS[self.role],
                "local_overrides": self.local_overrides,
                "local_revision": self.local_revision,
                "release": self.ota.desired,
            }
        )
        return self._out(self.topics.shadow_reported(self.id), msg, 1, True, "shadow")

    def due_events(self) -> list[Outgoing]:
        """Events the scenario produced up to now."""
        scenario_now = (self.clock() - self.booted) * self.time_scale
        return [self.event(kind, data) for kind, data in self.scenario.advance(scenario_now)]

    def load_event(self) -> Outgoing:
        """One extra ordinary event (benchmark load phase)."""
        scen = self.scenario
        kind, data = scen.rating() if isinstance(scen, KioskScenario) else scen.count()
        return self.event(kind, data)

    def next_event_in(self) -> float:
        """Real seconds until the scenario next changes (at least a little)."""
        scen = self.scenario
        scenario_now = (self.clock() - self.booted) * self.time_scale
        due = scen.next_change if isinstance(scen, KioskScenario) else scen.window_start + TRAFFIC_WINDOW_S
        return max(0.05, (due - scenario_now) / self.time_scale)

    # -- inbound ------------------------------------------------------------------------------

    def on_command(self, payload: bytes, topic: str) -> list[Outgoing]:
        """Answer to a ``commands/req`` payload, plus whatever the command changed."""
        self._after_command = []
        result = self.commands.answer(payload, topic)
        if result is None:
            self.log(f"ignored a command without a usable id on {topic}")
            return []
        self.log(f"command {result.id}: {result.status}")
        answer = self._out(self.topics.commands_res(self.id), result, 1, False, "commands")
        return [answer, *self._after_command]

    def on_desired(self, payload: bytes, topic: str) -> list[Outgoing]:
        """Apply a newer desired state and report it; older or equal versions change nothing."""
        try:
            desired = decode(ShadowDesired, payload, topic=topic)
        except PayloadError as exc:
            self.log(f"ignored desired state: {exc}")
            return []
        if desired.version <= self.config_version:
            return []
        if self.trusted is not None:
            from agent.errors import CommandRejected
            from agent.verify import VerifyPolicy, check_desired

            try:
                check_desired(json.loads(payload), self.trusted, utc_now(), VerifyPolicy(), None, self.id)
            except CommandRejected as exc:
                self.log(f"refused desired state version {desired.version}: {exc}")
                return []
        self.config = dict(desired.config)
        self.config_version = desired.version
        self.log(f"applied desired config version {desired.version}")
        started, _ = self._ota_out(self.ota.on_release(desired.release, self.clock()))
        return [self.shadow_reported(), *started]

    # -- updates ------------------------------------------------------------------------------

    def ota_next_in(self) -> float | None:
        """Real seconds until the update in progress takes its next step; None without one."""
        return self.ota.next_in(self.clock())

    def ota_due(self) -> tuple[list[Outgoing], float | None]:
        """What the update in progress sends now, and for how long the device then drops off the
        network (None: it stays online)."""
        now = self.clock()
        actions = self.ota.due(now)
        if actions and not self.ota.busy:
            actions += self.ota.settle(now)
        return self._ota_out(actions)

    def _ota_out(self, actions: list[Action]) -> tuple[list[Outgoing], float | None]:
        outs: list[Outgoing] = []
        offline: float | None = None
        for action in actions:
            if isinstance(action, Emit):
                self.log(f"{action.kind} {action.data.get('to')}")
                outs.append(self.event(action.kind, action.data))
            elif isinstance(action, Boot):
                self.log(f"restarting into {action.version}")
                self.boot_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
                self.booted = self.clock()
                outs += [self.status(True), self.shadow_reported()]
            elif isinstance(action, GoOffline):
                self.log(f"dropping off the network for {action.seconds:.0f} s mid-update")
                offline = action.seconds
        return outs, offline

    def log(self, line: str) -> None:
        self.logs.append(f"{now_ts()} {self.id}: {line}")

    # -- command handlers ---------------------------------------------------------------------

    def _handlers(self) -> dict[str, Handler]:
        return {
            "ping": self._ping,
            "restart": self._restart,
            "reboot": self._restart,
            "set_config": self._set_config,
            "get_logs": self._get_logs,
            "snapshot": self._snapshot,
            "update": self._update,
        }

    def _verify_command(self, message: dict[str, Any]) -> None:
        """As an enrolled agent (agent.verify.check_command): signed by a fleet key, in its window."""
        from agent.verify import VerifyPolicy, check_command

        assert self.trusted is not None
        check_command(message, self.trusted, utc_now(), VerifyPolicy(), self.id)

    def _ping(self, command: Command) -> dict[str, Any]:
        return {"pong": True, "ts": now_ts(), "uptime_s": round(self.clock() - self.booted, 1)}

    def _restart(self, command: Command) -> dict[str, Any]:
        """Harmless: a new boot id and uptime, announced with a fresh online status."""
        self.boot_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        self.booted = self.clock()
        self._after_command.append(self.status(True))
        return {"simulated": True, command.name: "done", "boot_id": self.boot_id}

    def _set_config(self, command: Command) -> dict[str, Any]:
        """As the real agent: the same two argument forms, validated as an agent configuration,
        kept as local overrides with a revision, live sections applied (telemetry interval)."""
        from agent.config import deep_merge, set_config_overrides, validate_layer
        from agent.errors import ConfigError

        try:
            overrides = set_config_overrides(command.args)
            merged = deep_merge(self.local_overrides, overrides)
            old = validate_layer(deep_merge(self._base_config(), self.local_overrides), "local overrides")
            new = validate_layer(deep_merge(self._base_config(), merged), "local overrides (set_config)")
        except ConfigError as exc:
            raise CommandFailed(str(exc)) from exc
        self.local_overrides = merged
        self.local_revision += 1
        self.telemetry_interval_s = new.telemetry.interval_s
        changed = [k for k in type(new).model_fields if getattr(old, k) != getattr(new, k)]
        self._after_command.append(self.shadow_reported())
        return {
            "local_revision": self.local_revision,
            "changed": changed,
            "restart_required": any(k not in LIVE_SECTIONS for k in changed),
        }

    def _base_config(self) -> dict[str, Any]:
        return {
            "device": {"id": self.id, "role": self.role},
            "telemetry": {"interval_s": self.base_interval_s},
        }

    def _get_logs(self, command: Command) -> dict[str, Any]:
        """As the agent's (agent.handlers.get_logs): the last ``lines`` lines and their count."""
        wanted = command.args.get("lines", 100)
        if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 1:
            raise CommandFailed("args.lines must be a positive whole number")
        lines = list(self.logs)[-wanted:]
        return {"lines": lines, "count": len(lines)}

    def _snapshot(self, command: Command) -> dict[str, Any]:
        if self.role != "camera":
            raise CommandFailed("snapshot is only for cameras")
        return {"simulated": True, "width": 1920, "height": 1080, "taken_at": now_ts()}

    def _update(self, command: Command) -> dict[str, Any]:
        """As the agent's ``update``: evaluate the desired release now, even one that failed before."""
        outs, _ = self._ota_out(self.ota.on_release(self.ota.desired, self.clock(), forced=True))
        self._after_command.extend(outs)
        target = self.ota.target
        return {
            "simulated": True,
            "started": self.ota.busy,
            "running": self.version,
            "to": None if target is None else target.get("version"),
        }
