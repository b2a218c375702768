"""Helpers for the fleet tests: a small paho "device", a polling wait, API tokens for the tests."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from fleet.auth.tokens import issue
from fleet.broker import MosquittoBroker, free_port
from fleet.service import FleetService
from protocol.signing import sign
from protocol.timefmt import now_ts
from protocol.topics import Topics


def _up_or_dead(server: Any, thread: threading.Thread) -> bool:
    return bool(server.started) or not thread.is_alive()


@contextlib.contextmanager
def serve_http(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    for _attempt in range(5):  # a free port can be taken by another process before uvicorn binds it
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_for(functools.partial(_up_or_dead, server, thread), timeout=60, what="HTTP server")
        if server.started:
            break
        thread.join(10)
    else:
        raise AssertionError("uvicorn could not bind a free port five times")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def make_token(
    service: FleetService, role: str = "admin", *, expires: timedelta | None = timedelta(hours=1)
) -> str:
    """A new API token with ``role`` in ``service``'s store (a unique name per call)."""
    token, _info = issue(
        service.store.writer, name=f"test-{role}-{uuid.uuid4().hex[:8]}", role=role, expires=expires
    )
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def admin_headers(service: FleetService) -> dict[str, str]:
    """``Authorization`` headers with a fresh admin token of ``service``'s fleet."""
    return bearer(make_token(service, "admin"))


def admin_client(service: FleetService, base_url: str, **kwargs: Any) -> httpx.Client:
    """An httpx client of ``base_url`` carrying a fresh admin token of ``service``'s fleet."""
    return httpx.Client(base_url=base_url, headers=admin_headers(service), **kwargs)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


CommandHandler = Callable[[dict[str, Any]], dict[str, Any]]


def pong(command: dict[str, Any]) -> dict[str, Any]:
    if command["name"] == "ping":
        return {"id": command["id"], "status": "ok", "result": {"pong": True, "args": command["args"]}}
    return {"id": command["id"], "status": "error", "error": f"unknown command {command['name']!r}"}


class ContractCommands:
    """A FakeDevice's default answers, as the contract wants them (tests/contract checks them
    against the agent and the simulator): one answer per id (a re-delivered id gets the stored
    answer back and is not run again); expired, malformed or replayed (nonce) commands
    ``rejected``; ``ping`` (its result echoes the args); ``set_config`` read and validated as the
    agent reads it; other names ``error``. Signatures are not checked: the fleet tests play an
    unsigned development fleet."""

    def __init__(self) -> None:
        self.answers: dict[str, dict[str, Any]] = {}
        self.nonces: dict[str, str] = {}
        self.executed = 0
        self.overrides: dict[str, Any] = {}
        self.revision = 0

    def __call__(self, command: dict[str, Any]) -> dict[str, Any]:
        cid = command.get("id")
        if isinstance(cid, str) and cid in self.answers:
            return self.answers[cid]
        answer = self._answer(command)
        self.answers[answer["id"]] = answer
        return answer

    def _answer(self, command: dict[str, Any]) -> dict[str, Any]:
        from protocol.errors import PayloadError
        from protocol.models import Command, decode
        from protocol.timefmt import parse_ts, utc_now

        try:
            cmd = decode(Command, json.dumps(command).encode())
        except PayloadError as exc:
            return {"id": str(command.get("id")), "status": "rejected", "result": {}, "error": str(exc)}
        if parse_ts(cmd.expires_at) <= utc_now():
            return {"id": cmd.id, "status": "rejected", "result": {}, "error": f"expired at {cmd.expires_at}"}
        if cmd.nonce in self.nonces:
            error = f"replayed nonce (first used by {self.nonces[cmd.nonce]})"
            return {"id": cmd.id, "status": "rejected", "result": {}, "error": error}
        self.nonces[cmd.nonce] = cmd.id
        if cmd.name == "ping":
            self.executed += 1
            return pong(command)
        if cmd.name == "set_config":
            return self._set_config(cmd.id, cmd.args)
        return {"id": cmd.id, "status": "error", "result": {}, "error": f"unknown command {cmd.name!r}"}

    def _set_config(self, cid: str, args: dict[str, Any]) -> dict[str, Any]:
        from agent.config import deep_merge, set_config_overrides, validate_layer
        from agent.errors import ConfigError

        base = {"device": {"id": "fake-0001", "role": "camera"}}
        try:
            merged = deep_merge(self.overrides, set_config_overrides(args))
            old = validate_layer(deep_merge(base, self.overrides), "local overrides")
            new = validate_layer(deep_merge(base, merged), "local overrides (set_config)")
        except ConfigError as exc:
            return {"id": cid, "status": "error", "result": {}, "error": str(exc)}
        self.executed += 1
        self.overrides = merged
        self.revision += 1
        changed = [k for k in type(new).model_fields if getattr(old, k) != getattr(new, k)]
        live = ("telemetry", "logging", "renewal")
        result = {
            "local_revision": self.revision,
            "changed": changed,
            "restart_required": any(k not in live for k in changed),
        }
        return {"id": cid, "status": "ok", "result": result}


class FakeDevice:
    """A device as the fleet sees it: status with a last will, telemetry, events, commands, RPC."""

    def __init__(
        self,
        broker: MosquittoBroker,
        device_id: str,
        *,
        role: str = "camera",
        version: str = "1.2.3",
        on_command: CommandHandler | Literal["contract"] | None = "contract",
        topics: Topics | None = None,
    ) -> None:
        self.broker = broker
        self.id = device_id
        self.role = role
        self.version = version
        self.on_command = ContractCommands() if on_command == "contract" else on_command
        self.topics = topics or Topics()
        self.seq = 0
        self.telemetry_seq = 0
        self.commands: list[dict[str, Any]] = []
        self.rpc_answers: dict[str, dict[str, Any]] = {}
        self._rpc_event = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5)
        self.client.will_set(self.topics.status(device_id), self._status(False), qos=1, retain=True)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)
        self.client.on_subscribe = lambda *a: self._subscribed.set()

    def _status(self, online: bool) -> bytes:
        body = {"online": online, "ts": now_ts(), "role": self.role, "version": self.version, "boot_id": "b1"}
        return json.dumps(body).encode()

    def connect(self, *, announce: bool = True) -> FakeDevice:
        self.client.connect(self.broker.config.host, self.broker.config.port)
        self.client.loop_start()
        self.client.subscribe([(self.topics.commands_req(self.id), 1), (self.topics.rpc_res(self.id), 1)])
        assert self._subscribed.wait(5), "device could not subscribe"
        if announce:
            self.status(True)
        return self

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(5)

    def status(self, online: bool) -> None:
        self.publish(self.topics.status(self.id), self._status(online), retain=True)

    def telemetry(self, **metrics: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ts": now_ts(),
            "seq": self.telemetry_seq,
            "uptime_s": 12.5,
            "cpu_pct": 21.0,
            "mem_pct": 43.0,
            "disk_pct": 10.0,
            "temp_c": 51.5,
        }
        body.update(metrics)
        self.telemetry_seq += 1
        self.publish(self.topics.telemetry(self.id), json.dumps(body))
        return body

    def envelope(self, kind: str = "test.event", *, seq: int | None = None, **data: Any) -> dict[str, Any]:
        if seq is None:
            seq = self.seq
            self.seq += 1
        return {
            "id": str(uuid.uuid4()),
            "seq": seq,
            "ts": now_ts(),
            "device": self.id,
            "kind": kind,
            "data": data,
        }

    def send(self, envelope: dict[str, Any], *, wait: bool = True) -> dict[str, Any]:
        topic = self.topics.event(self.id, envelope["kind"])
        info = self.client.publish(topic, json.dumps(envelope), qos=1)
        if wait:
            info.wait_for_publish(5)
        return envelope

    def event(self, kind: str = "test.event", *, seq: int | None = None, **data: Any) -> dict[str, Any]:
        return self.send(self.envelope(kind, seq=seq, **data))

    def signed_event(self, kind: str, key: Ed25519PrivateKey, *, seq: int | None = None, **data: Any) -> Any:
        """An event signed with ``key`` as the contract requires for evidence."""
        return self.send(sign(self.envelope(kind, seq=seq, **data), key, self.id))

    def rpc(
        self, service: str, method: str, params: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> Any:
        request_id = uuid.uuid4().hex
        body = {"id": request_id, "service": service, "method": method, "params": params or {}}
        self.publish(self.topics.rpc_req(self.id), json.dumps(body))
        with self._rpc_event:
            assert self._rpc_event.wait_for(lambda: request_id in self.rpc_answers, timeout), "no rpc answer"
            return self.rpc_answers[request_id]

    def crash(self) -> None:
        """Leave as a device that lost power would look to the broker: the last will goes out."""
        self.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
        self.client.loop_stop()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        if msg.topic == self.topics.commands_req(self.id):
            self.commands.append(body)
            if self.on_command is not None:
                answer = self.on_command(body)
                client.publish(self.topics.commands_res(self.id), json.dumps(answer), qos=1)
        elif msg.topic == self.topics.rpc_res(self.id):
            with self._rpc_event:
                self.rpc_answers[body["id"]] = body
                self._rpc_event.notify_all()


FleetFactory = Callable[..., FleetService]
MakeDevice = Callable[..., FakeDevice]


CHROMIUM = "/usr/bin/chromium"


@contextlib.contextmanager
def dashboard_tab(fleet: FleetService, height: int = 900) -> Iterator[tuple[Any, str, list[str]]]:
    """A real Chromium tab, signed in as admin, on the fleet's app served over HTTP: (tab, base URL,
    console and page errors). Skips without Chromium, fails under CI."""
    import pytest

    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed (CI): sudo apt-get install -y chromium")
        pytest.skip("Chromium is not installed: sudo apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    from fleet.api import create_app

    with serve_http(create_app(fleet)) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            tab = browser.new_page(
                extra_http_headers=admin_headers(fleet), viewport={"width": 1400, "height": height}
            )
            errors: list[str] = []
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: errors.append(str(e)))
            yield tab, url, errors
        finally:
            browser.close()
