"""Helpers for the agent tests: the agent as a real subprocess, and an MQTT probe playing the city."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import tomli_w
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.errors import LocalApiError
from agent.localapi import LocalApiClient
from agent.truststore import TrustStore
from fleet.broker import MosquittoBroker
from protocol.timefmt import format_ts, utc_now
from protocol.trust import FleetKey, RootKey, build_key_list, key_id, sign_key_list

REPO = Path(__file__).resolve().parents[2]
PREFIX = "city/v1"


def enrol(data_dir: Path, key: Ed25519PrivateKey | None = None) -> tuple[Ed25519PrivateKey, str]:
    """Install a fleet trust store in ``data_dir`` (as enrolment does) naming ``key`` (default: a new
    one) as the fleet command key; returns the key and its kid, to sign what the agent will accept."""
    root = Ed25519PrivateKey.generate()
    key = key or Ed25519PrivateKey.generate()
    kid = key_id("fleet", key.public_key())
    now = utc_now()
    key_list = sign_key_list(
        build_key_list(1, now + timedelta(days=30), [FleetKey(kid, key.public_key(), None)]), root
    )
    TrustStore.install(data_dir / "trust", RootKey.from_private(root), key_list, now)
    return key, kid


def fast_config(
    device_id: str, broker_url: str, data_dir: Path, **sections: dict[str, Any]
) -> dict[str, Any]:
    """A config tuned for tests: quick telemetry and reconnects."""
    config: dict[str, Any] = {
        "data_dir": str(data_dir),
        "device": {"id": device_id, "role": "kiosk"},
        "mqtt": {"broker": broker_url, "backoff_min_s": 0.2, "backoff_max_s": 1.0, "keepalive_s": 5},
        "telemetry": {"interval_s": 0.5},
        "logging": {"level": "INFO"},
        "commands": {"require_signature": False},  # development: the test plays an unsigned fleet
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config


class AgentProc:
    """``python -m agent run --config FILE`` as a child process."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.workdir = workdir
        self.config = config
        self.device_id: str = config["device"]["id"]
        self.data_dir = Path(config["data_dir"])
        self.config_path = workdir / f"{self.device_id}.toml"
        self.config_path.write_text(tomli_w.dumps(config))
        self.stderr_path = workdir / f"{self.device_id}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> AgentProc:
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(self.config_path)],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
                env=env,
            )
        return self

    @property
    def client(self) -> LocalApiClient:
        return LocalApiClient(self.data_dir, timeout=10)

    def status(self) -> dict[str, Any]:
        return self.client.status()

    def wait_status(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.stderr()}")
            try:
                current = self.status()
            except LocalApiError as exc:
                last = exc
            else:
                last = current
                if predicate(current):
                    return current
            time.sleep(0.1)
        raise AssertionError(f"agent status never matched; last: {last}\n{self.stderr()[-3000:]}")

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        return self.wait_status(lambda s: True, timeout)

    def wait_connected(self, timeout: float = 30.0) -> dict[str, Any]:
        """Connected, and its subscriptions acknowledged: a command published now reaches it."""
        return self.wait_status(lambda s: bool(s["link"]["connected"] and s["link"]["subscribed"]), timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def log(self) -> str:
        path = self.data_dir / "logs" / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


class Probe:
    """An MQTT client standing in for the city: records everything under the device's subtree."""

    def __init__(
        self, broker: MosquittoBroker, device_id: str, name: str = "probe", persistent: bool = False
    ):
        self.device_id = device_id
        self.root = f"{PREFIX}/devices/{device_id}"
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"{name}-{device_id}"[:60], protocol=mqtt.MQTTv5
        )
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, _u, _f, _r, _p: c.subscribe(f"{self.root}/#", qos=1)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda _c, _u, _m, _r, _p: subscribed.set()
        props = None
        if persistent:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600
        self.client.connect(
            broker.config.host, broker.config.port, clean_start=not persistent, properties=props
        )
        self.client.loop_start()
        if not subscribed.wait(10):  # so that nothing published after this returns is missed
            raise AssertionError("the probe could not subscribe")

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def on(self, family: str) -> list[tuple[bytes, bool]]:
        topic = f"{self.root}/{family}"
        with self._cond:
            return [(p, r) for t, p, r in self.messages if t == topic]

    def wait_for(
        self,
        family: str,
        predicate: Callable[[dict[str, Any]], bool] = lambda _m: True,
        timeout: float = 20.0,
    ) -> dict[str, Any]:
        """The first JSON message on ``family`` (e.g. "status", "events/+") that matches."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for topic, payload, _retain in self.messages:
                    if _matches(topic, f"{self.root}/{family}"):
                        with contextlib.suppress(ValueError):
                            body = json.loads(payload)
                            if isinstance(body, dict) and predicate(body):
                                return body
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching message on {family} within {timeout} s")
                self._cond.wait(min(left, 0.2))

    def publish(self, family: str, payload: bytes | str, retain: bool = False) -> None:
        info = self.client.publish(f"{self.root}/{family}", payload, qos=1, retain=retain)
        info.wait_for_publish(10)

    def command(
        self, name: str, args: dict[str, Any] | None = None, *, cid: str, expires_in: float = 120
    ) -> str:
        now = utc_now()
        body = {
            "id": cid,
            "name": name,
            "args": args or {},
            "issued_at": format_ts(now - timedelta(seconds=1)),
            "expires_at": format_ts(now + timedelta(seconds=expires_in)),
            "nonce": f"n-{cid}",
        }
        self.publish("commands/req", json.dumps(body))
        return cid

    def answers(self, cid: str) -> list[dict[str, Any]]:
        out = []
        for payload, _retain in self.on("commands/res"):
            body = json.loads(payload)
            if body.get("id") == cid:
                out.append(body)
        return out

    def answer(self, cid: str, timeout: float = 20.0) -> dict[str, Any]:
        return self.wait_for("commands/res", lambda m: m.get("id") == cid, timeout)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _matches(topic: str, pattern: str) -> bool:
    if pattern.endswith("/+"):
        return topic.startswith(pattern[:-1]) and "/" not in topic[len(pattern) - 1 :]
    return topic == pattern
