"""End to end: blank data dir -> `cityedge provision enroll` over HTTPS -> agent started with the written
config connects over mTLS to the city-configured mosquitto and is online -> selftest passes ->
signed commands run, forged ones are refused -> decommission revokes (the broker then refuses the
copied identity)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from fleet.signer import Ed25519Signer, load_fleet_signer
from protocol.topics import Topics
from protocol.trust import key_id
from provisioning.agentproc import agent_status, stop_agent
from provisioning.brokercheck import BrokerTarget, connect_once
from provisioning.cli import build_provision_app
from provisioning.errors import CertificateProblem
from provisioning.files import DeviceFiles

DEVICE = "kiosk-hn-btl-0001"
TOPICS = Topics()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Watch:
    """Messages seen by the fleet's MQTT client, decoded."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.seen.append((msg.topic, json.loads(msg.payload)))

    def find(self, topic: str, **match: Any) -> dict[str, Any] | None:
        with self.lock:
            for t, body in self.seen:
                if t == topic and all(body.get(k) == v for k, v in match.items()):
                    return body
        return None


def cli(*args: str) -> Any:
    result = CliRunner().invoke(build_provision_app(), list(args))
    return result


@pytest.mark.timeout(120)
def test_enroll_connect_command_decommission(
    tmp_path: Path, secure_broker: Any, make_enroll_fleet: Callable[..., Any]
) -> None:
    broker_url = f"mqtts://127.0.0.1:{secure_broker.device_port}"
    fleet = make_enroll_fleet(
        secure_broker.pki,
        broker_url,
        on_revoked=lambda _records: secure_broker.refresh(),
        on_enrolling=secure_broker.grant,
    )
    data = tmp_path / "device"
    files = DeviceFiles(data)

    watch = Watch()
    fleet_client = secure_broker.client(secure_broker.fleet, fleet=True, client_id="fleet-test")
    fleet_client.on_message = watch.on_message
    secure_broker.subscribe(fleet_client, [TOPICS.status(DEVICE), TOPICS.commands_res(DEVICE)])

    token = fleet.claim("kiosk", "hn-btl")
    args = ["--role", "kiosk", "--site", "hn-btl", "--fleet", fleet.url, "--ca", str(fleet.ca)]
    result = cli("enroll", "--claim", token, *args, "--data-dir", str(data), "--device-id", DEVICE,
                 "--system", "simulated", "--json")  # fmt: skip
    try:
        assert result.exit_code == 0, result.output
        summary = json.loads(result.output)
        assert summary["device_id"] == DEVICE and summary["broker_url"] == broker_url
        assert "started in the background" in summary["agent"]
        config = files.config.read_text()
        assert "require_signature = true" in config and broker_url in config
        assert files.key.stat().st_mode & 0o777 == 0o600

        wait_for(
            lambda: watch.find(TOPICS.status(DEVICE), online=True) is not None, 30, "retained online status"
        )

        selftest = cli("selftest", "--data-dir", str(data), "--json")
        report = json.loads(selftest.output)
        checks = {c["name"]: c for c in report["checks"]}
        assert checks["broker"]["status"] == "ok", checks["broker"]
        assert "over mTLS" in checks["broker"]["detail"]
        assert checks["clock"]["status"] == "ok" and checks["identity"]["status"] == "ok"
        assert checks["camera"]["detail"] == "not configured"

        status = json.loads(cli("status", "--data-dir", str(data), "--json").output)
        assert status["device_id"] == DEVICE and status["agent"]["running"]
        assert status["fleet_keys_version"] == 1
    finally:
        stop_agent(files)

    assert not agent_status(files)["running"]
    again = json.loads(cli("selftest", "--data-dir", str(data), "--json").output)
    broker_check = next(c for c in again["checks"] if c["name"] == "broker")
    assert broker_check["status"] == "ok" and f"as {DEVICE} (mTLS)" in broker_check["detail"]

    stolen = tmp_path / "stolen"  # a copy of the identity, as a thief would take it
    shutil.copytree(data / "tls", stolen)
    shutil.copy(files.key, stolen / "key.pem")
    retired = cli("decommission", "--data-dir", str(data), "--yes", "--json")
    assert retired.exit_code == 0, retired.output
    done = json.loads(retired.output)["done"]
    assert any("fleet revoked kiosk-hn-btl-0001" in line for line in done)
    assert not files.key.exists() and not files.cert.exists() and not files.config.exists()
    target = BrokerTarget("127.0.0.1", secure_broker.device_port, DEVICE, stolen / "ca.pem",
                          stolen / "device.crt", stolen / "key.pem")  # fmt: skip
    with pytest.raises(CertificateProblem, match="revoked"):
        connect_once(target, timeout=5)


AGENT_WITH_VERIFIER = """
import sys
from pathlib import Path
from agent.daemon import build_agent
from agent.verify import build_verifier
data, device = Path(sys.argv[2]), sys.argv[3]
agent = build_agent(Path(sys.argv[1]), {}, verifier=build_verifier(data, device_id=device))
sys.exit(agent.run())
"""


@pytest.mark.timeout(120)
def test_enrolled_agent_runs_signed_commands_only(
    tmp_path: Path, secure_broker: Any, make_enroll_fleet: Callable[..., Any]
) -> None:
    """The real agent, with the verifier built from the enrolment's trust (what agent/daemon.py builds
    when require_signature is on), over the real mTLS broker."""
    broker_url = f"mqtts://127.0.0.1:{secure_broker.device_port}"
    fleet = make_enroll_fleet(secure_broker.pki, broker_url, on_enrolling=secure_broker.grant)
    data = tmp_path / "device"
    watch = Watch()
    client = secure_broker.client(secure_broker.fleet, fleet=True, client_id="fleet-test")
    client.on_message = watch.on_message
    secure_broker.subscribe(client, [TOPICS.status(DEVICE), TOPICS.commands_res(DEVICE)])
    args = ["--role", "kiosk", "--site", "hn-btl", "--fleet", fleet.url, "--ca", str(fleet.ca)]
    result = cli("enroll", "--claim", fleet.claim(), *args, "--data-dir", str(data), "--device-id", DEVICE,
                 "--system", "simulated", "--no-start")  # fmt: skip
    assert result.exit_code == 0, result.output
    config = str(DeviceFiles(data).config)
    proc = subprocess.Popen([sys.executable, "-c", AGENT_WITH_VERIFIER, config, str(data), DEVICE])
    try:
        wait_for(lambda: watch.find(TOPICS.status(DEVICE), online=True) is not None, 30, "online status")
        _signed_commands(secure_broker, client, fleet.fleet_dir, watch)
    finally:
        proc.terminate()
        proc.wait(15)


def _answer(watch: Watch, command_id: str) -> dict[str, Any]:
    topic = TOPICS.commands_res(DEVICE)
    wait_for(lambda: watch.find(topic, id=command_id) is not None, 15, f"answer to {command_id}")
    answer = watch.find(topic, id=command_id)
    assert answer is not None
    return answer


def _signed_commands(secure_broker: Any, client: mqtt.Client, fleet_dir: Path, watch: Watch) -> None:
    signer = load_fleet_signer(fleet_dir)
    good = signer.sign({"id": "cmd-ping-1", "name": "ping", "args": {}})
    secure_broker.publish(client, TOPICS.commands_req(DEVICE), json.dumps(good).encode())
    assert _answer(watch, "cmd-ping-1")["status"] == "ok"

    rogue = Ed25519PrivateKey.generate()
    forged = Ed25519Signer(rogue, key_id("fleet", rogue.public_key())).sign(
        {"id": "cmd-reboot-1", "name": "reboot"}
    )
    secure_broker.publish(client, TOPICS.commands_req(DEVICE), json.dumps(forged).encode())
    answer = _answer(watch, "cmd-reboot-1")
    assert answer["status"] == "rejected" and "unknown signing key" in answer["error"]

    unsigned = {k: v for k, v in signer.sign({"id": "cmd-reboot-2", "name": "reboot"}).items() if k != "sig"}
    secure_broker.publish(client, TOPICS.commands_req(DEVICE), json.dumps(unsigned).encode())
    answer = _answer(watch, "cmd-reboot-2")
    assert answer["status"] == "rejected" and "unsigned" in answer["error"]

    replay = signer.sign({"id": "cmd-ping-2", "name": "ping", "args": {}, "nonce": good["nonce"]})
    secure_broker.publish(client, TOPICS.commands_req(DEVICE), json.dumps(replay).encode())
    answer = _answer(watch, "cmd-ping-2")
    assert answer["status"] == "rejected" and "replayed command" in answer["error"]
