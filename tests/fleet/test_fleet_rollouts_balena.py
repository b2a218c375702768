"""Rollouts over a balenaOS fleet through the real balena-sdk, against balenaCloud's HTTP API as
recorded-shaped answers (``responses`` + balena_cloud.BalenaCloud): selection by device tags,
per-wave pinning, outcome accounting from device status, halt, un-pin / re-pin on abort, errors,
and a fleet worker configured for balena driving a rollout started through its REST API."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import responses
from balena_cloud import BalenaCloud, Release
from fleet_helpers import FleetFactory, admin_headers, serve_http, wait_for
from pydantic import ValidationError
from sqlalchemy import Engine

from fleet.api import create_app
from fleet.config import FleetConfig, FleetConfigError
from fleet.db import create_schema, make_engine
from fleet.rollouts import store
from fleet.rollouts.backend import build_backend
from fleet.rollouts.balena import REDUCED, BalenaBackend, BalenaError, device_fact, load_balena
from fleet.rollouts.driver import abort, tick
from fleet.rollouts.plan import DeviceFact, Policy, Selector

T0 = datetime(2026, 12, 1, 2, 0, tzinfo=timezone.utc)
SLUG = "cityedge/kiosks"
KEY = "test-api-key-0001"


@pytest.fixture
def cloud() -> Iterator[BalenaCloud]:
    fake = BalenaCloud(SLUG)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        fake.install(mock)
        yield fake


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "balena.key"
    path.write_text(KEY + "\n")
    return path


def backend_for(token_file: Path) -> BalenaBackend:
    config = FleetConfig(rollout_backend="balena", balena_fleet=SLUG, balena_token_file=token_file)
    return BalenaBackend(load_balena(config), SLUG, poll_s=0.0)


def kiosk_fleet(cloud: BalenaCloud, n: int) -> tuple[Release, Release, Release]:
    old, pinned_old, new = cloud.release("1.0.0"), cloud.release("0.9.5"), cloud.release("1.1.0")
    for i in range(n):
        cloud.device(f"kiosk-hn-{i:03d}", old, role="kiosk", site="hn-btl")
    cloud.device("kiosk-hn-pinned", pinned_old, pinned=pinned_old, role="kiosk", site="hn-btl")
    cloud.device("cam-hn-000", old, role="camera", site="hn-btl")
    return old, pinned_old, new


def engine_at(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    create_schema(engine)
    return engine


def test_select_matches_device_tags_and_remembers_each_pin(cloud: BalenaCloud, token_file: Path) -> None:
    _old, pinned_old, _new = kiosk_fleet(cloud, 3)
    chosen = backend_for(token_file).select(Selector.parse("role=kiosk,site=hn-*"))
    pinned = next(d for d in cloud.devices if d.name == "kiosk-hn-pinned")
    assert len(chosen) == 4 and chosen[pinned.uuid] == pinned_old.commit
    assert {v for k, v in chosen.items() if k != pinned.uuid} == {None}  # they track the fleet
    by_name = backend_for(token_file).select(Selector.parse("name=cam-*,version=1.0.0"))
    assert list(by_name) == [cloud.devices[-1].uuid]
    assert {r.authorization for r in cloud.requests} == {f"Bearer {KEY}"}  # the key from the file


def test_device_status_becomes_the_same_facts_as_our_ota_reports() -> None:
    on_new = {"is_running__release": [{"commit": "c" * 32}], "api_heartbeat_state": "online"}
    on_old = {"is_running__release": [{"commit": "a" * 32}], "api_heartbeat_state": "online"}
    assert device_fact({**on_new, "overall_status": "operational"}, "c" * 32).ota_kind == "ota.committed"
    reduced = device_fact({**on_new, "overall_status": "reduced-functionality"}, "c" * 32)
    assert reduced == DeviceFact(online=True, ota_kind="ota.installing", reason=REDUCED)
    assert device_fact({**on_old, "overall_status": "updating"}, "c" * 32).ota_kind == "ota.downloading"
    assert device_fact({**on_old, "overall_status": "operational"}, "c" * 32).ota_kind is None
    gone = {**on_old, "api_heartbeat_state": "timeout", "overall_status": "disconnected"}
    assert device_fact(gone, "c" * 32).online is False
    assert device_fact({"is_online": True, "is_running__release": []}, "c" * 32).online is True


def test_status_is_read_at_most_every_poll_period(cloud: BalenaCloud, token_file: Path) -> None:
    kiosk_fleet(cloud, 3)
    now = [0.0]
    config = FleetConfig(rollout_backend="balena", balena_fleet=SLUG, balena_token_file=token_file)
    backend = BalenaBackend(load_balena(config), SLUG, poll_s=30.0, clock=lambda: now[0])
    first, second = cloud.devices[0].uuid, cloud.devices[1].uuid
    backend.set_release(first, "1.1.0")
    assert backend.facts("1.1.0", [first])[first].ota_kind == "ota.downloading"
    reads = sum(1 for r in cloud.requests if r.method == "GET" and "uuid in" in r.query)
    cloud.settle(first)
    assert backend.facts("1.1.0", [first])[first].ota_kind == "ota.downloading"  # kept
    assert backend.facts("1.1.0", [first, second])[second].ota_kind is None  # a new device: read now
    now[0] = 30.0
    assert backend.facts("1.1.0", [first, second])[first].ota_kind == "ota.committed"
    assert sum(1 for r in cloud.requests if r.method == "GET" and "uuid in" in r.query) == reads + 2


def run(engine: Engine, backend: BalenaBackend, start: datetime, limit: int = 20) -> tuple[str, datetime]:
    now = start
    for _ in range(limit):
        result = tick(engine, "r1", backend.set_release, lambda d: backend.facts("1.1.0", d), now)
        if result.state != "running":
            return result.state, now
        now += timedelta(seconds=1)
    return "running", now


def test_waves_pin_devices_and_complete(cloud: BalenaCloud, token_file: Path, tmp_path: Path) -> None:
    _old, _pinned_old, new = kiosk_fleet(cloud, 7)
    backend = backend_for(token_file)
    engine = engine_at(tmp_path)
    policy = Policy(waves=(0.25, 1.0), max_failure=0.1, min_executed=2, soak_s=0.0, deadline_s=600.0)
    waves = store.create_rollout(
        engine, "r1", "1.1.0", "role=kiosk", policy, backend.select(Selector.parse("role=kiosk")), T0
    )
    assert [len(w) for w in waves] == [2, 6]
    assert run(engine, backend, T0, limit=3)[0] == "running"
    pinned = {d.uuid for d in cloud.devices if d.pinned == new.id}
    assert pinned == set(waves[0])  # only the first wave, nobody outside it
    assert {cloud.by_uuid(u).overall_status for u in pinned} == {"updating"}
    for uuid in waves[0]:
        cloud.settle(uuid)
    state, now = run(engine, backend, T0 + timedelta(seconds=5), limit=3)
    assert state == "running" and {d.uuid for d in cloud.devices if d.pinned == new.id} == set(
        waves[0] + waves[1]
    )
    for uuid in waves[1]:
        cloud.settle(uuid)
    assert run(engine, backend, now + timedelta(seconds=1))[0] == "complete"
    assert cloud.devices[-1].pinned is None  # the camera was not selected


def test_a_failing_wave_halts_and_abort_restores_each_pin(
    cloud: BalenaCloud, token_file: Path, tmp_path: Path
) -> None:
    _old, pinned_old, new = kiosk_fleet(cloud, 7)
    backend = backend_for(token_file)
    engine = engine_at(tmp_path)
    policy = Policy(waves=(0.5, 1.0), max_failure=0.1, min_executed=3, soak_s=0.0, deadline_s=600.0)
    selected = backend.select(Selector.parse("role=kiosk"))
    waves = store.create_rollout(engine, "r1", "1.1.0", "role=kiosk", policy, selected, T0)
    run(engine, backend, T0, limit=2)
    first = waves[0]
    cloud.settle(first[0], "reduced-functionality")  # a service of the release keeps crashing
    for uuid in first[1:]:
        cloud.settle(uuid)
    state, _ = run(engine, backend, T0 + timedelta(seconds=601), limit=2)
    assert state == "halted"
    reason = store.load(engine, "r1").reason
    assert "failure rate 25.0% (1 of 4 executed)" in reason and REDUCED in reason and first[0] in reason
    assert all(d.pinned != new.id for d in cloud.devices if d.uuid in waves[1])  # wave 2 never pinned

    assert abort(engine, "r1", backend.restore) == len(first)
    for uuid in first:
        device = cloud.by_uuid(uuid)
        assert device.pinned == (pinned_old.id if selected[uuid] else None)
    bodies = [p.body for p in cloud.patches()]
    assert bodies.count({"is_pinned_on__release": None}) == sum(1 for u in first if selected[u] is None)


def test_balena_refusals_are_rollout_errors(cloud: BalenaCloud, token_file: Path) -> None:
    kiosk_fleet(cloud, 2)
    cloud.release("1.2.0", status="failed")
    backend = backend_for(token_file)
    with pytest.raises(BalenaError, match=r"finding release 9\.9\.9"):
        backend.set_release(cloud.devices[0].uuid, "9.9.9")
    with pytest.raises(BalenaError, match="is failed"):
        backend.set_release(cloud.devices[0].uuid, "1.2.0")
    cloud.refuse = 401
    with pytest.raises(BalenaError, match="listing the devices"):
        backend.select(Selector())


def test_config_needs_a_fleet_and_a_key_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="balena_fleet and balena_token_file"):
        FleetConfig(rollout_backend="balena", balena_fleet=SLUG)
    empty = tmp_path / "empty.key"
    empty.write_text("")
    config = FleetConfig(rollout_backend="balena", balena_fleet=SLUG, balena_token_file=empty)
    with pytest.raises(FleetConfigError, match="is empty"):
        build_backend(config, make_engine("sqlite://"), None)  # type: ignore[arg-type]


def test_fleet_worker_on_balena_runs_a_rollout_from_its_api(
    cloud: BalenaCloud, token_file: Path, make_fleet: FleetFactory
) -> None:
    _old, _pinned_old, new = kiosk_fleet(cloud, 3)
    fleet = make_fleet(rollout_backend="balena", balena_fleet=SLUG, balena_token_file=token_file)
    assert isinstance(fleet.rollout_backend, BalenaBackend)
    body = {"release": "1.1.0", "select": "role=kiosk", "waves": "50%,100%", "soak": "1h", "deadline": "1h"}
    with serve_http(create_app(fleet)) as url:
        started = httpx.post(f"{url}/api/rollouts", json=body, headers=admin_headers(fleet), timeout=30)
        assert started.status_code == 201, started.text
        assert started.json()["backend"] == "balena" and started.json()["planned"] == 4
        wait_for(
            lambda: sum(1 for d in cloud.devices if d.pinned == new.id) == 2,
            timeout=30,
            what="the rollout thread pinning the first wave",
        )
        rid = started.json()["id"]
        status = httpx.get(f"{url}/api/rollouts/{rid}", headers=admin_headers(fleet), timeout=30).json()
        assert status["waves"][0]["counts"] == {"downloading": 2}
        page = httpx.get(f"{url}/rollouts/{rid}", headers=admin_headers(fleet), timeout=30)
        assert "balenaOS (release pinning)" in page.text
        abort_url = f"{url}/api/rollouts/{rid}/abort"
        cloud.refuse = 503  # balenaCloud down: nothing is marked aborted, the abort can be asked again
        refused = httpx.post(abort_url, headers=admin_headers(fleet), timeout=30)
        assert refused.status_code == 502 and "balena" in refused.json()["detail"]
        assert store.load(fleet.store.writer, rid).state == "paused"
        cloud.refuse = None
        aborted = httpx.post(abort_url, headers=admin_headers(fleet), timeout=30)
        assert aborted.json()["state"] == "aborted"
        assert all(d.pinned != new.id for d in cloud.devices)
