"""Commands to devices and RPC from devices, through a real mosquitto."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fleet_helpers import FleetFactory, MakeDevice, wait_for

from fleet.commands import InvalidCommand, UnknownDevice
from fleet.rpc import RpcNotFound, RpcRegistry, default_registry
from fleet.service import FleetService
from protocol.timefmt import parse_ts


class RecordingSigner:
    """Stands in for the Ed25519 signer: proves the service signs what it publishes."""

    def __init__(self) -> None:
        self.signed: list[dict[str, Any]] = []

    def sign(self, message: dict[str, Any]) -> dict[str, Any]:
        self.signed.append(dict(message))
        return {**message, "sig": {"alg": "ed25519", "kid": "test-key", "value": "c2ln"}}


def test_command_round_trip_is_signed_and_recorded(make_fleet: FleetFactory, make_device: MakeDevice) -> None:
    signer = RecordingSigner()
    fleet = make_fleet(signer=signer)
    device = make_device("kiosk-cm-0001").connect()
    wait_for(lambda: fleet.store.device(device.id), what="device registered")
    row = fleet.commands.issue(device.id, "ping", {"n": 1}, ttl_s=30)
    wait_for(lambda: fleet.store.command(row["id"])["status"] != "pending", what="answer")  # type: ignore[index]
    stored = fleet.store.command(row["id"])
    assert stored is not None
    assert (stored["status"], stored["result"]) == ("ok", {"pong": True, "args": {"n": 1}})
    [received] = device.commands
    assert received["sig"]["kid"] == "test-key"
    assert received["id"] == row["id"] and received["name"] == "ping" and received["args"] == {"n": 1}
    lifetime = parse_ts(received["expires_at"]) - parse_ts(received["issued_at"])
    assert abs(lifetime.total_seconds() - 30) < 0.01
    assert received["nonce"] and signer.signed[0]["nonce"] == received["nonce"]
    assert "sig" not in signer.signed[0]


def test_error_and_rejected_answers(make_fleet: FleetFactory, make_device: MakeDevice) -> None:
    fleet = make_fleet()

    def strict(command: dict[str, Any]) -> dict[str, Any]:
        return {"id": command["id"], "status": "rejected", "error": "command is not signed"}

    refusing = make_device("cam-cm-0002", on_command=strict).connect()
    wait_for(lambda: fleet.store.device(refusing.id), what="device registered")
    rejected = fleet.commands.issue(refusing.id, "reboot", {}, None)
    wait_for(lambda: fleet.store.command(rejected["id"])["status"] == "rejected", what="rejected")  # type: ignore[index]
    assert fleet.store.command(rejected["id"])["error"] == "command is not signed"  # type: ignore[index]


def test_unanswered_command_expires(make_fleet: FleetFactory, make_device: MakeDevice) -> None:
    fleet = make_fleet(command_grace_s=0)
    silent = make_device("cam-cm-0003", on_command=None).connect()
    wait_for(lambda: fleet.store.device(silent.id), what="device registered")
    row = fleet.commands.issue(silent.id, "ping", {}, ttl_s=0.2)
    wait_for(lambda: fleet.store.command(row["id"])["status"] == "expired", timeout=5, what="expired")  # type: ignore[index]


def test_command_refusals(fleet: FleetService) -> None:
    with pytest.raises(UnknownDevice, match="never connected"):
        fleet.commands.issue("cam-nobody-0001", "ping", {}, None)


def test_command_bad_ttl_and_name(fleet: FleetService, make_device: MakeDevice) -> None:
    device = make_device("cam-cm-0004").connect()
    wait_for(lambda: fleet.store.device(device.id), what="device registered")
    with pytest.raises(InvalidCommand, match="ttl_s"):
        fleet.commands.issue(device.id, "ping", {}, ttl_s=10**9)
    with pytest.raises(InvalidCommand, match="name"):
        fleet.commands.issue(device.id, "x" * 65, {}, None)


class Dossiers:
    def call(self, method: str, params: dict[str, Any], device: str) -> dict[str, Any]:
        if params.get("code") == "missing":
            raise RpcNotFound("no dossier with that code")
        if method == "hang":
            time.sleep(5)
        if method == "crash":
            raise KeyError("bug")
        return {"code": params.get("code"), "asked_by": device}


def test_rpc_dispatch(make_fleet: FleetFactory, make_device: MakeDevice) -> None:
    registry: RpcRegistry = default_registry()
    registry.register("dossier", Dossiers())
    fleet = make_fleet(rpc_registry=registry, rpc_timeout_s=0.5)
    device = make_device("kiosk-rpc-0001").connect()
    echo = device.rpc("echo", "echo", {"a": [1, 2]})
    assert echo["ok"] is True and echo["result"] == {"params": {"a": [1, 2]}, "device": device.id}
    assert "now" in device.rpc("time", "now")["result"]
    found = device.rpc("dossier", "lookup", {"code": "HS-1"})
    assert found == {"id": found["id"], "ok": True, "result": {"code": "HS-1", "asked_by": device.id}}
    missing = device.rpc("dossier", "lookup", {"code": "missing"})
    assert (missing["ok"], missing["code"], missing["error"]) == (
        False,
        "not_found",
        "no dossier with that code",
    )
    unknown = device.rpc("weather", "today")
    assert unknown["ok"] is False and unknown["code"] == "unknown_service"
    assert "weather" in unknown["error"] and "dossier" in unknown["error"]
    slow = device.rpc("dossier", "hang")
    assert (slow["ok"], slow["code"]) == (False, "timeout")
    broken = device.rpc("dossier", "crash")
    assert (broken["ok"], broken["code"]) == (False, "internal") and "bug" not in broken["error"]
    outcomes = {(r["service"], r["outcome"]) for r in fleet.stats.snapshot()["rpc"]}
    assert ("dossier", "not_found") in outcomes and ("weather", "unknown_service") in outcomes
    assert fleet.store.device(device.id) is not None  # an RPC request counts as being seen
