"""The agent against the MQTT contract (PROTOCOL.md), with a real mosquitto and the agent as a process:
what only the agent does (role metrics, the local API, development mode, restart by re-exec). The
rules every device follows are checked on the agent, the simulator and FakeDevice alike in
tests/contract."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from agent_helpers import AgentProc, Probe, fast_config

from agent.errors import LocalApiError
from fleet.broker import MosquittoBroker

DEVICE = "kiosk-ct-0001"


@pytest.fixture(scope="module")
def agent(module_broker: MosquittoBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    work = tmp_path_factory.mktemp("agent")
    config = fast_config(DEVICE, module_broker.url, work / "data", mqtt={"max_payload_bytes": 4096})
    proc = AgentProc(work, config).start()
    proc.wait_connected()
    yield proc
    proc.kill9()


@pytest.fixture(scope="module")
def city(module_broker: MosquittoBroker, agent: AgentProc) -> Iterator[Probe]:
    probe = Probe(module_broker, DEVICE)
    yield probe
    probe.close()


def test_role_metrics_are_merged_into_telemetry(agent: AgentProc, city: Probe) -> None:
    agent.client.report_metrics({"sessions_today": 7, "cpu_pct": 999})
    body = city.wait_for("telemetry", lambda m: m.get("sessions_today") == 7)
    assert body["cpu_pct"] <= 100  # a role cannot overwrite a contract field


def test_expired_command_is_rejected_by_the_development_verifier(city: Probe) -> None:
    """Unsigned commands allowed (development) still expire; the signed path is in tests/contract."""
    city.command("ping", cid="old-1", expires_in=-60)
    answer = city.answer("old-1")
    assert answer["status"] == "rejected"
    assert "expired" in answer["error"]


def test_snapshot_is_not_available_without_a_camera(city: Probe) -> None:
    city.command("snapshot", cid="snap-1")
    answer = city.answer("snap-1")
    assert answer == {
        "id": "snap-1",
        "status": "error",
        "result": {},
        "error": "not available on this device yet",
    }


def test_command_with_a_bad_field_is_rejected_naming_it(city: Probe) -> None:
    city.publish("commands/req", json.dumps({"id": "shape-1", "name": "ping", "args": {}}))
    answer = city.answer("shape-1")
    assert answer["status"] == "rejected" and "issued_at" in answer["error"]


def test_simulated_reboot(agent: AgentProc, city: Probe) -> None:
    city.command("reboot", cid="reboot-1")
    reboot = city.answer("reboot-1")
    assert reboot["status"] == "ok" and reboot["result"] == {"rebooting": True, "simulated": True}
    agent.wait_status(lambda s: s["simulated_reboots"] == 1)


def test_desired_state_applied_stale_ignored(agent: AgentProc, city: Probe) -> None:
    desired = {"version": 3, "config": {"kiosk": {"idle_timeout_s": 90}, "agent": {"telemetry": {"qos": 1}}}}
    city.publish("shadow/desired", json.dumps(desired), retain=True)
    city.wait_for("shadow/reported", lambda m: m["config_version"] == 3)
    assert agent.client.desired_config() == {"idle_timeout_s": 90}
    stale = {"version": 2, "config": {"kiosk": {"idle_timeout_s": 1}}}
    city.publish("shadow/desired", json.dumps(stale), retain=True)
    city.command("ping", cid="after-stale")
    city.answer("after-stale")
    assert agent.client.desired_config() == {"idle_timeout_s": 90}
    assert agent.status()["config_version"] == 3


def test_rpc_round_trip_and_timeout(agent: AgentProc, city: Probe) -> None:
    def answer_rpc(_c: object, _u: object, msg: object) -> None:
        request = json.loads(msg.payload)  # type: ignore[attr-defined]
        if request["params"].get("q") == "missing":
            reply = {"id": request["id"], "ok": False, "code": "not_found", "error": "no dossier"}
        else:
            reply = {"id": request["id"], "ok": True, "result": {"echo": request["params"]}}
        city.client.publish(f"{city.root}/rpc/res", json.dumps(reply), qos=1)

    with pytest.raises(LocalApiError, match=r"city service did not answer within 0.3 s") as slow:
        agent.client.rpc("dossier", "lookup", {"q": 1}, timeout=0.3)
    assert slow.value.code == "timeout"
    city.client.message_callback_add(f"{city.root}/rpc/req", answer_rpc)
    try:
        assert agent.client.rpc("dossier", "lookup", {"q": 2}, timeout=10) == {"echo": {"q": 2}}
        with pytest.raises(LocalApiError, match="no dossier") as missing:
            agent.client.rpc("dossier", "lookup", {"q": "missing"}, timeout=10)
        assert missing.value.code == "not_found"  # the city's code reaches the app through the socket
    finally:
        city.client.message_callback_remove(f"{city.root}/rpc/req")


def test_graceful_stop_publishes_offline_and_restart_command_reexecs(
    broker: MosquittoBroker, start_agent: Callable[..., AgentProc], tmp_path: Path
) -> None:
    agent = start_agent("kiosk-rst-0001", broker.url)
    boot_id = agent.wait_connected()["boot_id"]
    probe = Probe(broker, agent.device_id)
    try:
        probe.command("restart", cid="restart-1")
        assert probe.answer("restart-1")["status"] == "ok"
        status = agent.wait_status(lambda s: s["boot_id"] != boot_id and s["link"]["connected"])
        assert agent.proc is not None and agent.proc.poll() is None  # same process, re-executed
        probe.command("restart", cid="restart-1")  # re-delivered: answered again, not restarted again
        probe.wait_for("commands/res", lambda m: len(probe.answers("restart-1")) >= 2)
        assert agent.status()["boot_id"] == status["boot_id"]
        assert agent.terminate() == 0
        first = probe.wait_for("status", lambda m: m["online"] is False)
        assert first["boot_id"] == boot_id and "reason" not in first  # a clean goodbye, not the will
        probe.wait_for("status", lambda m: m["online"] is False and m["boot_id"] == status["boot_id"])
    finally:
        probe.close()
