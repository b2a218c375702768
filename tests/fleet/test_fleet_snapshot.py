"""``snapshot`` on a camera, through the real chain: fleet → mosquitto → the agent → its local API →
the camera's role process (SnapshotTaker over a real Unix socket) → back to the fleet, where the
picture is served only by the audited image route."""

from __future__ import annotations

import hashlib
import sys
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from fleet_helpers import admin_headers, bearer, make_token, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
from agent_helpers import AgentProc, fast_config

from agent.camera.snapshot import SnapshotTaker, register_with
from fleet.api import create_app
from fleet.broker import MosquittoBroker
from fleet.config import FleetConfig
from fleet.service import FleetService
from hw.camera import Frame

DEVICE = "cam-snap-0001"


def _answer(fleet: FleetService, command_id: str) -> dict[str, Any]:
    def answered() -> dict[str, Any] | None:
        row = fleet.store.command(command_id)
        return row if row is not None and row["status"] != "pending" else None

    found: dict[str, Any] = wait_for(answered, 40, f"the answer to {command_id}")
    return found


@pytest.mark.timeout(180)
def test_snapshot_reaches_the_fleet_from_the_camera_process(tmp_path: Path, broker: MosquittoBroker) -> None:
    config = FleetConfig(
        broker_url=broker.url,
        db_url=f"sqlite:///{tmp_path / 'fleet.db'}",
        worker_id="fleet-snapshot-test",
        retained_sync_s=0,
        batch_interval_s=0.02,
    )
    fleet = FleetService(config).start()
    agent = AgentProc(
        tmp_path, fast_config(DEVICE, broker.url, tmp_path / "agent", device={"role": "camera"})
    ).start()
    stop = threading.Event()
    try:
        agent.wait_connected()
        wait_for(lambda: fleet.store.device(DEVICE), 30, "the camera in the fleet's registry")

        first = fleet.commands.issue(DEVICE, "snapshot", {}, None)
        down = _answer(fleet, first["id"])
        assert down["status"] == "error"
        assert down["error"] == (
            "the camera process (cityedge camera run) is not running: "
            "nothing on this device serves 'snapshot'"
        )

        image = np.full((360, 960, 3), 90, np.uint8)
        cv2.rectangle(image, (100, 100), (400, 300), (20, 200, 240), -1)
        taker = SnapshotTaker(None, 0.45)
        taker.update(Frame(image=image, seq=41, t=0.0, wall=0.0))
        relay = register_with(agent.client, taker, stop)
        assert relay is not None, "the agent's local API offers the command relay"

        def served() -> dict[str, Any] | None:
            row = _answer(fleet, fleet.commands.issue(DEVICE, "snapshot", {}, None)["id"])
            return row if row["status"] == "ok" else None

        shot = wait_for(served, 60, "a snapshot answered by the camera process")
        result = shot["result"]
        assert "data" not in result, "listings never carry the picture"
        assert result["image"] == f"/devices/{DEVICE}/snapshot/{shot['id']}"
        assert (result["width"], result["height"], result["frame_seq"]) == (640, 240, 41)

        with TestClient(create_app(fleet)) as http:
            listed = http.get(f"/api/devices/{DEVICE}/commands", headers=admin_headers(fleet)).json()
            assert all("data" not in (c["result"] or {}) for c in listed)

            viewer = bearer(make_token(fleet, "viewer"))
            assert http.get(result["image"], headers=viewer).status_code == 403, "viewers see no pictures"
            got = http.get(result["image"], headers=admin_headers(fleet))
            assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
            assert hashlib.sha256(got.content).hexdigest() == result["sha256"]
            picture = cv2.imdecode(np.frombuffer(got.content, np.uint8), cv2.IMREAD_COLOR)
            assert picture is not None and picture.shape == (240, 640, 3)
            other = http.get(f"/devices/cam-other/snapshot/{shot['id']}", headers=admin_headers(fleet))
            assert other.status_code == 404

            trail = http.get("/api/audit", headers=admin_headers(fleet)).json()
            entries = trail["entries"] if isinstance(trail, dict) else trail
            views = [e for e in entries if e["action"] == "GET /devices/{device_id}/snapshot/{command_id}"]
            assert next((e["devices"], e["outcome"]) for e in views if e["role"] == "admin") == (
                [DEVICE],
                "allowed",
            ), "the view is on the audit trail"
            assert any(e["role"] == "viewer" and e["outcome"] != "allowed" for e in views)

            page = http.get(f"/devices/{DEVICE}", headers=admin_headers(fleet))
            assert page.status_code == 200
            assert f'src="{result["image"]}"' in page.text and "Take snapshot" in page.text
    finally:
        stop.set()
        agent.terminate()
        fleet.stop()
