"""An updatable device for end-to-end tests: a real TUF repository served over HTTP by the fleet's
router, a slot root prepared with ``cityedge agent ota init``, the real launcher running the real
agent, a real mosquitto, and an MQTT probe standing in for the fleet (desired state, events)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
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
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.errors import LocalApiError
from agent.localapi import LocalApiClient
from agent.ota import launcher as boot
from fleet.broker import MosquittoBroker
from protocol.release import manifest_target
from protocol.timefmt import format_ts, utc_now

REPO = Path(__file__).resolve().parents[2]
PREFIX = "city/v1"


def wait_for(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Probe:
    """The city's side of the MQTT contract for one device: publishes desired state, records events."""

    def __init__(self, broker: MosquittoBroker, device_id: str) -> None:
        self.root = f"{PREFIX}/devices/{device_id}"
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._version = 0
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"probe-{device_id}"[:60], protocol=mqtt.MQTTv5
        )
        subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, _u, _f, _r, _p: c.subscribe(f"{self.root}/events/#", qos=1)
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.reconnect_delay_set(1, 2)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600  # persistent: events sent while the broker restarts are kept
        self.client.connect(broker.config.host, broker.config.port, clean_start=False, properties=props)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise AssertionError("the probe could not subscribe")

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with contextlib.suppress(ValueError):
            body = json.loads(msg.payload)
            with self._cond:
                self.events.append(body)
                self._cond.notify_all()

    def desired(self, version: str | None, **extra: Any) -> None:
        """Publish a newer (unsigned: the device runs in development mode) retained desired state."""
        self._version += 1
        release = (
            None if version is None else {"version": version, "target": manifest_target(version), **extra}
        )
        now = utc_now()
        body = {
            "version": self._version,
            "config": {},
            "release": release,
            "issued_at": format_ts(now - timedelta(seconds=1)),
            "expires_at": format_ts(now + timedelta(hours=1)),
            "nonce": f"d-{self._version}",
        }
        info = self.client.publish(f"{self.root}/shadow/desired", json.dumps(body), qos=1, retain=True)
        info.wait_for_publish(10)

    def command(self, name: str, args: dict[str, Any] | None = None) -> None:
        """An (unsigned, development-mode) command to the device."""
        now = utc_now()
        self._version += 1
        body = {
            "id": f"cmd-{self._version}",
            "name": name,
            "args": args or {},
            "issued_at": format_ts(now - timedelta(seconds=1)),
            "expires_at": format_ts(now + timedelta(minutes=5)),
            "nonce": f"c-{self._version}",
        }
        self.client.publish(f"{self.root}/commands/req", json.dumps(body), qos=1).wait_for_publish(10)

    def wait_event(
        self, kind: str, pred: Callable[[dict[str, Any]], bool] = lambda _d: True, timeout: float = 60
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events:
                    if event.get("kind") == kind and pred(event.get("data") or {}):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(e.get("kind"), (e.get("data") or {}).get("to")) for e in self.events]
                    raise AssertionError(f"no {kind} event within {timeout} s; seen: {seen}")
                self._cond.wait(min(left, 0.2))

    def kinds(self, to: str) -> list[str]:
        with self._cond:
            return [str(e["kind"]) for e in self.events if (e.get("data") or {}).get("to") == to]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Repository:
    """A release repository on disk (real TUF metadata) served by the fleet's router over HTTP."""

    def __init__(self, workdir: Path) -> None:
        from ota_repo_helpers import RepoServer, init_test_repo

        self.workdir = workdir
        self.dir, self.offline = init_test_repo(workdir)
        self.server = RepoServer(self.dir).start()
        self.url = self.server.url
        self.rng = random.Random(20261204)

    def publish(self, version: str, files: dict[str, bytes], **manifest: Any) -> None:
        from ota_repo_helpers import publish_bundle

        from fleet.releases.bundle import build_bundle

        src = self.workdir / "src" / version
        sources = []
        for slot_path, data in files.items():
            local = src / slot_path
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
            sources.append((slot_path, local))
        bundle = self.workdir / f"bundle-{version}.tar"
        build_bundle(version, bundle, sources=sources, project_wheel=False, **manifest)
        publish_bundle(self.dir, self.offline, bundle)

    def stop(self) -> None:
        self.server.stop()


class Device:
    """The launcher running the agent from a slot root, as systemd would on a device."""

    def __init__(
        self, workdir: Path, broker: MosquittoBroker, repo: Repository, device_id: str = "gw-ota-0001"
    ) -> None:
        self.workdir = workdir
        self.device_id = device_id
        self.root = workdir / "root"
        self.data = workdir / "data"
        self.scripts = workdir / "scripts"
        self.repo = repo
        self.proc: subprocess.Popen[bytes] | None = None
        self.config_path = workdir / "agent.toml"
        self.log_path = workdir / "launcher.log"
        self.config: dict[str, Any] = {
            "data_dir": str(self.data),
            "device": {"id": device_id, "role": "generic"},
            "mqtt": {"broker": broker.url, "backoff_min_s": 0.2, "backoff_max_s": 1.0, "keepalive_s": 5},
            "telemetry": {"interval_s": 2.0},
            "logging": {"level": "INFO"},
            "commands": {"require_signature": False},
            "ota": {
                "enabled": True,
                "repository_url": repo.url,
                "root": str(self.root),
                "health_timeout_s": 20.0,
                "max_tries": 3,
                "download_retries": 3,
                "download_timeout_s": 10.0,
                "free_space_margin_bytes": 0,
            },
        }

    def configure(self, **ota: Any) -> None:
        self.config["ota"].update(ota)
        self.config_path.write_text(tomli_w.dumps(self.config))

    def provision(self, version: str) -> None:
        """``cityedge agent ota init``: the first release into slot a, through TUF."""
        self.configure()
        trusted = self.repo.dir / "metadata" / "1.root.json"
        done = subprocess.run(
            [sys.executable, "-m", "agent", "ota", "init", "--root", str(self.root),
             "--repository", self.repo.url, "--trusted-root", str(trusted), "--version", version,
             "--data-dir", str(self.data)],
            cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr + done.stdout

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(self.root / "launcher.py"), "--root", str(self.root), "--",
                 "--config", str(self.config_path)],
                cwd=self.workdir, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip

    def launcher_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> dict[str, Any] | None:
        try:
            return dict(LocalApiClient(self.data, timeout=5).status())
        except (LocalApiError, OSError, ValueError):
            return None

    def agent_pid(self) -> int | None:
        try:
            return int((self.data / "agent.lock").read_text().strip())
        except (OSError, ValueError):
            return None

    def wait_running(self, timeout: float = 60) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def up() -> bool:
            info = self.status()
            if info is not None:
                found.update(info)
            return info is not None

        wait_for(up, timeout, f"the agent to answer (launcher log:\n{self.log_tail()})")
        return found

    def wait_version(self, version: str, timeout: float = 90) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def there() -> bool:
            info = self.status()
            ok = (
                info is not None
                and info["version"] == version
                and not boot.read_boot(self.root).get("pending")
            )
            if ok and info is not None:
                found.update(info)
            return ok

        wait_for(there, timeout, f"version {version} committed (launcher log:\n{self.log_tail()})", 0.1)
        return found

    def kill9_agent(self) -> None:
        pid = self.agent_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def kill9_launcher(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def slot_is_complete(self, slot: str) -> str:
        """Re-hash every file of a slot against its manifest; the version it holds."""
        slot_dir = self.root / "slots" / slot
        manifest = json.loads((slot_dir / "manifest.json").read_text())
        for item in manifest["files"]:
            data = (slot_dir / item["path"]).read_bytes()
            assert len(data) == item["length"] and hashlib.sha256(data).hexdigest() == item["sha256"], item
        return str(manifest["version"])
