"""The operations API and pages against a live fleet, on both databases: paged device listing with
headers, overview, alerts with an audited acknowledgement, command history and command-result CLI,
telemetry history, the offline API docs page, error pages for people, the Prometheus rule file."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from fleet_helpers import FakeDevice, MakeDevice, admin_headers, wait_for
from typer.testing import CliRunner

from fleet.alerts import AlertEngine
from fleet.api import create_app
from fleet.auth import trail
from fleet.metrics import render_metrics
from fleet.service import FleetService
from fleet.synthetic import fill

HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "fleet-rules.yml"


@pytest.fixture
def client(fleet: FleetService) -> Iterator[TestClient]:
    with TestClient(create_app(fleet), headers=admin_headers(fleet)) as c:
        yield c


@pytest.fixture
def camera(fleet: FleetService, make_device: MakeDevice) -> FakeDevice:
    device = make_device("cam-hn-gbt-0042", role="camera").connect()
    device.telemetry(temp_c=88.0, cpu_pct=12.0)
    wait_for(lambda: fleet.store.telemetry_history(device.id), what="telemetry history")
    return device


def test_device_listing_pages_with_headers(client: TestClient, fleet: FleetService) -> None:
    fill(fleet.store, 250)
    first = client.get("/api/devices", params={"limit": 100, "sort": "-site"})
    assert first.status_code == 200 and len(first.json()) == 100
    assert first.headers["x-total-count"] == "250" and first.headers["x-next-offset"] == "100"
    assert 'rel="next"' in first.headers["link"] and "offset=100" in first.headers["link"]
    assert [d["site"] for d in first.json()] == sorted((d["site"] for d in first.json()), reverse=True)
    last = client.get("/api/devices", params={"limit": 100, "offset": 200})
    assert len(last.json()) == 50 and "link" not in last.headers
    default = client.get("/api/devices")
    assert len(default.json()) == 100  # a default page size, not 20,000 devices at once
    assert client.get("/api/devices", params={"limit": 5000}).status_code == 422
    assert client.get("/api/devices", params={"sort": "secret"}).status_code == 422
    assert client.get("/api/devices", params={"status": "sleepy"}).status_code == 422
    nul = client.get("/api/devices", params={"q": "a\x00b", "site": "hn"})
    assert nul.status_code == 422  # PostgreSQL text cannot hold NUL: refused like any bad parameter
    errors = [(e["loc"], e["msg"]) for e in nul.json()["detail"]]
    assert errors == [(["query", "q"], "cannot contain NUL characters")]
    silent = client.get("/api/devices", params={"status": "silent", "limit": 1000}).json()
    assert silent and all(d["state"] == "silent" and not d["online"] for d in silent)
    found = client.get("/api/devices", params={"q": "HN-GBT-0001"}).json()
    assert [d["id"] for d in found] == ["cam-hn-gbt-00012", "cam-hn-gbt-00112"] or all(
        "hn-gbt-0001" in d["id"] for d in found
    )
    overview = client.get("/api/overview").json()
    assert sum(s["total"] for s in overview["sites"]) == 250
    assert {"1.3.2", "1.4.0", "1.4.1"} >= {v["version"] for v in overview["versions"]}


def test_fleet_client_pages_through_everything(fleet: FleetService, client: TestClient) -> None:
    """``cityedge fleet devices`` (FleetClient.devices) still lists every device."""
    from fleet.client import FleetClient

    fill(fleet.store, 230)
    api = FleetClient("http://testserver", token=None)
    api._http = client  # the TestClient speaks httpx
    assert len(api.devices(page_size=100)) == 230
    assert {d["site"] for d in api.devices(page_size=100, site="hn-gbt")} == {"hn-gbt"}


def test_alert_acknowledged_with_a_note_on_the_trail(
    client: TestClient, fleet: FleetService, camera: FakeDevice
) -> None:
    AlertEngine(fleet.store).evaluate()
    alerts = client.get("/api/alerts").json()
    (overheat,) = [a for a in alerts if a["device"] == camera.id]
    assert overheat["kind"] == "overheat" and overheat["summary"] == "88.0 °C"
    assert client.get("/api/overview").json()["alerts"] == {"overheat": 1}
    assert client.get("/api/devices", params={"health": "overheat"}).json()[0]["id"] == camera.id
    before = trail.read_after(fleet.store.reader, 0)[-1]["seq"]
    assert client.post(f"/api/alerts/{overheat['id']}/ack", json={"note": ""}).status_code == 422
    acked = client.post(f"/api/alerts/{overheat['id']}/ack", json={"note": "fan replaced by the ward team"})
    assert acked.status_code == 200 and acked.json()["ack_note"] == "fan replaced by the ward team"
    assert acked.json()["acked_by"].startswith("test-") and acked.json()["resolved_at"] is None  # still hot
    entries = trail.read_after(fleet.store.reader, before)
    assert [e["action"] for e in entries if e["outcome"] == "allowed"][
        -1
    ] == "POST /api/alerts/{alert_id}/ack"
    assert client.post("/api/alerts/999999/ack", json={"note": "x"}).status_code == 404
    page = client.get("/alerts", headers=HTML).text
    assert "fan replaced by the ward team" in page and camera.id in page
    assert "fleet_alerts_open" in render_metrics(fleet)[0].decode()


def test_device_page_history(client: TestClient, fleet: FleetService, camera: FakeDevice) -> None:
    camera.event("cabinet.fan_fault", rpm=0)
    wait_for(lambda: fleet.store.events(camera.id), what="event")
    sent = client.post(f"/api/devices/{camera.id}/commands", json={"name": "ping"})
    command_id = sent.json()["id"]
    history = client.get(f"/api/devices/{camera.id}/commands").json()
    assert [c["id"] for c in history] == [command_id]
    points = client.get(f"/api/devices/{camera.id}/telemetry").json()
    assert points and points[-1]["temp_c"] == 88.0
    page = client.get(f"/devices/{camera.id}", headers=HTML).text
    assert "<svg" in page and 'data-metric="temp_c"' in page  # 24 h charts, inline
    assert command_id in page and "cabinet.fan_fault" in page and "&#34;rpm&#34;: 0" in page
    assert "Desired" in page and "Reported" in page
    assert "http://" not in page.replace("http://testserver", "") and "https://" not in page


def test_command_result_cli(
    client: TestClient, fleet: FleetService, camera: FakeDevice, monkeypatch: Any
) -> None:
    import fleet.cli as cli_module
    from cityedge.cli import build_app
    from fleet.client import FleetClient

    command_id = client.post(f"/api/devices/{camera.id}/commands", json={"name": "ping"}).json()["id"]

    def api_client(api: str, token_file: Any) -> FleetClient:
        api_ = FleetClient("http://testserver", token=None)
        api_._http = TestClient(client.app, headers=dict(client.headers))  # closed after each command
        return api_

    monkeypatch.setattr(cli_module, "api_client", api_client)
    wait_for(lambda: fleet.store.command(command_id)["status"] != "pending", what="answer")  # type: ignore[index]
    result = CliRunner().invoke(build_app(), ["fleet", "command-result", command_id, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["result"]["pong"] is True
    result = CliRunner().invoke(build_app(), ["fleet", "command-result", command_id])
    assert (
        result.output.startswith(f"{command_id} {camera.id} ping ok answered ")
        and '"pong": true' in result.output
    )
    result = CliRunner().invoke(build_app(), ["fleet", "command-result", "01NOSUCH"])
    assert result.exit_code != 0 and "no command with id" in result.output


def test_api_docs_page_works_offline(client: TestClient) -> None:
    page = client.get("/api/docs", headers=HTML)
    assert page.status_code == 200
    html = page.text
    for route in ("GET</b> /api/devices", "POST</b> /api/alerts/{alert_id}/ack", "GET</b> /api/overview"):
        assert route in html, route
    assert "devices:read" in html and "X-Total-Count" in html and "DeviceOut" in html
    assert not re.search(r"<(script|link)[^>]+(https?:)?//", html)  # nothing from a CDN


def test_errors_are_pages_for_people_and_json_for_programs(client: TestClient) -> None:
    page = client.get("/devices/nobody-0001", headers=HTML)
    assert page.status_code == 404 and "text/html" in page.headers["content-type"]
    assert (
        "Device &#39;nobody-0001&#39; is not known to the fleet." in page.text
        and '{"detail"' not in page.text
    )
    api = client.get("/api/devices/nobody-0001")
    assert api.status_code == 404 and api.json() == {
        "detail": "device 'nobody-0001' is not known to the fleet"
    }
    bad = client.post("/api/devices/nobody-0001/commands", json={"name": "", "ttl_s": -1}, headers=HTML)
    assert bad.status_code == 422 and "<li>name: String should have at least 1 character</li>" in bad.text
    assert "ttl_s: Input should be greater than 0" in bad.text
    bad_json = client.post("/api/devices/nobody-0001/commands", json={"name": ""})
    assert bad_json.status_code == 422 and bad_json.json()["detail"][0]["loc"] == ["body", "name"]
    refused = TestClient(client.app).get("/api/devices", headers=HTML)
    assert refused.status_code == 401 and "not signed in" in refused.text
    assert refused.headers["www-authenticate"] == "Bearer"
    assert TestClient(client.app).get("/api/devices").json()["detail"]


def test_prometheus_rules_are_alertmanager_ready(fleet: FleetService, camera: FakeDevice) -> None:
    camera.publish(f"city/v1/devices/{camera.id}/telemetry", b"not json")  # so every family has samples
    wait_for(lambda: fleet.stats.snapshot()["rejected"], what="a rejected message")
    doc = yaml.safe_load(RULES.read_text())
    text = render_metrics(fleet)[0].decode()
    exposed = set(re.findall(r"^(fleet_[a-z_]+)", text, re.M))
    names: set[str] = set()
    for group in doc["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert re.fullmatch(r"[A-Z][A-Za-z]+", rule["alert"]) and rule["alert"] not in names
            names.add(rule["alert"])
            assert rule["labels"]["severity"] in ("critical", "warning")
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            if "for" in rule:
                assert re.fullmatch(r"\d+[smh]", rule["for"])
            assert rule["expr"].count("(") == rule["expr"].count(")")
            for metric in re.findall(r"\b(fleet_[a-z_]+)", rule["expr"]):
                assert metric in exposed, f"{rule['alert']}: {metric} is not a fleet metric"
    kinds = set(re.findall(r'fleet_alerts_open\{kind="([a-z_]+)"\}', RULES.read_text()))
    from fleet.alerts import KINDS

    assert kinds == set(KINDS)  # every alert the fleet computes can page someone
