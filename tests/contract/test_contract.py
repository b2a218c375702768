"""The MQTT device contract (PROTOCOL.md), one test per rule, run against every implementation.

``device`` is the real agent (a process), the simulator (hil/sim) and the fleet tests' FakeDevice in
turn (contract_helpers.IMPLS); the checks read only what the device publishes on a real mosquitto.
Tests marked ``impls(...)`` cover what only some implementations do (a scripted FakeDevice keeps no
shadow; simulated devices make no RPC requests).
"""

from __future__ import annotations

import itertools
import json
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from contract_helpers import BASE_INTERVAL_S, City, Device, fleet_keys, start_crashable

from fleet.broker import MosquittoBroker
from fleet.cli import _parse_args
from fleet.signer import load_fleet_signer
from protocol.models import CommandResult, EventEnvelope, RpcRequest, ShadowReported, Status, Telemetry
from protocol.timefmt import parse_ts
from protocol.topics import Topics

T = Topics()
autonomous = pytest.mark.impls("agent", "sim")


@pytest.fixture
def late(module_broker: MosquittoBroker, device: Device, fleet_dir: Path) -> Iterator[City]:
    """A city client that subscribes now: it sees retained messages only, then what comes next."""
    probe = City(module_broker, device.device_id, load_fleet_signer(fleet_dir), name="late")
    try:
        yield probe
    finally:
        probe.close()


def _retained(probe: City, family: str) -> list[dict[str, Any]]:
    return [json.loads(payload) for payload, retain in probe.on(family) if retain]


# -- status and last will ----------------------------------------------------------------------------


def test_status_online_is_retained(device: Device, late: City) -> None:
    body = late.wait_for("status", lambda m: m.get("online") is True)
    status = Status.model_validate(body)
    assert status.role == device.role and status.version and status.boot_id
    parse_ts(status.ts)
    assert _retained(late, "status"), "status must be published retained"


def test_crash_leaves_the_will_offline_and_retained(
    impl: str,
    module_broker: MosquittoBroker,
    fleet_dir: Path,
    tmp_path: Path,
) -> None:
    crashing = start_crashable(impl, module_broker, tmp_path, f"will{impl}", fleet_dir)
    try:
        probe = City(module_broker, crashing.device_id, load_fleet_signer(fleet_dir), name="watch")
        try:
            online = probe.wait_for("status", lambda m: m.get("online") is True, timeout=30)
            crashing.crash()
            will = probe.wait_for("status", lambda m: m.get("online") is False, timeout=30)
        finally:
            probe.close()
        Status.model_validate(will)
        assert will["role"] == online["role"] and will["boot_id"] == online["boot_id"]
    finally:
        crashing.close()
    newcomer = City(module_broker, crashing.device_id, load_fleet_signer(fleet_dir), name="newcomer")
    try:
        assert newcomer.wait_for("status")["online"] is False
        assert [m["online"] for m in _retained(newcomer, "status")] == [False]
    finally:
        newcomer.close()


# -- telemetry ---------------------------------------------------------------------------------------


def test_telemetry_shape(city: City) -> None:
    first = city.wait_for("telemetry")
    second = city.wait_for("telemetry", lambda m: m["seq"] > first["seq"])
    for body in (first, second):
        Telemetry.model_validate(body)
        parse_ts(body["ts"])
        assert isinstance(body["seq"], int) and not isinstance(body["seq"], bool)
        for field in ("uptime_s", "cpu_pct", "mem_pct", "disk_pct"):
            assert isinstance(body[field], (int, float)) and not isinstance(body[field], bool), field
        assert body["temp_c"] is None or isinstance(body["temp_c"], (int, float))
    assert not any(retain for _payload, retain in city.on("telemetry")), "telemetry is not retained"


# -- events ------------------------------------------------------------------------------------------


def test_event_envelopes(device: Device, city: City) -> None:
    device.produce_events(3)
    city.wait_for("events/+", lambda _m: len(city_events(city)) >= 3, timeout=30)
    seen = city_events(city)
    ids: set[str] = set()
    seqs: list[int] = []
    for topic, payload in seen:
        env = EventEnvelope.model_validate_json(payload)
        parsed = T.parse(topic)
        assert (env.device, env.kind) == (parsed.device, parsed.kind) == (device.device_id, env.kind)
        assert topic.endswith(f"/events/{env.kind}")
        parse_ts(env.ts)
        assert env.id not in ids, f"event id {env.id} sent twice"
        ids.add(env.id)
        seqs.append(env.seq)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"seq must increase by one: {seqs}"


def city_events(city: City) -> list[tuple[str, bytes]]:
    with city._cond:
        return [(t, p) for t, p, _r in city.messages if t.startswith(f"{city.root}/events/")]


# -- commands ----------------------------------------------------------------------------------------


def test_ping_is_answered_ok(city: City) -> None:
    answer = CommandResult.model_validate(city.ask("ping", cid="ct-ping-1"))
    assert answer.id == "ct-ping-1" and answer.status == "ok" and answer.result["pong"] is True


def test_unknown_command_is_an_error(city: City) -> None:
    answer = CommandResult.model_validate(city.ask("make_coffee", cid="ct-coffee-1"))
    assert answer.status == "error" and "make_coffee" in (answer.error or "")


def test_expired_command_is_rejected_and_not_run(city: City) -> None:
    answer = CommandResult.model_validate(city.ask("ping", cid="ct-old-1", expires_in=-3600))
    assert answer.status == "rejected" and "expired" in (answer.error or ""), answer
    assert answer.result == {}


def test_malformed_command_is_rejected(city: City) -> None:
    city.publish("commands/req", json.dumps({"id": "ct-shape-1", "name": "ping", "args": {}}))
    answer = CommandResult.model_validate(city.answer("ct-shape-1"))
    assert answer.status == "rejected"


SET_CONFIG_FORMS = {
    "cli": _parse_args(["telemetry.interval_s=30"]),  # cityedge fleet command D set_config --arg ...
    "dotted": {"telemetry.interval_s": 30},
    "nested": {"telemetry": {"interval_s": 30}},
    "mixed": {"telemetry.interval_s": 30, "logging": {"level": "INFO"}},
}


@pytest.mark.parametrize("form", sorted(SET_CONFIG_FORMS))
def test_set_config_takes_every_documented_form(city: City, form: str) -> None:
    answer = city.ask("set_config", SET_CONFIG_FORMS[form], cid=f"ct-setcfg-{form}")
    assert answer["status"] == "ok", answer
    result = answer["result"]
    assert isinstance(result["local_revision"], int) and result["restart_required"] is False
    assert set(result["changed"]) <= {"telemetry", "logging"}


BAD_SET_CONFIG: dict[str, tuple[dict[str, Any], str]] = {  # args, what the error must name
    "dotted-unknown": ({"telemetry.every": 5}, "telemetry.every"),
    "nested-unknown": ({"telemetry": {"every": 5}}, "telemetry.every"),
    "bad-value": ({"telemetry.interval_s": -1}, "telemetry.interval_s"),
    "device-id": ({"device.id": "kiosk-other-0001"}, "device.id"),
    "empty": ({}, "set_config"),
}


@pytest.mark.parametrize("case", sorted(BAD_SET_CONFIG))
def test_set_config_refuses_what_is_not_a_setting(city: City, case: str) -> None:
    args, named = BAD_SET_CONFIG[case]
    answer = city.ask("set_config", args, cid=f"ct-badcfg-{case}")
    assert answer["status"] == "error" and named in answer["error"], answer


def test_redelivered_command_gets_the_stored_answer_and_runs_once(city: City) -> None:
    payload = city.signed_command("set_config", {"logging.level": "DEBUG"}, cid="ct-again-1")
    city.publish("commands/req", payload)
    first = city.answer("ct-again-1")
    assert first["status"] == "ok", first
    city.publish("commands/req", payload)  # the broker delivers it again (QoS 1: at least once)
    city.wait_for("commands/res", lambda _m: len(city.answers("ct-again-1")) >= 2)
    assert city.answers("ct-again-1") == [first, first]
    after = city.ask("set_config", {"logging.level": "INFO"}, cid="ct-again-2")
    assert after["result"]["local_revision"] == first["result"]["local_revision"] + 1, "run twice"


@autonomous
def test_set_config_changes_the_telemetry_period(city: City) -> None:
    fast = city.ask("set_config", _parse_args(["telemetry.interval_s=0.1"]), cid="ct-period-fast")
    assert fast["status"] == "ok" and "telemetry" in fast["result"]["changed"], fast
    answered = time.monotonic()
    arrivals: list[float] = []
    lock = threading.Lock()
    topic = f"{city.root}/telemetry"

    def on_telemetry(_c: object, _u: object, _msg: object) -> None:
        with lock:
            arrivals.append(time.monotonic())

    city.client.message_callback_add(topic, on_telemetry)
    try:
        deadline = answered + 20
        while time.monotonic() < deadline:
            with lock:
                if len(arrivals) >= 8:
                    break
            time.sleep(0.05)
    finally:
        city.client.message_callback_remove(topic)
        slow = city.ask("set_config", {"telemetry": {"interval_s": BASE_INTERVAL_S}}, cid="ct-period-slow")
        assert slow["status"] == "ok", slow
    assert len(arrivals) >= 8, f"only {len(arrivals)} telemetry messages in 20 s after interval_s=0.1"
    gaps = [b - a for a, b in itertools.pairwise(arrivals[2:])]
    assert statistics.median(gaps) < BASE_INTERVAL_S / 3, gaps


@autonomous
def test_set_config_is_reported_in_the_shadow(city: City, late: City) -> None:
    answer = city.ask("set_config", SET_CONFIG_FORMS["cli"], cid="ct-shadow-cfg")
    assert answer["status"] == "ok", answer
    revision = answer["result"]["local_revision"]
    reported = city.wait_for("shadow/reported", lambda m: m.get("local_revision") == revision)
    assert reported["local_overrides"]["telemetry"]["interval_s"] == 30
    newcomer = late.wait_for("shadow/reported", lambda m: m.get("local_revision", 0) >= revision)
    assert newcomer["local_overrides"]["telemetry"]["interval_s"] == 30


# -- shadow ------------------------------------------------------------------------------------------


@autonomous
def test_shadow_reported_is_retained_and_names_the_running_version(late: City) -> None:
    body = late.wait_for("shadow/reported")
    reported = ShadowReported.model_validate(body)
    parse_ts(reported.ts)
    assert isinstance(reported.config_version, int) and isinstance(reported.peripherals, dict)
    assert _retained(late, "shadow/reported"), "shadow/reported must be retained"
    status = late.wait_for("status", lambda m: m.get("online") is True)
    assert status["version"] in reported.software.values(), (status, reported.software)


@autonomous
def test_desired_state_is_applied_and_an_older_one_ignored(city: City) -> None:
    config = {"agent": {"logging": {"level": "INFO"}}}
    try:
        city.desire(7, config)
        city.wait_for("shadow/reported", lambda m: m.get("config_version") == 7)
        city.desire(6, config)
        city.ask("ping", cid="ct-after-stale")  # the device has read the older one by now
        versions = [json.loads(p)["config_version"] for p, _r in city.on("shadow/reported")]
        assert 6 not in versions and versions[-1] == 7, versions
    finally:
        city.publish("shadow/desired", b"", retain=True)


# -- RPC ---------------------------------------------------------------------------------------------


@pytest.mark.impls("agent", "fake")
def test_rpc_request_shape(device: Device, city: City) -> None:
    requests: list[dict[str, Any]] = []

    def answer(_c: object, _u: object, msg: Any) -> None:
        request = json.loads(msg.payload)
        requests.append(request)
        reply = {"id": request["id"], "ok": True, "result": {"echo": request["params"]}}
        city.client.publish(f"{city.root}/rpc/res", json.dumps(reply), qos=1)

    city.client.message_callback_add(f"{city.root}/rpc/req", answer)
    try:
        assert device.rpc("dossier", "lookup", {"q": 2}) == {"echo": {"q": 2}}
    finally:
        city.client.message_callback_remove(f"{city.root}/rpc/req")
    [request] = requests
    parsed = RpcRequest.model_validate(request)
    assert (parsed.service, parsed.method, parsed.params) == ("dossier", "lookup", {"q": 2}) and parsed.id


# -- what every answer and message looks like on the wire --------------------------------------------


def test_answers_have_the_contract_shape(city: City) -> None:
    """``{"id", "status", "result": {...}, "error": "..."}``: an object result always, an error text
    whenever the status is not ``ok``."""
    city.ask("ping", cid="ct-shape-ok")
    city.ask("make_tea", cid="ct-shape-error")
    city.ask("ping", cid="ct-shape-rejected", expires_in=-3600)
    for cid, status in (
        ("ct-shape-ok", "ok"),
        ("ct-shape-error", "error"),
        ("ct-shape-rejected", "rejected"),
    ):
        [answer] = city.answers(cid)
        assert set(answer) <= {"id", "status", "result", "error"}, answer
        assert answer["status"] == status and isinstance(answer["result"], dict), answer
        if status == "ok":
            assert answer.get("error") is None, answer
        else:
            assert isinstance(answer["error"], str) and answer["error"], answer


def test_command_expired_a_minute_ago_is_rejected(city: City) -> None:
    answer = city.ask("ping", cid="ct-late-1", expires_in=-60)
    assert answer["status"] == "rejected" and "expired" in answer["error"], answer


def test_qos_of_what_the_device_sends(device: Device, city: City) -> None:
    """status, events, shadow/reported and answers at QoS 1; telemetry at 0 or 1 (PROTOCOL.md)."""
    device.produce_events(1)
    city.ask("ping", cid="ct-qos-1")
    city.wait_for("events/+")
    city.wait_for("telemetry")
    assert city.qos_of("status") == {1}
    assert city.qos_of("events/") == {1}
    assert city.qos_of("commands/res") == {1}
    assert city.qos_of("telemetry") <= {0, 1}
    if device.autonomous:
        city.wait_for("shadow/reported")
        assert city.qos_of("shadow/reported") == {1}


def test_replayed_nonce_is_rejected(city: City) -> None:
    """A new command id carrying a nonce already used is a replay: rejected, not run."""
    first = json.loads(city.signed_command("ping", cid="ct-nonce-1"))
    assert city.ask("ping", cid="ct-nonce-1")["status"] == "ok"
    replay = {k: v for k, v in first.items() if k != "sig"}
    replay["id"] = "ct-nonce-2"
    city.publish("commands/req", json.dumps(city.signer.sign(replay)))
    answer = city.answer("ct-nonce-2")
    assert answer["status"] == "rejected" and "replay" in answer["error"], answer


@autonomous
def test_get_logs(city: City) -> None:
    city.ask("ping", cid="ct-logs-ping")  # something in the log
    answer = city.ask("get_logs", {"lines": 5}, cid="ct-logs-1")
    assert answer["status"] == "ok", answer
    lines = answer["result"]["lines"]
    assert isinstance(lines, list) and 0 < len(lines) <= 5 and all(isinstance(x, str) for x in lines)
    assert answer["result"]["count"] == len(lines)


@autonomous
@pytest.mark.parametrize("lines", [0, -3, True, "5", 2.5])
def test_get_logs_refuses_a_bad_line_count(city: City, lines: Any) -> None:
    answer = city.ask("get_logs", {"lines": lines}, cid=f"ct-logs-bad-{type(lines).__name__}-{lines}")
    assert answer["status"] == "error" and "lines" in answer["error"], answer


@autonomous
def test_restart_comes_back_with_a_new_boot_id(city: City) -> None:
    before = city.wait_for("status", lambda m: m.get("online") is True)
    answer = city.ask("restart", cid="ct-restart-1")
    assert answer["status"] == "ok", answer
    after = city.wait_for("status", lambda m: m.get("online") is True and m["boot_id"] != before["boot_id"])
    Status.model_validate(after)
    assert city.ask("ping", cid="ct-restart-ping")["status"] == "ok"


# -- signatures (devices enrolled in a fleet: the agent and the simulator given the fleet's keys) -----

signing = pytest.mark.impls("agent", "sim")


@signing
def test_unsigned_command_is_rejected_and_not_run(city: City) -> None:
    body = {
        k: v for k, v in json.loads(city.signed_command("ping", cid="ct-unsigned-1")).items() if k != "sig"
    }
    city.publish("commands/req", json.dumps(body))
    answer = city.answer("ct-unsigned-1")
    assert answer["status"] == "rejected" and "unsigned" in answer["error"], answer


@signing
def test_command_signed_by_another_key_is_rejected(city: City, tmp_path: Path) -> None:
    fleet_keys(tmp_path)  # a key ring the device was never given
    stranger = load_fleet_signer(tmp_path)
    city.publish("commands/req", city.signed_command("ping", cid="ct-forged-1", signer=stranger))
    assert city.answer("ct-forged-1")["status"] == "rejected"
    tampered = json.loads(city.signed_command("ping", {"n": 1}, cid="ct-tampered-1"))
    tampered["args"] = {"n": 2}
    city.publish("commands/req", json.dumps(tampered))
    assert city.answer("ct-tampered-1")["status"] == "rejected"


@signing
def test_unsigned_desired_state_is_ignored(city: City) -> None:
    version = city.wait_for("shadow/reported")["config_version"]
    try:
        unsigned = {"version": version + 50, "device": city.device_id, "config": {}, "release": None}
        city.publish("shadow/desired", json.dumps(unsigned), retain=True)
        city.ask("ping", cid="ct-after-unsigned-desired")
        reported = [json.loads(p)["config_version"] for p, _r in city.on("shadow/reported")]
        assert version + 50 not in reported, reported
    finally:
        city.publish("shadow/desired", b"", retain=True)
