"""The launcher: `cityedge kiosk supervise` brings the app back after kill -9; systemd units and
Chromium flags say what the kiosk needs (kiosk mode, no error dialogs, no persistent profile)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from fleet.broker import free_port
from kiosk_ui.browser import chromium_argv

UNITS = Path(__file__).resolve().parents[2] / "kiosk_ui" / "systemd"


def health(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=1) as response:
            data: dict[str, Any] = json.loads(response.read())
            return data
    except OSError:
        return None


def wait_health(url: str, timeout: float, not_pid: int | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = health(url)
        if data is not None and data.get("pid") != not_pid:
            return data
        time.sleep(0.1)
    raise AssertionError(f"kiosk app not healthy at {url} within {timeout} s")


def test_supervisor_restarts_the_app_after_kill_9(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    supervisor = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kiosk_ui",
            "supervise",
            "--data-dir",
            str(tmp_path),
            "--http",
            f"127.0.0.1:{port}",
            "--simulate-peripherals",
            "--idle-s",
            "30",
        ],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        first = wait_health(url, 30)
        os.kill(first["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        second = wait_health(url, 10, not_pid=first["pid"])
        assert time.monotonic() - killed_at < 10
        assert second["pid"] != first["pid"]
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(15)
    assert supervisor.returncode == 0
    assert health(url) is None  # the app went down with its supervisor


def test_chromium_runs_as_a_kiosk_without_a_persistent_profile(tmp_path: Path) -> None:
    argv = chromium_argv("/usr/bin/chromium", "http://127.0.0.1:8080/", tmp_path / "profile")
    for flag in ("--kiosk", "--noerrdialogs", "--disable-session-crashed-bubble", "--incognito"):
        assert flag in argv
    assert f"--user-data-dir={tmp_path / 'profile'}" in argv
    assert argv[-1] == "http://127.0.0.1:8080/"


def test_systemd_units_restart_quickly_under_a_watchdog() -> None:
    app = (UNITS / "cityedge-kiosk.service").read_text()
    browser = (UNITS / "cityedge-kiosk-browser.service").read_text()
    for unit in (app, browser):
        assert "Restart=always" in unit and "WatchdogSec=" in unit and "Type=notify" in unit
        restart_sec = int(unit.split("RestartSec=")[1].split()[0])
        assert restart_sec <= 2
    assert "cityedge kiosk serve" in app and "127.0.0.1:8080" in app
    assert "cityedge kiosk browser" in browser and "PrivateTmp=yes" in app
