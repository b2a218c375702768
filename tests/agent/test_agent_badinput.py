"""Bad input never stops the agent: garbage messages, bad config files, an unreachable broker."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from agent_helpers import REPO, AgentProc, Probe, fast_config

from fleet.broker import BrokerConfig, MosquittoBroker, free_port

DEVICE = "kiosk-bad-0001"


@pytest.fixture(scope="module")
def agent(module_broker: MosquittoBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    work = tmp_path_factory.mktemp("agent")
    config = fast_config(DEVICE, module_broker.url, work / "data", mqtt={"max_payload_bytes": 4096})
    proc = AgentProc(work, config).start()
    proc.wait_connected()
    yield proc
    proc.kill9()


@pytest.mark.parametrize("family", ["commands/req", "shadow/desired"])
def test_garbage_is_logged_counted_and_the_agent_keeps_answering(
    agent: AgentProc, module_broker: MosquittoBroker, family: str
) -> None:
    city = Probe(module_broker, DEVICE, name=f"bad-{family.replace('/', '-')}")
    try:
        before = agent.status()["bad_messages"]
        bad = [
            b"\xff\xfe\x00garbage",
            b"[1, 2, 3]",
            b'"just a string"',
            json.dumps({"pad": "x" * 5000}).encode(),  # over the 4096-byte limit
            json.dumps({"id": 5, "version": "three"}).encode(),  # wrong shape
        ]
        for payload in bad:
            city.publish(family, payload)
        agent.wait_status(lambda s: s["bad_messages"] >= before + len(bad))
        cid = f"alive-{family.replace('/', '-')}"
        city.command("ping", cid=cid)
        assert city.answer(cid)["status"] == "ok"
        topic = f"{city.root}/{family}"
        log = agent.log()
        assert f"message on {topic}" in log
        assert "over the 4096-byte limit" in log
        assert agent.proc is not None and agent.proc.poll() is None
    finally:
        city.close()


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_bad_config_file_names_the_file_and_field(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[device]\nid = "kiosk-cfg-0001"\n[mqtt]\nkeepalive_s = "soon"\n')
    done = run_cli("run", "--config", str(config), "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 2
    assert str(config) in done.stderr and "mqtt.keepalive_s" in done.stderr
    assert "Traceback" not in done.stderr

    config.write_text('[device]\nid = "kiosk-cfg-0001"\nfavourite_colour = "blue"\n')
    done = run_cli("run", "--config", str(config), "--data-dir", str(tmp_path / "d"))
    assert (
        done.returncode == 2 and "device.favourite_colour" in done.stderr and "unknown setting" in done.stderr
    )

    config.write_text("[device\nid = 1\n")
    done = run_cli("run", "--config", str(config))
    assert done.returncode == 2 and "not valid TOML" in done.stderr and str(config) in done.stderr

    done = run_cli("run", "--broker", "http://example.org", "--device-id", "kiosk-cfg-0001")
    assert done.returncode == 2 and "command-line flags" in done.stderr and "mqtt.broker" in done.stderr

    done = run_cli("run", "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 2 and "no device id" in done.stderr
    assert "Traceback" not in done.stderr


def test_emit_cli_errors(tmp_path: Path) -> None:
    done = run_cli("emit", "--data-dir", str(tmp_path), "--kind", "kiosk.x", "--json", "{oops")
    assert done.returncode == 2 and "--json is not valid JSON" in done.stderr
    done = run_cli("emit", "--data-dir", str(tmp_path), "--kind", "kiosk.x", "--json", "{}")
    assert done.returncode == 1 and "agent is not running" in done.stderr
    done = run_cli("status", "--data-dir", str(tmp_path))
    assert done.returncode == 3 and "NOT RUNNING" in done.stdout


def test_unreachable_broker_then_broker_appears(
    tmp_path: Path, start_agent: Callable[..., AgentProc]
) -> None:
    port = free_port()
    # The city's persistent session exists before the device ever connects, so whatever the device
    # sends the moment the broker appears is queued for it: no race with a late subscription.
    broker = MosquittoBroker(tmp_path / "late", BrokerConfig(port=port)).start()
    Probe(broker, "kiosk-late-0001", name="late-probe", persistent=True).close()
    broker.stop()
    agent = start_agent("kiosk-late-0001", f"mqtt://127.0.0.1:{port}")
    status = agent.wait_status(lambda s: s["link"]["attempts"] >= 3, timeout=30)
    assert not status["link"]["connected"]
    assert "connection refused" in status["link"]["last_error"]
    assert agent.log().count("retrying in") >= 2
    emitted = agent.client.emit("kiosk.session", {"while": "offline"})

    broker.start()
    try:
        agent.wait_connected(timeout=30)
        probe = Probe(broker, agent.device_id, name="late-probe", persistent=True)
        assert probe.wait_for("status")["online"] is True
        assert probe.wait_for("events/kiosk.session")["id"] == emitted["id"]
        probe.close()
    finally:
        broker.stop()
    time.sleep(0.1)
    assert agent.proc is not None and agent.proc.poll() is None


def test_cli_emit_and_status_against_a_running_agent(agent: AgentProc) -> None:
    data_dir = str(agent.data_dir)
    done = run_cli(
        "emit", "--data-dir", data_dir, "--kind", "kiosk.session", "--json", '{"service": "x"}', "--sign"
    )
    assert done.returncode == 0, done.stderr
    emitted = json.loads(done.stdout)
    assert set(emitted) == {"id", "seq"} and emitted["seq"] >= 1
    done = run_cli("status", "--data-dir", data_dir, "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["link"]["connected"] is True and status["seq"] >= emitted["seq"]
    assert {"depth", "inflight", "evicted"} <= set(status["outbox"])
    human = run_cli("status", "--data-dir", data_dir)
    assert human.returncode == 0 and "link: connected" in human.stdout


def test_a_second_agent_on_the_same_data_dir_is_refused(agent: AgentProc) -> None:
    done = run_cli("run", "--config", str(agent.config_path))
    assert done.returncode == 2 and "already running" in done.stderr
    assert agent.status()["link"]["connected"]  # the first one is untouched
