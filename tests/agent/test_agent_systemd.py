"""The agent under systemd: sd_notify READY/WATCHDOG/STOPPING, and restart by exit code 75."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from agent_helpers import AgentProc, Probe, fast_config

from agent.daemon import RESTART_EXIT_CODE
from agent.errors import ConfigError
from agent.wiring import load_plugin
from fleet.broker import MosquittoBroker


def receive_until(sock: socket.socket, wanted: str, timeout: float = 30.0) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            seen.extend(sock.recv(4096).decode().split("\n"))
        except TimeoutError as exc:
            raise AssertionError(f"no {wanted} from the agent; got {seen}") from exc
    return seen


def test_sd_notify_and_restart_exits_75_under_systemd(broker: MosquittoBroker, tmp_path: Path) -> None:
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "1000000"}
        agent = AgentProc(tmp_path, fast_config("kiosk-sd-0001", broker.url, tmp_path / "data")).start(env)
        try:
            receive_until(notify, "READY=1")
            receive_until(notify, "WATCHDOG=1", timeout=5)
            agent.wait_connected()
            probe = Probe(broker, agent.device_id)
            try:
                probe.command("restart", cid="sd-restart")
                assert probe.answer("sd-restart")["status"] == "ok"
                receive_until(notify, "STOPPING=1")
                assert agent.proc is not None
                assert agent.proc.wait(20) == RESTART_EXIT_CODE
            finally:
                probe.close()
        finally:
            agent.kill9()


def test_plugins_are_loaded_by_name() -> None:
    assert callable(load_plugin("json:dumps"))
    with pytest.raises(ConfigError, match=r"commands\.plugins: cannot load 'nowhere_xyz:register'"):
        load_plugin("nowhere_xyz:register")
