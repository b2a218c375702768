"""``cityedge demo`` end to end: broker, fleet, two real agents, simulated devices, clean Ctrl-C."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest
from rich.console import Console
from sim_helpers import wait_until

import fleet.broker
from cityedge.demo import demo_parts, run_demo
from cityedge.demo_security import TECH_DEVICE
from fleet.broker import INSTALL_HINT, BrokerError, free_port
from provisioning.agentproc import stop_agent
from provisioning.files import DeviceFiles

CLI = str(Path(sys.executable).with_name("cityedge"))
URL_RE = re.compile(r"Dashboard: (http://\S+/)")


class Output:
    """Collects a process's output lines in a thread."""

    def __init__(self, stream: io.TextIOBase) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: io.TextIOBase) -> None:
        for line in stream:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)


def _get(url: str, token: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return json.load(resp)


def _online(base: str, token: str) -> set[str]:
    try:
        devices = _get(base + "api/devices", token)
    except OSError:
        return set()
    return {d["id"] for d in devices if d["online"]}


def _committed(base: str, token: str, device: str, version: str) -> bool:
    try:
        info = _get(f"{base}api/devices/{device}", token)
        events = _get(f"{base}api/devices/{device}/events", token)
    except OSError:
        return False
    kinds = {(e["kind"], (e.get("data") or {}).get("to")) for e in events}
    return bool(info.get("version") == version and ("ota.committed", version) in kinds)


def _board_firmware(base: str, token: str, device: str) -> str:
    try:
        reported = _get(f"{base}api/devices/{device}", token).get("shadow_reported") or {}
    except OSError:
        return ""
    return str(((reported.get("peripherals") or {}).get("iobus") or {}).get("firmware") or "")


def test_demo_runs_everything_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    # A short path to the data dir, as `make demo` has (var/demo), so the printed lines are short.
    short = Path(tempfile.mkdtemp(prefix="ce-")) / "demo"
    (tmp_path / "demo").mkdir()
    short.symlink_to(tmp_path / "demo")
    proc = subprocess.Popen(
        [CLI, "demo", "--devices", "4", "--http", f"127.0.0.1:{port}", "--data-dir", str(short)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    out = Output(proc.stdout)  # type: ignore[arg-type]
    try:
        ready = "Press Ctrl-C to stop everything."
        wait_until(lambda: ready in out.text or proc.poll() is not None, 180, "the demo's start-up text")
        match = URL_RE.search(out.text)
        assert match, out.text
        base = match.group(1)
        # the demo printed a sign-in link with its admin token, also kept in a 0600 file for scripts
        token_file = tmp_path / "demo" / "admin-token"
        token = token_file.read_text().strip()
        assert f"{base}login#{token}" in out.text and token_file.stat().st_mode & 0o077 == 0
        sims = {f"{role}-sim-000{i}" for role in ("kiosk", "cam") for i in (1, 2)}
        want = {"kiosk-demo-0001", "cam-demo-0001", "gw-demo-0001", *sims}
        wait_until(lambda: want <= _online(base, token), 60, f"{sorted(want)} online in /api/devices")
        # the demo's update: the launcher-run device moves to the second release and says so
        wait_until(
            lambda: _committed(base, token, "gw-demo-0001", "0.1.1"), 120, "gw-demo-0001 committed 0.1.1"
        )
        # ... with its I/O board flashed to the firmware 0.1.1 carries (after the health gate)
        wait_until(
            lambda: _board_firmware(base, token, "gw-demo-0001").endswith("+demo"), 60, "new board firmware"
        )
        _technician_path(out.text, base, token, tmp_path / "demo")
        _rollout_path(out.text)
        _snapshot_path(out.text)
        family = psutil.Process(proc.pid).children(recursive=True)
        assert len(family) >= 5  # mosquitto, fleet, two agents, simulator

        sim = next(p for p in family if " sim --broker " in " ".join(p.cmdline()))
        sim.kill()
        wait_until(lambda: f"sim (pid {sim.pid}) exited" in out.text, 10, "the dead simulator reported")
        assert "last lines of" in out.text and proc.poll() is None  # not essential: the demo goes on

        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, out.text
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_until(lambda: "demo stopped cleanly" in out.text, 5, "the goodbye line")
    assert "Traceback" not in out.text, out.text
    time.sleep(0.2)
    leftovers = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert leftovers == [], [p.cmdline() for p in leftovers]


def _technician_commands(text: str) -> dict[str, list[str]]:
    """The technician's commands the demo printed (backslash continuations joined), by verb."""
    start = text.index("Technician: enrol one more device")
    lines = text[start:].splitlines()[1:]
    commands: dict[str, list[str]] = {}
    current = ""
    for line in lines:
        if not line.startswith("  "):
            break
        current += line.strip().rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            argv = current.split()
            assert argv[0] == "cityedge", argv
            commands[argv[2]] = [CLI, *argv[1:]]
            current = ""
    return commands


def _run80(argv: list[str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"}
    )
    for line in (done.stdout + done.stderr).splitlines():
        assert len(line) <= 80, f"wider than a serial console ({len(line)}): {line!r}"
    return done


def _technician_path(text: str, base: str, token: str, demo_dir: Path) -> None:
    """A new technician copies the demo's lines: the device enrols over mTLS with signed commands,
    passes every selftest check including the I/O board, and its label is printed."""
    printed = text[text.index("Technician: enrol one more device") :].splitlines()
    assert all(len(line) <= 80 for line in printed[:12]), printed[:12]
    commands = _technician_commands(text)
    assert set(commands) == {"enroll", "selftest", "label"}, commands
    device_dir = Path(commands["enroll"][commands["enroll"].index("--data-dir") + 1])
    enrolled = _run80(commands["enroll"])
    try:
        assert enrolled.returncode == 0, enrolled.stdout + enrolled.stderr
        wait_until(lambda: TECH_DEVICE in _online(base, token), 60, "the enrolled device online")
        config = (device_dir / "agent.toml").read_text()
        assert "require_signature = true" in config and "mqtts://" in config
        wait_until(lambda: _selftest_ok(commands["selftest"]), 60, "a passing selftest")
        as_json = subprocess.run(
            [*commands["selftest"], "--json"], capture_output=True, text=True, timeout=60
        )
        report = json.loads(as_json.stdout)  # for scripts: not a screen
        checks = {c["name"]: c for c in report["checks"]}
        assert checks["broker"]["status"] == "ok" and "over mTLS" in checks["broker"]["detail"]
        assert checks["ioboard"]["status"] == "ok", checks["ioboard"]
        assert "tamper closed" in checks["ioboard"]["detail"]
        assert _run80(commands["selftest"]).returncode == 0
        # The demo cabinet's door, opened from the printed line: the fleet hears of it.
        door = printed[printed.index(next(p for p in printed if p.startswith("Open the cabinet door"))) + 1]
        opened = _run80([CLI, *door.split()[1:]])
        assert opened.returncode == 0, opened.stderr
        wait_until(lambda: _has_event(base, token, TECH_DEVICE, "cabinet.tamper"), 60, "cabinet.tamper")
        assert _run80(commands["selftest"]).returncode == 1  # open cabinet: the I/O board check fails
        label = _run80(commands["label"])
        assert label.returncode == 0 and Path(commands["label"][-1]).stat().st_size > 1000
        # The fleet's command reaches it signed (the device refuses unsigned ones).
        ping = subprocess.run(
            capture_output=True,
            text=True,
            timeout=60,
            args=[
                CLI,
                "fleet",
                "command",
                TECH_DEVICE,
                "ping",
                "--wait",
                "--timeout",
                "30",
                "--api",
                base.rstrip("/"),
                "--token-file",
                str(demo_dir / "admin-token"),
            ],
        )
        assert ping.returncode == 0 and "pong" in ping.stdout, ping.stdout + ping.stderr
    finally:
        stop_agent(DeviceFiles(device_dir))


def _snapshot_path(text: str) -> None:
    """The printed snapshot command gets the demo camera's blurred view from its camera process."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("The camera's view: "))
    argv = [CLI, *shlex.split(lines[at + 1])[1:], "--json"]

    answers: list[dict[str, Any]] = []

    def answered() -> bool:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        answers.append(json.loads(done.stdout) if done.stdout.strip() else {"error": done.stderr})
        return answers[-1].get("status") == "ok"

    wait_until(answered, 90, "a snapshot from the demo camera's process")
    result = answers[-1]["result"]
    assert result["content_type"] == "image/jpeg" and result["image"].startswith("/devices/cam-demo-0001/")
    assert "data" not in result and result["width"] <= 640


def _rollout_path(text: str) -> None:
    """The printed rollout over the simulated devices starts, and its first wave is targeted."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("Roll 0.1.1 out over the simulated"))
    start, status = (shlex.split(line) for line in lines[at + 1 : at + 3])
    assert start[:3] == ["cityedge", "rollout", "start"] and status[:3] == ["cityedge", "rollout", "status"]
    done = subprocess.run([CLI, *start[1:], "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    rollout = json.loads(done.stdout)
    assert rollout["planned"] == 4 and rollout["selector"] == "id=*-sim-*", rollout

    def targeted() -> bool:
        shown = subprocess.run([CLI, *status[1:], "--json"], capture_output=True, text=True, timeout=60)
        waves = json.loads(shown.stdout)[0]["waves"] if shown.returncode == 0 else []
        return bool(waves) and waves[0]["targeted"] >= 1

    wait_until(targeted, 30, "the rollout's first wave targeted")


def _has_event(base: str, token: str, device: str, kind: str) -> bool:
    try:
        return any(e["kind"] == kind for e in _get(f"{base}api/devices/{device}/events", token))
    except OSError:
        return False


def _selftest_ok(argv: list[str]) -> bool:
    return subprocess.run([*argv, "--json"], capture_output=True, timeout=60).returncode == 0


def test_demo_without_mosquitto_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing() -> str:
        raise BrokerError(INSTALL_HINT)

    monkeypatch.setattr(fleet.broker, "find_mosquitto", missing)
    buf = io.StringIO()
    code = run_demo(2, f"127.0.0.1:{free_port()}", tmp_path / "demo", Console(file=buf, width=200))
    assert code == 1
    assert "apt-get install -y mosquitto" in buf.getvalue()
    assert not (tmp_path / "demo").exists()


def test_demo_refuses_a_busy_dashboard_port(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        buf = io.StringIO()
        code = run_demo(2, f"127.0.0.1:{port}", tmp_path / "demo", Console(file=buf, width=200))
    assert code == 1
    assert f"cannot serve the dashboard on 127.0.0.1:{port}" in buf.getvalue()


def test_demo_parts_are_a_plain_list_of_named_commands() -> None:
    names = [p.name for p in demo_parts()]
    assert names[0] == "fleet" and {"agent-kiosk", "agent-camera", "sim"} <= set(names)
    assert len(names) == len(set(names))
