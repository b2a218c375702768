"""``cityedge fleet`` clients against a served fleet, and ``cityedge fleet serve`` as a process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from fleet_helpers import FakeDevice, MakeDevice, make_token, serve_http, wait_for
from typer.testing import CliRunner

from fleet.api import create_app
from fleet.auth.tokens import create_token
from fleet.broker import MosquittoBroker, free_port
from fleet.cli import register
from fleet.service import FleetService

CLI = str(Path(sys.executable).with_name("cityedge"))


@pytest.fixture
def db_url(tmp_path: Path) -> str:  # the clients only see the API: one database is enough
    return f"sqlite:///{tmp_path / 'fleet.db'}"


@pytest.fixture
def api(fleet: FleetService, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The served fleet API; the CLI finds an admin token in CITYEDGE_TOKEN."""
    monkeypatch.setenv("CITYEDGE_TOKEN", make_token(fleet, "admin"))
    with serve_http(create_app(fleet)) as url:
        yield url


def cli(*args: str, env: dict[str, str] | None = None) -> Any:
    app = typer.Typer()
    register(app)
    return CliRunner().invoke(app, list(args), env=env)


def refuse(command: dict[str, Any]) -> dict[str, Any]:
    return {"id": command["id"], "status": "error", "error": "camera is busy"}


@pytest.fixture
def devices(fleet: FleetService, make_device: MakeDevice) -> list[FakeDevice]:
    kiosk = make_device("kiosk-cli-0001", role="kiosk").connect()
    camera = make_device("cam-cli-0002", role="camera", on_command=refuse).connect()
    silent = make_device("cam-cli-0003", on_command=None).connect()
    camera.telemetry(cpu_pct=61.0)
    camera.event("traffic.count", cars=4)
    silent.crash()
    wait_for(lambda: fleet.store.events(camera.id), what="event stored")
    wait_for(lambda: not fleet.store.device(silent.id)["online"], what="offline")  # type: ignore[index]
    return [kiosk, camera, silent]


def test_devices(api: str, devices: list[FakeDevice]) -> None:
    result = cli("fleet", "devices", "--api", api)
    assert result.exit_code == 0, result.output
    assert "kiosk-cli-0001" in result.output and "cam-cli-0002" in result.output and "61%" in result.output
    online = json.loads(cli("fleet", "devices", "--api", api, "--json", "--online").output)
    assert sorted(d["id"] for d in online) == ["cam-cli-0002", "kiosk-cli-0001"]
    cameras = cli("fleet", "devices", "--json", "--role", "camera", env={"CITYEDGE_FLEET_URL": api})
    assert sorted(d["id"] for d in json.loads(cameras.output)) == ["cam-cli-0002", "cam-cli-0003"]


def test_command(api: str, devices: list[FakeDevice]) -> None:
    ok = cli(
        "fleet",
        "command",
        "kiosk-cli-0001",
        "ping",
        "--arg",
        "n=5",
        "--arg",
        "who=me",
        "--wait",
        "--api",
        api,
    )
    assert ok.exit_code == 0, ok.output
    assert " ok " in ok.output and '"n": 5' in ok.output and '"who": "me"' in ok.output
    error = cli("fleet", "command", "cam-cli-0002", "snapshot", "--wait", "--json", "--api", api)
    assert error.exit_code == 1
    assert json.loads(error.output)["error"] == "camera is busy"
    silent = cli("fleet", "command", "cam-cli-0003", "ping", "--wait", "--timeout", "0.5", "--api", api)
    assert silent.exit_code == 2 and "no answer" in silent.output
    queued = cli("fleet", "command", "kiosk-cli-0001", "ping", "--api", api)
    assert queued.exit_code == 0 and len(queued.output.strip()) == 26  # a ULID
    unknown = cli("fleet", "command", "nobody-0001", "ping", "--api", api)
    assert unknown.exit_code == 1 and "not known" in unknown.output
    bad = cli("fleet", "command", "kiosk-cli-0001", "ping", "--arg", "novalue", "--api", api)
    assert bad.exit_code == 1 and "KEY=VALUE" in bad.output


def test_events(api: str, devices: list[FakeDevice]) -> None:
    table = cli("fleet", "events", "cam-cli-0002", "--api", api)
    assert table.exit_code == 0 and "traffic.count" in table.output
    rows = json.loads(cli("fleet", "events", "cam-cli-0002", "--json", "--api", api).output)
    assert [r["data"] for r in rows] == [{"cars": 4}]


def test_token_from_env_or_file(
    api: str, fleet: FleetService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    viewer = make_token(fleet, "viewer")
    monkeypatch.delenv("CITYEDGE_TOKEN")
    none = cli("fleet", "devices", "--api", api)
    assert none.exit_code == 1 and "401" in none.output and "CITYEDGE_TOKEN" in none.output
    token_file = tmp_path / "token"
    token_file.write_text(viewer + "\n")
    token_file.chmod(0o644)
    loose = cli("fleet", "devices", "--api", api, "--token-file", str(token_file))
    assert loose.exit_code == 1 and "chmod 600" in loose.output and viewer not in loose.output
    token_file.chmod(0o600)
    assert cli("fleet", "devices", "--api", api, "--token-file", str(token_file), "--json").exit_code == 0
    denied = cli("fleet", "command", "kiosk-cli-0001", "ping", "--api", api, "--token-file", str(token_file))
    assert denied.exit_code == 1 and "403" in denied.output and "commands:send" in denied.output
    env = cli("fleet", "devices", "--api", api, "--json", env={"CITYEDGE_TOKEN": viewer})
    assert env.exit_code == 0, env.output
    bad = cli("fleet", "devices", "--api", api, env={"CITYEDGE_TOKEN": "cet_not-a-token"})
    assert bad.exit_code == 1 and "401" in bad.output and "unknown API token" in bad.output


def test_unreachable_api() -> None:
    result = cli("fleet", "devices", "--api", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 1 and "cannot reach the fleet API" in result.output


# --- cityedge fleet serve, as a real process -----------------------------------------------------


class ServeProcess:
    def __init__(self, broker: MosquittoBroker, workdir: Path) -> None:
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}"
        self.args = [
            CLI,
            "fleet",
            "serve",
            "--broker",
            broker.url,
            "--db",
            f"sqlite:///{workdir / 'db' / 'fleet.db'}",
            "--http",
            f"127.0.0.1:{self.port}",
            "--worker-id",
            "fleet-proc",
            "--data-dir",
            str(workdir / "fleet"),
        ]
        self.log = workdir / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        token = create_token(f"sqlite:///{workdir / 'db' / 'fleet.db'}", "viewer", "test-viewer", "1h")
        self.headers = {"Authorization": f"Bearer {token}"}

    def start(self) -> ServeProcess:
        for _ in range(3):
            seen = self.log.stat().st_size if self.log.exists() else 0
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(
                    self.args, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ)
                )
            wait_for(self._up_or_exited, timeout=30, what=f"fleet serve up (log: {self.log})")
            said = self.log.read_bytes()[seen:].decode(errors="replace")
            if self.proc.poll() is None or "address already in use" not in said:
                break
            self._move()  # another program took the port in between: on a new one
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
        return self

    def _move(self) -> None:
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}"
        self.args[self.args.index("--http") + 1] = f"127.0.0.1:{self.port}"

    def _up_or_exited(self) -> bool:
        return self.proc is None or self.proc.poll() is not None or self._healthy()

    def _healthy(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
        try:
            return httpx.get(f"{self.api}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(f"{self.api}/api/stats", headers=self.headers, timeout=5).json()
        return result

    def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(15)


def test_serve_process_killed_mid_stream_loses_nothing(
    broker: MosquittoBroker, tmp_path: Path, make_device: MakeDevice
) -> None:
    fleet = ServeProcess(broker, tmp_path).start()
    device = make_device("cam-proc-0001").connect()
    total = 600
    sent = threading.Event()

    def stream() -> None:
        for _ in range(total):
            device.send(device.envelope(), wait=False)
            time.sleep(0.002)
        sent.set()

    threading.Thread(target=stream, daemon=True).start()
    wait_for(lambda: fleet.stats()["ingest"]["committed_total"] >= 100, what="first events committed")
    assert fleet.signal(signal.SIGKILL) == -signal.SIGKILL
    fleet.start()
    assert sent.wait(30)
    wait_for(lambda: fleet.stats()["events"] == total, timeout=30, what=f"all {total} events stored")
    gaps = httpx.get(
        f"{fleet.api}/api/devices/{device.id}/gaps", params={"open_only": "true"}, headers=fleet.headers
    )
    assert gaps.json() == []
    stats = fleet.stats()
    assert stats["devices_online"] == 1
    assert fleet.signal(signal.SIGTERM) == 0  # a graceful stop drains and exits cleanly
    assert "stopped" in fleet.log.read_text()


def test_serve_refuses_bad_settings(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/f.db"
    bad = cli("fleet", "serve", "--broker", "http://x", "--db", db)
    assert bad.exit_code == 1 and "mqtt://" in bad.output
    bad_http = cli("fleet", "serve", "--http", "8080", "--db", db)
    assert bad_http.exit_code == 1 and "HOST:PORT" in bad_http.output
    writer = cli("fleet", "serve", "--writer", "fork", "--db", db)
    assert writer.exit_code == 1 and "--writer" in writer.output
    plugin = cli("fleet", "serve", "--rpc", "dossier=fleet.nowhere:make", "--db", db)
    assert plugin.exit_code == 1 and "cannot import 'fleet.nowhere'" in plugin.output
    balena = cli("fleet", "serve", "--rollout-backend", "balena", "--balena-fleet", "org/kiosks", "--db", db)
    assert balena.exit_code == 1 and "balena_token_file" in balena.output
    down = cli("fleet", "serve", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--db", db)
    assert down.exit_code == 1 and "cannot reach the broker" in down.output
