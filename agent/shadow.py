"""Device shadow: retained ``shadow/reported`` out, ``shadow/desired`` in.

Reported: ``{"ts","config_version","software":{...},"peripherals":{...}}`` plus the local
overrides (``set_config``) and the last desired-state error, published retained (QoS 1) on every
connect and whenever its content changes.

Desired: ``{"version","config","release"}``. Versions not newer than the applied one are ignored
(the retained message comes back on every reconnect). A newer one goes through the same verifier
as commands, then its ``config`` is applied: the ``agent`` member is a layer of agent settings
(validated like the config file), every other member is a role section handed to local apps via
``desired_config()``. The applied state is persisted in ``DATA_DIR/shadow.json``.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from agent.errors import CommandRejected, ConfigError, LinkDown
from agent.link import Link
from agent.state import read_json, write_json
from protocol.models import ShadowDesired, decode
from protocol.timefmt import now_ts

log = logging.getLogger(__name__)

STATE_FILE = "shadow.json"


class Verifier(Protocol):
    def verify(self, message: Mapping[str, Any]) -> None: ...


class Shadow:
    def __init__(
        self,
        data_dir: Path,
        link: Link,
        software: dict[str, Any],
        verifier: Verifier,
        apply_agent: Callable[[dict[str, Any]], None],
        max_bytes: int,
    ) -> None:
        self.link = link
        self.software = software
        self._verifier = verifier
        self._apply_agent = apply_agent
        self._max_bytes = max_bytes
        self._path = data_dir / STATE_FILE
        state = read_json(self._path)
        self.applied_version: int | None = state.get("config_version")
        self._config: dict[str, Any] = dict(state.get("config") or {})
        self.release: dict[str, Any] | None = state.get("release")
        self._peripherals: dict[str, Any] = {}
        self._local: dict[str, Any] = {}
        self._local_revision = 0
        self.desired_error: str | None = None
        self._lock = threading.Lock()
        self._last: str | None = None
        self._topic = link.topics.shadow_reported(link.device_id)
        self._desired_topic = link.topics.shadow_desired(link.device_id)
        self._release_hooks: list[Callable[[dict[str, Any] | None], None]] = []

    @property
    def config_version(self) -> int:
        return self.applied_version or 0

    @property
    def agent_layer(self) -> dict[str, Any]:
        """The ``agent`` member of the applied desired config (a layer of agent settings)."""
        agent = self._config.get("agent")
        return copy.deepcopy(agent) if isinstance(agent, dict) else {}

    def desired_config(self, role: str | None = None) -> dict[str, Any]:
        """The applied desired config, or only its ``role`` section."""
        with self._lock:
            if role is None:
                return copy.deepcopy(self._config)
            section = self._config.get(role)
            return copy.deepcopy(section) if isinstance(section, dict) else {}

    def add_release_hook(self, hook: Callable[[dict[str, Any] | None], None]) -> None:
        self._release_hooks.append(hook)

    def reported(self) -> dict[str, Any]:
        with self._lock:
            body: dict[str, Any] = {
                "ts": now_ts(),
                "config_version": self.config_version,
                "software": copy.deepcopy(self.software),
                "peripherals": copy.deepcopy(self._peripherals),
                "local_overrides": copy.deepcopy(self._local),
                "local_revision": self._local_revision,
                "release": copy.deepcopy(self.release),
            }
            if self.desired_error is not None:
                body["desired_error"] = self.desired_error
        return body

    def publish(self, force: bool = False) -> None:
        """Publish reported state (retained) if it changed since the last publish, or if forced."""
        body = self.reported()
        key = json.dumps({k: v for k, v in body.items() if k != "ts"}, sort_keys=True, default=str)
        if not force and key == self._last:
            return
        try:
            payload = json.dumps(body, separators=(",", ":"), default=str).encode()
            self.link.publish(self._topic, payload, qos=1, retain=True)
        except LinkDown:
            self._last = None  # publish again on the next connect
            return
        self._last = key

    def on_connect(self) -> None:
        self.publish(force=True)

    def set_peripherals(self, peripherals: dict[str, Any]) -> None:
        with self._lock:
            self._peripherals.update(peripherals)
        self.publish()

    def set_local(self, overrides: dict[str, Any], revision: int) -> None:
        with self._lock:
            self._local = copy.deepcopy(overrides)
            self._local_revision = revision
        self.publish()

    def handle_desired(self, payload: bytes) -> None:
        """Apply a desired state (raises PayloadError for a malformed one)."""
        desired = decode(ShadowDesired, payload, topic=self._desired_topic, max_bytes=self._max_bytes)
        if self.applied_version is not None and desired.version <= self.applied_version:
            log.debug("desired version %d ignored (applied: %d)", desired.version, self.applied_version)
            return
        message = json.loads(payload)
        try:
            self._verifier.verify(message)
            self._apply_agent(desired.config.get("agent") or {})
        except (CommandRejected, ConfigError) as exc:
            self.desired_error = f"desired version {desired.version} refused: {exc}"
            log.warning("%s", self.desired_error)
            self.publish()
            return
        with self._lock:
            self._config = copy.deepcopy(desired.config)
            self.release = copy.deepcopy(desired.release)
            self.applied_version = desired.version
            self.desired_error = None
        write_json(
            self._path,
            {"config_version": desired.version, "config": desired.config, "release": desired.release},
        )
        log.info("applied desired config version %d", desired.version)
        self.publish()
        for hook in self._release_hooks:
            hook(self.release)
