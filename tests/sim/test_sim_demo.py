"""``cityedge demo`` end to end: broker, fleet, two real agents, simulated devices, clean Ctrl-C."""

from __future__ import annotations

import io
import json
import re
import signal
import socket
import subprocess
import sys
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
from fleet.broker import INSTALL_HINT, BrokerError, free_port

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


def test_demo_runs_everything_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [CLI, "demo", "--devices", "4", "--http", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "demo")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    out = Output(proc.stdout)  # type: ignore[arg-type]
    try:
        wait_until(lambda: bool(URL_RE.search(out.text)) or proc.poll() is not None, 180, "dashboard URL")
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
        family = psutil.Process(proc.pid).children(recursive=True)
        assert len(family) >= 5  # mosquitto, fleet, two agents, simulator

        sim = next(p for p in family if " sim " in " ".join(p.cmdline()) + " ")
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
