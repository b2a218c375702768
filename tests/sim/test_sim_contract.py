"""The simulator on a real mosquitto: many devices, roles, scenarios, stop and broker loss. The contract's
rules for one device are checked on the simulator, the agent and FakeDevice alike in tests/contract."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sim_helpers import Observer, Seen, SimThread, wait_until

from fleet.broker import MosquittoBroker
from protocol.models import CommandResult, EventEnvelope, ShadowReported, Status, Telemetry, decode
from protocol.timefmt import format_ts, utc_now
from protocol.topics import Topics

T = Topics()
STATUS_FILTER = "city/v1/devices/+/status"
SimF = Callable[..., SimThread]
ObsF = Callable[..., Observer]


def _command(cid: str, name: str, args: dict[str, Any] | None = None, ttl_s: float = 60) -> bytes:
    now = utc_now()
    cmd = {
        "id": cid,
        "name": name,
        "args": args or {},
        "issued_at": format_ts(now),
        "expires_at": format_ts(now + timedelta(seconds=ttl_s)),
        "nonce": f"nonce-{cid}",
    }
    return json.dumps(cmd).encode()


def _statuses(obs: Observer) -> dict[str, Status]:
    latest: dict[str, Status] = {}
    for m in obs.snapshot("/status"):
        latest[T.parse(m.topic).device] = decode(Status, m.payload, topic=m.topic)
    return latest


def test_devices_connect_with_retained_online_status(sim_factory: SimF, observer_factory: ObsF) -> None:
    sim = sim_factory(devices=20)
    sim.wait_connected()
    obs = observer_factory(STATUS_FILTER)  # subscribes after the fact: sees retained messages only
    obs.wait_for(lambda ms: len(ms) >= 20, "/status", 10, "20 retained statuses")
    assert all(m.retain for m in obs.snapshot())
    statuses = _statuses(obs)
    assert len(statuses) == 20
    for device, status in statuses.items():
        assert status.online is True
        assert status.role == ("kiosk" if device.startswith("kiosk-sim-") else "camera")
        assert status.boot_id and status.version
    assert "kiosk-sim-0001" in statuses and "cam-sim-0010" in statuses


def test_telemetry_events_and_shadow_follow_the_models(sim_factory: SimF, observer_factory: ObsF) -> None:
    obs = observer_factory()
    sim = sim_factory(devices=6, telemetry_interval_s=0.2, time_scale=240)
    sim.wait_connected()
    obs.wait_for(lambda ms: len(ms) >= 24, "/events/", 20, "events from the simulated devices")
    telemetry = [decode(Telemetry, m.payload, topic=m.topic) for m in obs.snapshot("/telemetry")]
    assert len(telemetry) >= 6
    kiosk_t = [m.json() for m in obs.snapshot("kiosk-sim-0001/telemetry")]
    cam_t = [m.json() for m in obs.snapshot("cam-sim-0001/telemetry")]
    assert kiosk_t and cam_t
    assert {"kiosk_sessions_total", "kiosk_sessions_last_hour"} <= set(kiosk_t[0])
    assert {"camera_fps", "camera_inference_ms_p50"} <= set(cam_t[0])
    assert [t["seq"] for t in cam_t] == sorted(t["seq"] for t in cam_t)
    for m in obs.snapshot("/shadow/reported"):
        assert m.retain is False or m.retain is True
        decode(ShadowReported, m.payload, topic=m.topic)
    _check_events(obs.snapshot("/events/"))


def _check_events(seen: list[Seen]) -> None:
    seqs: dict[str, list[int]] = defaultdict(list)
    ids: set[str] = set()
    kinds: set[str] = set()
    for m in seen:
        env = decode(EventEnvelope, m.payload, topic=m.topic)
        parsed = T.parse(m.topic)
        assert (env.device, env.kind) == (parsed.device, parsed.kind)
        assert env.id not in ids
        ids.add(env.id)
        kinds.add(env.kind)
        seqs[env.device].append(env.seq)
        if env.kind == "traffic.count":  # per line, direction and class, like agent/camera
            for line in env.data["lines"].values():
                directions = line["directions"].values()
                assert line["total"] == sum(d["total"] for d in directions)
                for d in directions:
                    assert d["total"] == sum(d["classes"].values())
                    assert set(d["classes"]) <= {"bicycle", "car", "motorcycle", "bus", "truck"}
    assert "traffic.count" in kinds and "kiosk.session" in kinds
    for device, values in seqs.items():
        assert values == list(range(values[0], values[0] + len(values))), f"{device} seq not +1: {values}"


def _answers(obs: Observer, cid: str) -> list[Seen]:
    return [m for m in obs.snapshot("/commands/res") if m.json()["id"] == cid]


def _ask(obs: Observer, device: str, payload: bytes, cid: str, count: int = 1) -> CommandResult:
    obs.publish(T.commands_req(device), payload)
    got = obs.wait_for(lambda ms: len(_answers(obs, cid)) >= count, "/commands/res", 10, f"answer to {cid}")
    assert got
    return decode(CommandResult, _answers(obs, cid)[-1].payload)


def test_commands_by_role_and_the_run_counter(sim_factory: SimF, observer_factory: ObsF) -> None:
    """What only the simulator shows: its run counter, and snapshot by role. The contract's rules
    for commands (once per id, expiry, set_config forms, ...) are in tests/contract."""
    sim = sim_factory(devices=2)
    sim.wait_connected()
    obs = observer_factory()
    kiosk, cam = "kiosk-sim-0001", "cam-sim-0001"
    ping = _command("c-ping-1", "ping")
    first = _ask(obs, kiosk, ping, "c-ping-1")
    again = _ask(obs, kiosk, ping, "c-ping-1", count=2)
    assert first.status == "ok" and again == first
    assert sim.sim is not None and sim.sim.devices[0].commands.executed == 1
    assert sim.sim.devices[0].commands.redelivered == 1
    assert _ask(obs, kiosk, _command("c-snap", "snapshot"), "c-snap").status == "error"
    assert _ask(obs, cam, _command("c-snap2", "snapshot"), "c-snap2").status == "ok"
    assert _ask(obs, cam, _command("c-restart", "restart"), "c-restart").status == "ok"


def test_desired_state_is_applied_and_reported(
    broker: MosquittoBroker, sim_factory: SimF, observer_factory: ObsF
) -> None:
    obs = observer_factory()
    desired = b'{"version": 3, "config": {"lang": "vi"}}'
    obs.client.publish(T.shadow_desired("kiosk-sim-0001"), desired, 1, True)
    sim = sim_factory(devices=1)
    sim.wait_connected()
    obs.wait_for(
        lambda ms: any(m.json()["config_version"] == 3 for m in ms), "/shadow/reported", 10, "reported v3"
    )
    assert sim.sim is not None and sim.sim.devices[0].config == {"lang": "vi"}


def test_graceful_stop_leaves_offline_status(sim_factory: SimF, observer_factory: ObsF) -> None:
    sim = sim_factory(devices=20)
    sim.wait_connected()
    summary = sim.stop().summary()
    assert summary["connected_peak"] == 20 and summary["connected"] == 0
    obs = observer_factory(STATUS_FILTER)
    obs.wait_for(lambda ms: len(ms) >= 20, "/status", 10, "20 retained statuses")
    assert all(s.online is False for s in _statuses(obs).values())


def test_devices_come_back_after_broker_dies(
    broker: MosquittoBroker, sim_factory: SimF, observer_factory: ObsF
) -> None:
    sim = sim_factory(devices=20)
    sim.wait_connected()
    broker.kill()  # abrupt: no goodbye from anyone
    wait_until(lambda: sim.stats.connected == 0, 15, "devices to notice the broker is gone")
    broker.start()
    sim.wait_connected(timeout=30)
    assert sim.stats.reconnects >= 20
    obs = observer_factory(STATUS_FILTER)
    obs.wait_for(lambda ms: len(ms) >= 20, "/status", 10, "20 statuses after the restart")
    assert all(s.online for s in _statuses(obs).values())
