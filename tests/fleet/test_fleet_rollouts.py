"""Staged rollouts through the REST API of a real fleet (real mosquitto, SQLite/PostgreSQL)."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest
import typer
from fleet_helpers import FleetFactory, MakeDevice, bearer, make_token, serve_http, wait_for
from typer.testing import CliRunner

from fleet.api import create_app
from fleet.cli import register


def test_rollout_routes_start_pause_resume_abort_and_refuse_overlap(
    make_fleet: FleetFactory, make_device: MakeDevice
) -> None:
    fleet = make_fleet()
    names = [f"cam-{i:02d}" for i in range(6)]
    for name in names:
        make_device(name, role="camera", version="1.0.0").connect()
    wait_for(
        lambda: all((fleet.store.device(n) or {}).get("version") == "1.0.0" for n in names),
        what="devices known",
    )
    headers = bearer(make_token(fleet, "admin"))
    with serve_http(create_app(fleet)) as url:

        def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
            return httpx.request(method, f"{url}{path}", headers=headers, timeout=10, **kwargs)

        paths = call("GET", "/openapi.json").json()["paths"]
        assert "post" in paths["/api/rollouts"] and "post" in paths["/api/rollouts/{rollout_id}/abort"]
        body = {
            "release": "1.1.0",
            "select": "role=camera",
            "waves": "50%,100%",
            "soak": "1h",
            "deadline": "1h",
        }
        started = call("POST", "/api/rollouts", json=body)
        assert started.status_code == 201, started.text
        rid = started.json()["id"]
        assert started.json()["planned"] == 6

        def released() -> set[str]:
            out = set()
            for n in names:
                doc = fleet.desired.get(n) or {}
                if (doc.get("release") or {}).get("version") == "1.1.0":
                    out.add(n)
            return out

        wait_for(lambda: len(released()) == 3, what="first wave targeted by the rollout thread")
        overlap = call("POST", "/api/rollouts", json={**body, "release": "1.2.0"})
        assert overlap.status_code == 409 and f"rollout {rid}" in overlap.json()["detail"]
        assert call("POST", f"/api/rollouts/{rid}/pause").json()["state"] == "paused"
        assert call("POST", f"/api/rollouts/{rid}/pause").status_code == 409
        assert call("POST", f"/api/rollouts/{rid}/resume").json()["state"] == "running"
        status = call("GET", f"/api/rollouts/{rid}").json()
        assert status["waves"][0]["targeted"] == 3
        aborted = call("POST", f"/api/rollouts/{rid}/abort").json()
        assert aborted["state"] == "aborted"
        assert released() == set()
        assert all(
            (fleet.desired.get(n) or {}).get("release", {}).get("version") in (None, "1.0.0") for n in names
        )
        assert call("GET", "/api/rollouts").json()[0]["id"] == rid
        assert call("POST", "/api/rollouts", json={**body, "release": "1.2.0"}).status_code == 201


def test_rollout_cli(
    make_fleet: FleetFactory, make_device: MakeDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = make_fleet()
    for i in range(4):
        make_device(f"cam-{i}", role="camera", version="1.0.0").connect()
    wait_for(lambda: len(fleet.store.devices()) == 4, what="devices known")
    monkeypatch.setenv("CITYEDGE_TOKEN", make_token(fleet, "admin"))
    app = typer.Typer()
    register(app)

    def cli(*args: str) -> Any:
        return CliRunner().invoke(app, list(args))

    with serve_http(create_app(fleet)) as url:
        out = cli(
            "rollout",
            "start",
            "--release",
            "1.1.0",
            "--select",
            "role=camera",
            "--waves",
            "50%,100%",
            "--soak",
            "1h",
            "--json",
            "--api",
            url,
        )
        assert out.exit_code == 0, out.output
        rid = json.loads(out.output)["id"]
        again = cli("rollout", "start", "--release", "1.2.0", "--api", url)
        assert again.exit_code == 1 and "still active on overlapping devices" in again.output
        assert "paused" in cli("rollout", "pause", rid, "--api", url).output
        assert "running" in cli("rollout", "resume", rid, "--api", url).output
        shown = cli("rollout", "status", rid, "--api", url)
        assert shown.exit_code == 0 and f"rollout {rid}: 1.1.0 on 'role=camera' (4 devices)" in shown.output
        assert "aborted" in cli("rollout", "abort", rid, "--api", url).output
        listing = json.loads(cli("rollout", "status", "--json", "--api", url).output)
        assert [r["id"] for r in listing] == [rid]


def test_two_workers_targeting_one_device_bump_its_desired_version_once(
    make_fleet: FleetFactory, make_device: MakeDevice
) -> None:
    first, second = make_fleet(), make_fleet()
    make_device("cam-twice", role="camera", version="1.0.0").connect()
    wait_for(lambda: first.store.device("cam-twice") is not None, what="device known")
    results: list[Any] = []
    workers = [
        threading.Thread(target=lambda s=s: results.append(s.desired.ensure_release("cam-twice", "1.1.0")))
        for s in (first, second) * 3
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    changed = [r for r in results if r is not None]
    assert len(results) == 6 and len(changed) == 1
    stored = first.desired.get("cam-twice") or {}
    assert stored["version"] == changed[0]["version"] == 1 and stored["release"]["version"] == "1.1.0"
    assert second.desired.ensure_release("cam-twice", "1.2.0") is not None  # another release: changed


def test_a_batch_of_devices_gets_the_release_in_one_go_and_only_once(
    make_fleet: FleetFactory, make_device: MakeDevice
) -> None:
    first, second = make_fleet(), make_fleet()
    names = [f"cam-batch-{i}" for i in range(6)]
    for name in names:
        make_device(name, role="camera", version="1.0.0").connect()
    make_device("cam-newer", role="camera", version="9.0.0").connect()
    wait_for(lambda: len(first.store.devices()) == 7, what="devices known")
    first.desired.ensure_release(names[0], "1.1.0")
    counts: list[int] = []
    batch = [*names, "cam-newer", "cam-unknown"]
    workers = [threading.Thread(target=lambda s=s: counts.append(s.desired.ensure_releases(batch, "1.1.0")))
               for s in (first, second)]  # fmt: skip
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert sorted(counts) == [0, 5]  # one worker changed the five that lacked it, the other none
    for name in names:
        stored = first.desired.get(name) or {}
        assert stored["version"] == 1 and stored["release"]["version"] == "1.1.0"
    assert first.desired.get("cam-newer") is None  # 9.0.0 would refuse 1.1.0: left out
