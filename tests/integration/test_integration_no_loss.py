"""No loss end to end: agent outbox → mosquitto → fleet store, through broker restarts and kill -9.

1,000 events are emitted through the agent's local API while the broker is stopped, restarted twice
and the agent is killed with SIGKILL once in the middle. Every id whose ``emit`` returned must reach
the fleet's store exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.errors import LocalApiError
from agent.localapi import LocalApiClient
from fleet.auth.tokens import create_token
from fleet.broker import MosquittoBroker, free_port

DEVICE = "kiosk-it-0001"
TOTAL = 1000


class Proc:
    """A ``cityedge`` sub-command as a child process with its output in a log file."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from cityedge.cli import main; main()", *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def auth() -> dict[str, str]:
    """The fleet fixture's API token (a viewer), from CITYEDGE_TOKEN."""
    return {"Authorization": f"Bearer {os.environ['CITYEDGE_TOKEN']}"}


@pytest.fixture
def fleet(
    broker: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Proc, str]]:
    port = free_port()
    monkeypatch.setenv(
        "CITYEDGE_TOKEN", create_token(f"sqlite:///{tmp_path / 'fleet.db'}", "viewer", "it", "1h")
    )
    proc = Proc(
        [
            "fleet",
            "serve",
            "--broker",
            broker.url,
            "--db",
            f"sqlite:///{tmp_path / 'fleet.db'}",
            "--http",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(tmp_path / "fleet"),
        ],
        tmp_path / "fleet.log",
    ).start()
    api = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _healthy(api), 30, "fleet /healthz")
        yield proc, api
    finally:
        proc.stop()


def start_agent(broker: MosquittoBroker, data_dir: Path, log: Path) -> Proc:
    return Proc(
        [
            "agent",
            "run",
            "--device-id",
            DEVICE,
            "--role",
            "kiosk",
            "--broker",
            broker.url,
            "--data-dir",
            str(data_dir),
        ],
        log,
    ).start()


def emit_batch(client: LocalApiClient, start: int, count: int, accepted: list[str]) -> None:
    for n in range(start, start + count):
        reply = client.emit("kiosk.rating", {"n": n, "score": 1 + n % 5})
        accepted.append(str(reply["id"]))


def agent_status(client: LocalApiClient) -> dict[str, Any] | None:
    """The agent's status, or None while its local API is not up (starting, or just killed)."""
    try:
        return client.status()
    except (LocalApiError, OSError):
        return None


def fleet_ids(api: str) -> list[str]:
    rows = httpx.get(
        f"{api}/api/devices/{DEVICE}/events", params={"limit": 10_000}, headers=auth(), timeout=10
    ).json()
    return [row["id"] for row in rows]


@pytest.mark.slow
def test_thousand_events_survive_broker_restarts_and_agent_kill9(
    broker: MosquittoBroker, fleet: tuple[Proc, str], tmp_path: Path
) -> None:
    _, api = fleet
    data_dir = tmp_path / "agent"
    agent = start_agent(broker, data_dir, tmp_path / "agent.log")
    client = LocalApiClient(data_dir, timeout=15)

    def agent_ready() -> bool:
        return agent_status(client) is not None

    accepted: list[str] = []
    try:
        wait_until(agent_ready, 30, f"agent local API\n{agent.tail()}")
        emit_batch(client, 0, 100, accepted)  # broker up

        broker.stop()  # 1) broker down: events pile up in the outbox
        emit_batch(client, 100, 300, accepted)
        broker.start()
        emit_batch(client, 400, 150, accepted)

        agent.kill9()  # 2) power cut in the middle of the stream
        agent = start_agent(broker, data_dir, tmp_path / "agent.log")
        wait_until(agent_ready, 30, f"agent back after kill -9\n{agent.tail()}")
        emit_batch(client, 550, 200, accepted)

        broker.restart()  # 3) second broker restart while events flow
        emit_batch(client, 750, 250, accepted)

        assert len(accepted) == TOTAL and len(set(accepted)) == TOTAL
        try:
            wait_until(lambda: len(fleet_ids(api)) >= TOTAL, 90, "all events at the fleet")
        except AssertionError:
            missing = set(accepted) - set(fleet_ids(api))
            order = sorted(accepted.index(m) for m in missing)
            stats = httpx.get(f"{api}/api/stats", headers=auth()).json()
            raise AssertionError(
                f"{len(missing)} events missing at the fleet (emit order {order[:5]}...{order[-5:]}); "
                f"agent: {client.status()}\nfleet stats: {stats}"
            ) from None
        ids = fleet_ids(api)
        assert len(ids) == TOTAL, "the fleet stored an event twice"
        assert set(ids) == set(accepted)
        gaps = httpx.get(
            f"{api}/api/devices/{DEVICE}/gaps", params={"open_only": True}, headers=auth(), timeout=10
        ).json()
        assert gaps == [], f"seq gaps left open: {gaps}"
    finally:
        agent.stop()


@pytest.mark.slow
def test_events_sent_while_fleet_is_down_across_a_broker_restart_arrive(
    broker: MosquittoBroker, fleet: tuple[Proc, str], tmp_path: Path
) -> None:
    """The device reconnects before the fleet does: the fleet's persistent session must hold them."""
    fleet_proc, api = fleet
    data_dir = tmp_path / "agent"
    agent = start_agent(broker, data_dir, tmp_path / "agent.log")
    client = LocalApiClient(data_dir, timeout=15)
    accepted: list[str] = []

    def connected() -> bool:
        status = agent_status(client)
        return status is not None and bool(status["link"]["connected"])

    try:
        wait_until(connected, 30, "agent connected")
        emit_batch(client, 0, 20, accepted)
        wait_until(lambda: len(fleet_ids(api)) >= 20, 30, "first events at the fleet")
        fleet_proc.stop()
        broker.restart()
        wait_until(connected, 30, "agent reconnected")
        emit_batch(client, 20, 80, accepted)
        wait_until(lambda: client.status()["outbox"]["depth"] == 0, 30, "outbox drained to the broker")
        fleet_proc.start()
        wait_until(lambda: len(fleet_ids(api)) >= 100 if _healthy(api) else False, 60, "backlog at the fleet")
        assert sorted(fleet_ids(api)) == sorted(accepted)
    finally:
        agent.stop()


def _healthy(api: str) -> bool:
    try:
        return httpx.get(f"{api}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
