"""An enrolled agent (``commands.require_signature = true`` and fleet keys in DATA_DIR/trust) runs
only commands signed by a fleet key: end to end through the agent process and ``agent.verify``."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from agent_helpers import AgentProc, Probe, enrol, fast_config
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet.broker import MosquittoBroker
from protocol.signing import sign
from protocol.timefmt import format_ts, utc_now

DEVICE = "kiosk-sig-0001"


def signed_command(key: Ed25519PrivateKey, kid: str, cid: str, nonce: str) -> bytes:
    now = utc_now()
    body = {
        "id": cid,
        "name": "ping",
        "args": {},
        "issued_at": format_ts(now),
        "expires_at": format_ts(now + timedelta(minutes=5)),
        "nonce": nonce,
    }
    return json.dumps(sign(body, key, kid)).encode()


def test_only_fleet_signed_commands_run(broker: MosquittoBroker, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    key, kid = enrol(data_dir)
    config = fast_config(DEVICE, broker.url, data_dir, commands={"require_signature": True})
    agent = AgentProc(tmp_path, config).start()
    try:
        assert agent.wait_connected()["verifier"] == "SignedCommandVerifier"
        city = Probe(broker, DEVICE)
        try:
            city.publish("commands/req", signed_command(key, kid, "s-1", "nonce-1"))
            assert city.answer("s-1")["status"] == "ok"
            city.command("ping", cid="unsigned-1")
            unsigned = city.answer("unsigned-1")
            assert unsigned["status"] == "rejected" and "unsigned" in unsigned["error"]
            city.publish("commands/req", signed_command(key, kid, "s-2", "nonce-1"))  # nonce reused
            replay = city.answer("s-2")
            assert replay["status"] == "rejected" and "replay" in replay["error"]
            forged = signed_command(Ed25519PrivateKey.generate(), kid, "s-3", "nonce-3")
            city.publish("commands/req", forged)
            assert city.answer("s-3")["status"] == "rejected"
        finally:
            city.close()
    finally:
        agent.kill9()
