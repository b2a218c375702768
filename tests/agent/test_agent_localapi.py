"""The local API (Unix socket): durable emit, bad requests, errors in words."""

from __future__ import annotations

import json
import socket
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import OutboxSection
from agent.errors import LocalApiError
from agent.guard import unguarded
from agent.localapi import LocalApiClient, LocalApiServer
from agent.outbox import Outbox

DEVICE = "kiosk-la-0001"


class Backend:
    """The agent's backend with a real outbox; rpc never answered (no city)."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.metrics: dict[str, Any] = {}

    def emit(self, kind: str, data: dict[str, Any], sign: bool) -> dict[str, Any]:
        stored = self.outbox.enqueue(kind, data, sign=sign)
        return {"id": stored.id, "seq": stored.seq}

    def rpc(self, service: str, method: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        raise LocalApiError(f"city service did not answer within {timeout:g} s")

    def report_metrics(self, metrics: dict[str, Any]) -> None:
        self.metrics.update(metrics)

    def report_peripherals(self, peripherals: dict[str, Any]) -> None:
        raise ZeroDivisionError("a bug in a handler")

    def desired_config(self) -> dict[str, Any]:
        return {"idle_timeout_s": 60}

    def status(self) -> dict[str, Any]:
        return {"outbox": self.outbox.stats()}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[LocalApiClient, Backend, Path]]:
    outbox = Outbox(tmp_path / "outbox.db", DEVICE, OutboxSection(), None)
    backend = Backend(outbox)
    calls: list[str] = []

    def guard(where: str, fn: Callable[[], Any]) -> Any:
        try:
            return unguarded(where, fn)
        except ZeroDivisionError:
            calls.append(where)
            return None

    server = LocalApiServer(tmp_path, backend, guard, max_request_bytes=4096)
    server.start()
    try:
        yield LocalApiClient(tmp_path, timeout=10), backend, tmp_path
    finally:
        server.stop()
        outbox.close()


def raw(path: Path, data: bytes) -> list[dict[str, Any]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path / "agent.sock"))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return [json.loads(line) for line in b"".join(chunks).splitlines()]


def test_emit_returns_only_once_the_event_is_on_disk(served: tuple[LocalApiClient, Backend, Path]) -> None:
    client, _backend, path = served
    result = client.emit("kiosk.session", {"service": "birth-certificate"})
    conn = sqlite3.connect(path / "outbox.db")  # another connection: only committed data is visible
    try:
        row = conn.execute("SELECT seq FROM outbox WHERE id = ?", (result["id"],)).fetchone()
    finally:
        conn.close()
    assert row == (result["seq"],)


def test_socket_mode_is_0660(served: tuple[LocalApiClient, Backend, Path]) -> None:
    _client, _backend, path = served
    assert stat.S_IMODE((path / "agent.sock").stat().st_mode) == 0o660


def test_bad_requests_get_errors_and_the_server_keeps_serving(
    served: tuple[LocalApiClient, Backend, Path],
) -> None:
    client, _backend, path = served
    answers = raw(
        path,
        b"this is not json\n"
        b"[1, 2, 3]\n"
        b'{"op": "fly"}\n'
        b'{"op": "emit", "kind": "kiosk.x"}\n'
        b'{"op": "emit", "kind": "Not A Kind", "data": {}}\n'
        b'{"op": "report_peripherals", "peripherals": {"printer": "ok"}}\n'
        b'{"op": "desired_config"}\n',
    )
    assert [a["ok"] for a in answers] == [False] * 6 + [True]
    assert "not valid JSON" in answers[0]["error"]
    assert "JSON object" in answers[1]["error"]
    assert "unknown op 'fly'" in answers[2]["error"]
    assert "field 'data'" in answers[3]["error"]
    assert "invalid event kind" in answers[4]["error"]
    assert "internal error" in answers[5]["error"]
    assert answers[6]["result"] == {"idle_timeout_s": 60}
    oversized = raw(path, b'{"op": "status", "pad": "' + b"x" * 5000 + b'"}\n')
    assert "larger than 4096 bytes" in oversized[0]["error"]
    assert client.emit("kiosk.session", {})["seq"] == 1  # still alive


def test_rpc_timeout_and_metrics(served: tuple[LocalApiClient, Backend, Path]) -> None:
    client, backend, _path = served
    with pytest.raises(LocalApiError, match=r"city service did not answer within 0.5 s"):
        client.rpc("dossier", "lookup", {"citizen": "redacted"}, timeout=0.5)
    client.report_metrics({"queue_len": 3})
    assert backend.metrics == {"queue_len": 3}


def test_client_says_when_the_agent_is_not_running(tmp_path: Path) -> None:
    with pytest.raises(LocalApiError, match="agent is not running"):
        LocalApiClient(tmp_path).emit("kiosk.session", {})
