"""REST API, OpenAPI document, metrics, health and the dashboard, on both databases."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import APIRouter, Depends, Request
from fastapi.testclient import TestClient
from fleet_helpers import FakeDevice, MakeDevice, admin_headers, wait_for

from fleet.api import create_app
from fleet.auth.deps import require
from fleet.auth.permissions import DEVICES_READ
from fleet.service import FleetService


@pytest.fixture
def client(fleet: FleetService) -> Iterator[TestClient]:
    extra = APIRouter(prefix="/api/extra")

    @extra.get("/hello", dependencies=[Depends(require(DEVICES_READ))])
    def hello(request: Request) -> dict[str, str]:
        return {"worker": request.app.state.fleet.config.worker_id}

    with TestClient(create_app(fleet, extra_routers=[extra]), headers=admin_headers(fleet)) as c:
        yield c


@pytest.fixture
def devices(fleet: FleetService, make_device: MakeDevice) -> list[FakeDevice]:
    kiosk = make_device("kiosk-api-0001", role="kiosk").connect()
    camera = make_device("cam-api-0002", role="camera").connect()
    camera.telemetry(cpu_pct=33.0, mem_pct=44.0, temp_c=55.5)
    for _ in range(3):
        camera.event("traffic.count", cars=1)
    # a signed event that is not evidence: violations are checked against the PKI at arrival
    # (tests/camera/test_camera_fleet_evidence.py), and this fleet runs without one
    camera.signed_event("traffic.incident", Ed25519PrivateKey.generate(), seq=5, plate_hash="abc")
    camera.crash()
    wait_for(lambda: fleet.store.device(camera.id) and not fleet.store.device(camera.id)["online"])  # type: ignore[index]
    wait_for(lambda: fleet.store.gaps(camera.id), what="gap")
    return [kiosk, camera]


def test_openapi_document(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    paths = set(doc["paths"])
    for path in (
        "/api/devices",
        "/api/devices/{device_id}",
        "/api/devices/{device_id}/events",
        "/api/devices/{device_id}/gaps",
        "/api/devices/{device_id}/commands",
        "/api/commands/{command_id}",
        "/api/stats",
        "/healthz",
        "/metrics",
        "/api/extra/hello",
    ):
        assert path in paths, path
    assert "/" not in paths  # the dashboard is not part of the API
    schemas = doc["components"]["schemas"]
    assert {"DeviceOut", "EventOut", "GapOut", "CommandIn", "CommandOut", "StatsOut"} <= set(schemas)
    assert client.get("/api/extra/hello").json()["worker"].startswith("fleet-test-")


def test_devices_and_events(client: TestClient, devices: list[FakeDevice]) -> None:
    listed = client.get("/api/devices").json()
    assert [d["id"] for d in listed] == ["cam-api-0002", "kiosk-api-0001"]
    assert [d["id"] for d in client.get("/api/devices", params={"online": "true"}).json()] == [
        "kiosk-api-0001"
    ]
    assert [d["id"] for d in client.get("/api/devices", params={"role": "camera"}).json()] == ["cam-api-0002"]
    camera = client.get("/api/devices/cam-api-0002").json()
    assert camera["online"] is False and camera["telemetry"]["temp_c"] == 55.5 and camera["last_seq"] == 5
    assert client.get("/api/devices/nobody-0001").status_code == 404
    events = client.get("/api/devices/cam-api-0002/events").json()
    assert [e["seq"] for e in events] == [5, 2, 1, 0]
    assert events[0]["ts"].endswith("Z") and events[0]["data"] == {"plate_hash": "abc"}
    only = client.get("/api/devices/cam-api-0002/events", params={"kind": "traffic.count", "limit": 2}).json()
    assert [e["seq"] for e in only] == [2, 1]
    later = client.get("/api/devices/cam-api-0002/events", params={"since": "2999-01-01T00:00:00Z"})
    assert later.json() == []
    bad = client.get("/api/devices/cam-api-0002/events", params={"since": "last tuesday"})
    assert bad.status_code == 422 and "RFC 3339" in bad.json()["detail"]
    assert client.get("/api/devices/nobody-0001/events").status_code == 404
    gaps = client.get("/api/devices/cam-api-0002/gaps").json()
    assert gaps == [gaps[0]] and (gaps[0]["first_seq"], gaps[0]["last_seq"], gaps[0]["open"]) == (3, 4, True)
    assert len(client.get("/api/events", params={"limit": 2}).json()) == 2


def test_commands(client: TestClient, devices: list[FakeDevice]) -> None:
    created = client.post("/api/devices/kiosk-api-0001/commands", json={"name": "ping", "args": {"x": 1}})
    assert created.status_code == 201
    command_id = created.json()["id"]
    state = wait_for(
        lambda: (s := client.get(f"/api/commands/{command_id}").json())["status"] != "pending" and s,
        what="command answered",
    )
    assert state["status"] == "ok" and state["result"] == {"pong": True, "args": {"x": 1}}
    assert state["device"] == "kiosk-api-0001" and state["answered_at"]
    assert client.get("/api/commands/nope").status_code == 404
    unknown = client.post("/api/devices/nobody-0001/commands", json={"name": "ping"})
    assert unknown.status_code == 404 and "not known" in unknown.json()["detail"]
    assert (
        client.post("/api/devices/kiosk-api-0001/commands", json={"name": "ping", "ttl_s": 1e9}).status_code
        == 422
    )
    assert (
        client.post("/api/devices/kiosk-api-0001/commands", json={"name": "ping", "oops": 1}).status_code
        == 422
    )
    assert client.post("/api/devices/kiosk-api-0001/commands", json={"args": {}}).status_code == 422


def test_stats_metrics_health(client: TestClient, fleet: FleetService, devices: list[FakeDevice]) -> None:
    kiosk = devices[0]
    kiosk.publish(kiosk.topics.telemetry(kiosk.id), b"not json")
    kiosk.publish(kiosk.topics.event(kiosk.id, "a.b"), b"{" + b" " * (257 * 1024) + b"}")
    wait_for(lambda: client.get("/api/stats").json()["oversized_total"] == 1, what="oversized counted")
    stats = client.get("/api/stats").json()
    assert (stats["devices"], stats["devices_online"], stats["events"], stats["gaps_open"]) == (2, 1, 4, 1)
    assert stats["malformed_total"] == 1 and stats["db"] in ("sqlite", "postgresql")
    ingest = stats["ingest"]
    assert ingest["committed_total"] >= 8 and ingest["rate_per_s"] >= 0 and ingest["worker_id"]
    assert {"reason": "not_json", "family": "telemetry", "count": 1} in ingest["rejected"]
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'fleet_ingest_received_total{family="events"}' in text
    assert 'fleet_devices{online="true"} 1.0' in text
    assert 'fleet_ingest_rejected_total{family="events",reason="oversized"} 1.0' in text
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json() == {
        "ok": True,
        "db": True,
        "broker": True,
        "writer": True,
    }


def test_health_reports_a_lost_broker(client: TestClient, fleet: FleetService) -> None:
    fleet.link.client.disconnect()
    wait_for(lambda: client.get("/healthz").status_code == 503, what="unhealthy")
    assert client.get("/healthz").json()["broker"] is False


def test_dashboard(client: TestClient, devices: list[FakeDevice]) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    html = page.text
    assert 'data-device="kiosk-api-0001"' in html and 'data-device="cam-api-0002"' in html
    assert 'badge online">online' in html and 'badge offline">offline' in html
    assert "55.5 °C" in html and "33%" in html
    assert "traffic.incident" in html  # recent events panel
    assert 'data-stream="/ui/stream?' in html and "/static/fleet.js" in html
    assert "http://" not in html.replace("http://testserver", "") and "https://" not in html  # no CDN
    fragment = client.get("/ui/devices").text
    assert fragment.count('class="device-row') == 2 and "<html" not in fragment
    assert "traffic.count" in client.get("/ui/events").text
    assert "open gaps" in client.get("/ui/summary").text
    device_page = client.get("/devices/cam-api-0002").text
    assert "Sequence gaps" in device_page and "Send ping" in device_page and "traffic.incident" in device_page
    assert client.get("/devices/nobody-0001").status_code == 404
    assert "setInterval" in client.get("/static/fleet.js").text
    assert client.get("/static/fleet.css").status_code == 200


def test_dashboard_ping_form(client: TestClient, devices: list[FakeDevice]) -> None:
    sent = client.post("/devices/kiosk-api-0001/ping", follow_redirects=False)
    assert sent.status_code == 303
    location = sent.headers["location"]
    assert location.startswith("/devices/kiosk-api-0001?cmd=")
    fragment_url = location.replace("/devices/", "/ui/devices/")
    wait_for(lambda: "cmd-ok" in client.get(fragment_url).text, what="ping answered on the page")
