"""The command processor in-process: verifiers, exactly-once answers, handler outcomes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.commands import AcceptUnsigned, CommandProcessor, Outcome, RejectAll
from agent.config import AgentConfig, MqttSection
from agent.errors import CommandFailed, CommandRejected
from agent.guard import unguarded
from agent.link import Link
from agent.results import ResultStore
from agent.wiring import choose_verifier
from protocol.timefmt import format_ts, utc_now

DEVICE = "kiosk-cmd-0001"


def command(cid: str, name: str = "ping", expires_in: float = 60, **extra: Any) -> bytes:
    now = utc_now()
    body = {
        "id": cid,
        "name": name,
        "args": {},
        "issued_at": format_ts(now),
        "expires_at": format_ts(now + timedelta(seconds=expires_in)),
        "nonce": f"n-{cid}",
        **extra,
    }
    return json.dumps(body).encode()


class Fixture:
    def __init__(self, tmp: Path, verifier: Any) -> None:
        link = Link(
            MqttSection(), DEVICE, {}, lambda _t, _p: None, lambda *_a: None
        )  # never started: offline
        self.store = ResultStore(tmp / "commands.db", retention=10)
        self.proc = CommandProcessor(link, self.store, verifier, unguarded, 4096)

    def answer(self, cid: str) -> dict[str, Any]:
        known, payload = self.store.lookup(cid)
        assert known and payload is not None
        result: dict[str, Any] = json.loads(payload)
        return result


@pytest.fixture
def fx(tmp_path: Path) -> Iterator[Fixture]:
    fixture = Fixture(tmp_path, AcceptUnsigned())
    yield fixture
    fixture.store.close()


def test_signatures_required_without_keys_rejects_everything(tmp_path: Path) -> None:
    config = AgentConfig.model_validate(
        {"data_dir": str(tmp_path), "device": {"id": DEVICE}, "commands": {"require_signature": True}}
    )
    verifier = choose_verifier(config, None)  # not enrolled: no fleet keys in DATA_DIR/trust
    assert isinstance(verifier, RejectAll)
    fixture = Fixture(tmp_path, verifier)
    fixture.proc.register_handler("ping", lambda _a: {"pong": True})
    fixture.proc.process(command("c1"))
    answer = fixture.answer("c1")
    assert answer["status"] == "rejected" and answer["result"] == {}
    assert answer["error"].startswith("no fleet signing keys configured")
    dev = AgentConfig.model_validate({"commands": {"require_signature": False}})
    assert isinstance(choose_verifier(dev, None), AcceptUnsigned)


def test_handler_runs_once_per_id(fx: Fixture) -> None:
    calls: list[dict[str, Any]] = []

    def count(args: dict[str, Any]) -> dict[str, Any]:
        calls.append(args)
        return {"n": len(calls)}

    fx.proc.register_handler("count", count)
    for _ in range(3):
        fx.proc.process(command("same", "count"))
    assert len(calls) == 1 and fx.answer("same")["result"] == {"n": 1}
    assert fx.proc.counts["redelivered"] == 2
    assert [cid for cid, _p in fx.store.unsent()] == ["same"]  # offline: kept for the next connect


def test_interrupted_command_is_not_run_again(fx: Fixture) -> None:
    calls: list[dict[str, Any]] = []
    fx.proc.register_handler("slow", lambda args: calls.append(args) or {})  # type: ignore[func-returns-value]
    fx.store.start("crashed", "slow")  # as if the agent died while running it
    fx.proc.process(command("crashed", "slow"))
    assert calls == [] and fx.answer("crashed")["status"] == "error"
    assert "interrupted" in fx.answer("crashed")["error"]


def test_failures_and_bad_results_are_errors(fx: Fixture) -> None:
    def fails(_args: dict[str, Any]) -> dict[str, Any]:
        raise CommandFailed("printer has no paper")

    fx.proc.register_handler("print", fails)
    fx.proc.register_handler("weird", lambda _a: {"x": {1, 2}})
    fx.proc.process(command("p1", "print"))
    fx.proc.process(command("w1", "weird"))
    assert fx.answer("p1")["error"] == "printer has no paper"
    assert "not plain JSON" in fx.answer("w1")["error"]


def test_outcome_then_runs_after_the_answer_is_stored(fx: Fixture) -> None:
    seen: list[bool] = []
    fx.proc.register_handler(
        "restart", lambda _a: Outcome({"restarting": True}, then=lambda: seen.append(True))
    )
    fx.proc.process(command("r1", "restart"))
    assert seen == [True] and fx.answer("r1")["status"] == "ok"


def test_results_are_bounded(fx: Fixture) -> None:
    fx.proc.register_handler("ping", lambda _a: {"pong": True})
    for i in range(25):
        fx.proc.process(command(f"id-{i}"))
    assert fx.store.count() == 10
    assert fx.store.lookup("id-24")[0] and not fx.store.lookup("id-0")[0]


def test_accept_unsigned_rejects_expired_and_bad_times() -> None:
    verifier = AcceptUnsigned()
    verifier.verify(json.loads(command("ok")))
    with pytest.raises(CommandRejected, match="expired"):
        verifier.verify(json.loads(command("old", expires_in=-1)))
    with pytest.raises(CommandRejected, match="expires_at"):
        verifier.verify({"expires_at": "tomorrow"})


def test_agent_without_an_ed25519_key_runs_but_refuses_to_sign(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from agent.daemon import build_agent
    from agent.errors import EventRejected

    key = tmp_path / "p256.pem"
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key.write_bytes(pem)
    flags = {"data_dir": str(tmp_path / "data"), "device": {"id": DEVICE, "key_path": str(key)}}
    agent = build_agent(None, flags, log_to_file=False)
    try:
        assert agent.emit("kiosk.session", {}, sign=False)["seq"] == 1
        with pytest.raises(EventRejected, match="not an Ed25519 key"):
            agent.emit("traffic.violation", {}, sign=False)
    finally:
        agent.stop()
