"""The simulated update exchange (hil/sim/ota.py): the contract's events, in the agent's order."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from pydantic import ValidationError
from sim_helpers import Observer, Seen, SimThread

from hil.sim.config import SimConfig
from hil.sim.device import Outgoing, SimDevice
from hil.sim.ota import Boot, Emit, GoOffline, OtaSettings, SimOta, parse_range, plan_update
from hil.sim.swarm import device_ids
from protocol.models import EventEnvelope, Status, decode
from protocol.topics import Topics

ASYNCAPI = Path(__file__).resolve().parents[2] / "docs" / "protocol" / "asyncapi.yaml"
RELEASE = {"version": "2.0.0", "target": "releases/2.0.0.json"}


def _inline(doc: dict[str, Any], node: Any) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = doc
            for part in node["$ref"][2:].split("/"):
                target = target[part]
            return _inline(doc, target)
        return {k: _inline(doc, v) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(doc, v) for v in node]
    return node


@pytest.fixture(scope="module")
def ota_schema() -> Draft202012Validator:
    doc = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    return Draft202012Validator(_inline(doc, {"$ref": "#/components/schemas/OtaEvent"}))


def _run(ota: SimOta, release: dict[str, Any] | None = RELEASE, until: float = 10_000.0) -> list[Any]:
    """Every action of one update, the clock jumping from step to step."""
    now = 0.0
    actions: list[Any] = list(ota.on_release(release, now))
    while (wait := ota.next_in(now)) is not None and now < until:
        now += wait
        actions += ota.due(now)
    return actions


def _kinds(actions: list[Any]) -> list[str]:
    return [a.kind if isinstance(a, Emit) else type(a).__name__ for a in actions]


def _ota(seed: int | str = 1, **settings: Any) -> SimOta:
    return SimOta(OtaSettings(**settings), seed, "cam-sim-0001", "1.0.0")


def test_a_good_update_sends_the_agents_events_in_order_and_boots_the_new_version() -> None:
    ota = _ota(seconds=(10.0, 20.0))
    actions = _run(ota)
    assert _kinds(actions) == [
        "ota.downloading",
        "ota.downloading",
        "ota.verifying",
        "ota.installing",
        "ota.restarting",
        "Boot",
        "ota.healthy",
        "ota.committed",
    ]
    assert ota.running == "2.0.0" and not ota.busy and ota.started == 1
    first, half = actions[0].data, actions[1].data
    assert first == {"from": "1.0.0", "to": "2.0.0", "bytes_done": 0, "bytes_total": first["bytes_total"]}
    assert half["bytes_done"] == first["bytes_total"] // 2 and first["bytes_total"] > 1_000_000
    assert all(a.data["from"] == "1.0.0" and a.data["to"] == "2.0.0" for a in actions if isinstance(a, Emit))
    assert _run(ota) == []  # the desired release runs now: nothing more to do


def test_failures_rollbacks_and_policy_carry_the_contracts_reason_and_code(
    ota_schema: Draft202012Validator,
) -> None:
    failed = _run(_ota(fail=1.0))
    assert _kinds(failed)[-1] == "ota.failed" and "Boot" not in _kinds(failed)
    assert failed[-1].data["code"] in {"integrity", "disk_full", "install"} and failed[-1].data["reason"]
    rolled = _ota(rollback=1.0)
    actions = _run(rolled)
    assert _kinds(actions)[-3:] == ["Boot", "Boot", "ota.rolled_back"]
    assert [a.version for a in actions if isinstance(a, Boot)] == ["2.0.0", "1.0.0"]
    assert actions[-1].data["code"] == "health" and rolled.running == "1.0.0"
    assert rolled.on_release(RELEASE, 0.0) == [] and not rolled.busy  # not tried again
    assert _kinds(rolled.on_release(RELEASE, 0.0, forced=True)) == ["ota.downloading"]
    policy: list[Any] = _ota().on_release({"version": "0.9.0", "target": "t"}, 0.0)
    assert _kinds(policy) == ["ota.failed"] and policy[0].data["code"] == "policy"
    allowed = _ota().on_release({"version": "0.9.0", "target": "t", "allow_downgrade": True}, 0.0)
    assert _kinds(allowed) == ["ota.downloading"]
    for emit in [a for a in [*failed, *actions, *policy] if isinstance(a, Emit)]:
        envelope = {
            "id": "01J",
            "seq": 1,
            "ts": "2026-11-23T01:02:03Z",
            "device": "cam-sim-0001",
            "kind": emit.kind,
        }
        assert not [e.message for e in ota_schema.iter_errors({**envelope, "data": emit.data})], emit


def test_a_device_that_drops_off_mid_download_finishes_later() -> None:
    ota = _ota(offline=1.0, seconds=(10.0, 10.0), offline_seconds=(30.0, 30.0))
    actions = _run(ota)
    offline = [a for a in actions if isinstance(a, GoOffline)]
    assert [a.seconds for a in offline] == [30.0]
    assert _kinds(actions)[-1] == "ota.committed"
    # the rest of the update waits for the outage: it ends at least 40 s after the start
    ota2 = _ota(offline=1.0, seconds=(10.0, 10.0), offline_seconds=(30.0, 30.0))
    ota2.on_release({"version": "3.0.0", "target": "t"}, 0.0)
    assert "ota.committed" not in _kinds(ota2.due(39.0)) and ota2.busy


def test_a_newer_release_supersedes_the_download_and_the_same_one_changes_nothing() -> None:
    ota = _ota(seconds=(100.0, 100.0))
    ota.on_release(RELEASE, 0.0)
    assert ota.on_release(dict(RELEASE), 1.0) == [] and ota.target == RELEASE
    newer: list[Any] = ota.on_release({"version": "2.1.0", "target": "t"}, 2.0)
    assert _kinds(newer) == ["ota.downloading"] and newer[0].data["to"] == "2.1.0"
    assert ota.on_release(None, 3.0) == [] and not ota.busy and ota.next_in(3.0) is None


def test_fates_are_drawn_per_seed_device_and_version_whatever_the_timing() -> None:
    settings = OtaSettings(fail=0.05, rollback=0.02, offline=0.01)
    plans = [plan_update(settings, 7, f"cam-sim-{i:04d}", "2.0.0") for i in range(4000)]
    assert plans == [plan_update(settings, 7, f"cam-sim-{i:04d}", "2.0.0") for i in range(4000)]
    fates = [p.fate for p in plans]
    assert 0.035 < fates.count("fail") / 4000 < 0.065
    assert 0.01 < fates.count("rollback") / 4000 < 0.03
    assert 0.003 < sum(p.offline_at is not None for p in plans) / 4000 < 0.02
    assert all(5.0 <= p.download_s <= 30.0 for p in plans)
    assert plans != [plan_update(settings, 8, f"cam-sim-{i:04d}", "2.0.0") for i in range(4000)]


def test_settings_parse_ranges_and_refuse_impossible_chances() -> None:
    assert parse_range("5..30") == (5.0, 30.0) and parse_range("7") == (7.0, 7.0)
    with pytest.raises(ValueError, match="goes down"):
        parse_range("30..5")
    cfg = SimConfig.model_validate(
        {"broker": "mqtt://h:1", "ota_fail": 0.05, "ota_seconds": "0.5..2", "ota_offline_seconds": "1..3"}
    )
    assert cfg.ota == OtaSettings(fail=0.05, seconds=(0.5, 2.0), offline_seconds=(1.0, 3.0))
    with pytest.raises(ValidationError, match="must not exceed 1"):
        SimConfig(broker="mqtt://h:1", ota_fail=0.7, ota_rollback=0.5)
    with pytest.raises(ValidationError, match="range"):
        SimConfig.model_validate({"broker": "mqtt://h:1", "ota_seconds": "fast"})


def test_the_device_reports_each_step_as_an_event_and_boots_with_the_new_version() -> None:
    clock = [0.0]
    device = SimDevice(
        "cam-sim-0001",
        "camera",
        Topics(),
        random.Random(1),
        version="1.0.0",
        clock=lambda: clock[0],
        ota=OtaSettings(seconds=(10.0, 10.0)),
    )
    desired = json.dumps({"version": 3, "config": {}, "release": RELEASE}).encode()
    first = device.on_desired(desired, "city/v1/devices/cam-sim-0001/shadow/desired")
    assert [o.family for o in first] == ["shadow", "events"]
    assert json.loads(first[0].payload)["release"] == RELEASE
    sent: list[Outgoing] = list(first)
    while (wait := device.ota_next_in()) is not None:
        clock[0] += wait
        outs, away = device.ota_due()
        assert away is None
        sent += outs
    events = [decode(EventEnvelope, o.payload, topic=o.topic) for o in sent if o.family == "events"]
    assert [e.kind for e in events][-2:] == ["ota.healthy", "ota.committed"]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    status = [decode(Status, o.payload, topic=o.topic) for o in sent if o.family == "status"]
    assert [s.version for s in status] == ["2.0.0"] and device.version == "2.0.0"


def test_devices_on_a_broker_update_drop_off_mid_download_and_come_back_to_finish(
    sim_factory: Callable[..., SimThread], observer_factory: Callable[..., Observer]
) -> None:
    obs = observer_factory()
    sim = sim_factory(
        devices=4,
        telemetry_interval_s=60,
        ota_offline=1.0,
        ota_seconds="0.5..1",
        ota_offline_seconds="0.5..1",
    )
    sim.wait_connected()
    for device, _role in device_ids(sim.cfg):
        body = {"version": 5, "device": device, "config": {}, "release": RELEASE}
        obs.client.publish(Topics().shadow_desired(device), json.dumps(body), qos=1, retain=True)

    def committed(ms: list[Seen]) -> bool:
        return len({m.topic for m in ms}) == 4

    obs.wait_for(committed, "/events/ota.committed", 60, "every device committed 2.0.0")
    for device, _role in device_ids(sim.cfg):
        mine = obs.snapshot(f"/{device}/")
        kinds = [m.topic.rsplit("/", 1)[1] for m in mine if "/events/ota." in m.topic]
        assert kinds == [
            "ota.downloading",
            "ota.downloading",
            "ota.verifying",
            "ota.installing",
            "ota.restarting",
            "ota.healthy",
            "ota.committed",
        ], device
        online = [m.json()["online"] for m in mine if m.topic.endswith("/status")]
        assert online[-3:] == [False, True, True], online  # dropped off, back, booted 2.0.0
    assert sim.stats.ota_offline == 4 and sim.stats.ota["ota.committed"] == 4
