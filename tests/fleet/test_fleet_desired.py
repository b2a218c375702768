"""Desired state with the ``release`` member: set, signed, stored, published retained, re-signed;
through the service, the REST API, the CLI and the dashboard, against a real mosquitto and the
device's own verifier (``agent.verify``) trusting a real fleet key ring."""

from __future__ import annotations

import json
import os
import queue
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
import typer
from fleet_helpers import FakeDevice, FleetFactory, MakeDevice, bearer, make_token, serve_http, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import create_engine
from typer.testing import CliRunner

from agent.truststore import TrustStore
from agent.verify import Replayed, SignedCommandVerifier, WrongDevice, build_verifier
from fleet.api import create_app
from fleet.broker import MosquittoBroker
from fleet.cli import register
from fleet.db import create_schema
from fleet.desired import (
    DesiredService,
    DeviceNotFound,
    DowngradeRefused,
    InvalidDesired,
    needs_resign,
    next_version,
    resign_deadline,
)
from fleet.keys_cli import init_keys
from fleet.otastate import ota_label, ota_states, ota_tone, record_ota
from fleet.service import FleetService
from fleet.signer import Ed25519Signer, KeyRing, load_keyring
from protocol.models import ShadowDesired, decode
from protocol.release import parse_desired_release
from protocol.timefmt import format_ts, parse_ts, utc_now
from protocol.topics import Topics

KIOSK = "kiosk-ota-0001"
CAMERA = "cam-ota-0002"
TOPICS = Topics()


# --- helpers -------------------------------------------------------------------------------------


@dataclass
class City:
    """A fleet key ring on disk (as `cityedge fleet keys init` makes it) and its signer."""

    ring: KeyRing

    def signer(self, **kwargs: Any) -> Ed25519Signer:
        return self.ring.signer(**kwargs)

    def device_verifier(self, data_dir: Path, device_id: str) -> SignedCommandVerifier:
        """The verifier of a device enrolled with this fleet's trust (DATA_DIR/trust)."""
        TrustStore.install(data_dir / "trust", self.ring.root, self.ring.key_list, utc_now())
        return build_verifier(data_dir, device_id=device_id, fsync=False)


@pytest.fixture
def city(tmp_path: Path) -> City:
    init_keys(tmp_path / "fleet", tmp_path / "offline" / "root.pem")
    return City(load_keyring(tmp_path / "fleet"))


def fetch_retained(broker: MosquittoBroker, topic: str, timeout: float = 2.0) -> mqtt.MQTTMessage | None:
    """What a device connecting now gets on ``topic``: the retained message, or None."""
    got: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:10]}", protocol=mqtt.MQTTv5
    )
    client.on_message = lambda _c, _u, msg: got.put(msg) if msg.retain else None  # not live ones
    client.connect(broker.config.host, broker.config.port)
    client.loop_start()
    try:
        client.subscribe(topic, qos=1)
        return got.get(timeout=timeout)
    except queue.Empty:
        return None
    finally:
        client.disconnect()
        client.loop_stop()


def retained_version(broker: MosquittoBroker, device: str, version: int) -> mqtt.MQTTMessage:
    """Wait until the retained desired state of ``device`` has ``version``; return that message."""

    def probe() -> mqtt.MQTTMessage | None:
        msg = fetch_retained(broker, TOPICS.shadow_desired(device), timeout=1.0)
        return msg if msg is not None and json.loads(msg.payload)["version"] == version else None

    msg: mqtt.MQTTMessage = wait_for(probe, what=f"retained desired version {version} of {device}")
    return msg


def known(fleet: FleetService, device: FakeDevice) -> FakeDevice:
    wait_for(lambda: fleet.store.device(device.id), what=f"{device.id} registered")
    return device


def ota_event(device: FakeDevice, kind: str, seq: int, **data: Any) -> dict[str, Any]:
    envelope = device.envelope(kind, seq=seq)
    envelope["data"] = data
    return device.send(envelope)


def cli(*args: str) -> Any:
    app = typer.Typer()
    register(app)
    return CliRunner().invoke(app, list(args))


SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


# --- service, on both databases -------------------------------------------------------------------


def test_set_release_publishes_a_retained_signed_state_the_device_accepts(
    make_fleet: FleetFactory, make_device: MakeDevice, broker: MosquittoBroker, city: City, tmp_path: Path
) -> None:
    fleet = make_fleet(signer=city.signer())
    device = known(fleet, make_device(KIOSK, role="kiosk", version="1.0.0").connect())

    signed = fleet.desired.set_release(device.id, "1.1.0")

    msg = retained_version(broker, device.id, 1)
    assert msg.retain and msg.qos == 1 and msg.topic == f"city/v1/devices/{KIOSK}/shadow/desired"
    on_wire = json.loads(msg.payload)
    assert on_wire == signed == fleet.desired.get(device.id)
    assert on_wire["release"] == {
        "version": "1.1.0",
        "target": "releases/1.1.0/manifest.json",
        "allow_downgrade": False,
        "force": False,
    }
    assert on_wire["device"] == KIOSK and on_wire["config"] == {}
    assert on_wire["sig"]["kid"] == city.ring.active_kid and on_wire["trust"] == city.ring.key_list
    decode(ShadowDesired, bytes(msg.payload))  # still a contract ShadowDesired
    assert parse_desired_release(on_wire["release"]) is not None

    verified = city.device_verifier(tmp_path / "kiosk", KIOSK).verify_payload(bytes(msg.payload))
    assert (verified.kind, verified.version, verified.kid) == ("desired", 1, city.ring.active_kid)
    assert verified.expires_at - verified.issued_at == timedelta(days=30)
    with pytest.raises(WrongDevice):  # signed for this kiosk only
        city.device_verifier(tmp_path / "other", "kiosk-ota-0099").verify_payload(bytes(msg.payload))


def test_versions_grow_across_changes_and_a_fleet_restart_and_config_is_kept(
    make_fleet: FleetFactory, make_device: MakeDevice, broker: MosquittoBroker, city: City, tmp_path: Path
) -> None:
    first = make_fleet(signer=city.signer())
    device = known(first, make_device(KIOSK, role="kiosk", version="1.0.0").connect())
    verifier = city.device_verifier(tmp_path / "kiosk", KIOSK)
    config = {"kiosk": {"idle_timeout_s": 90}}

    assert first.desired.set_config(device.id, config)["version"] == 1
    with_release = first.desired.set_release(device.id, "1.3.0", force=True)
    assert with_release["version"] == 2 and with_release["config"] == config
    assert with_release["release"]["force"] is True
    cleared = first.desired.clear_release(device.id)
    assert cleared["version"] == 3 and cleared["release"] is None and cleared["config"] == config
    assert first.desired.set_config(device.id, {"kiosk": {}})["release"] is None  # v4, release kept (none)
    again = first.desired.set_release(device.id, "1.3.1")
    assert again["version"] == 5 and again["config"] == {"kiosk": {}}
    assert first.desired.set_config(device.id, config)["release"] == again["release"]  # v6
    first.stop()

    second = make_fleet(signer=city.signer())
    after = second.desired.set_release(device.id, "1.4.0")
    assert after["version"] == 7 and after["config"] == config
    payload = bytes(retained_version(broker, device.id, 7).payload)
    assert verifier.verify_payload(payload).version == 7
    with pytest.raises(Replayed):  # the device refuses an older state
        verifier.verify_desired(cleared)

    # The device reports having applied a higher version (e.g. the fleet database was restored
    # from a backup): the next state goes above it.
    reported = {"ts": format_ts(utc_now()), "config_version": 40}
    device.publish(TOPICS.shadow_reported(device.id), json.dumps(reported), retain=True)
    wait_for(
        lambda: ((second.store.device(device.id) or {}).get("shadow_reported") or {}).get("config_version"),
        what="reported shadow stored",
    )
    assert second.desired.set_release(device.id, "1.4.1")["version"] == 41


def test_refusals_say_what_is_wrong(make_fleet: FleetFactory, make_device: MakeDevice, city: City) -> None:
    fleet = make_fleet(signer=city.signer())
    device = known(fleet, make_device(CAMERA, version="1.2.3").connect())
    wait_for(lambda: (fleet.store.device(CAMERA) or {}).get("version") == "1.2.3", what="running version")

    with pytest.raises(DowngradeRefused, match=r"runs 1\.2\.3.*1\.0\.0 is older.*--allow-downgrade"):
        fleet.desired.set_release(device.id, "1.0.0")
    assert fleet.desired.get(device.id) is None  # nothing stored, nothing published
    down = fleet.desired.set_release(device.id, "1.0.0", allow_downgrade=True)
    assert down["release"]["allow_downgrade"] is True and down["version"] == 1
    with pytest.raises(InvalidDesired, match="not a release version"):
        fleet.desired.set_release(device.id, "latest")
    with pytest.raises(InvalidDesired, match="target"):
        fleet.desired.set_release(device.id, "1.3.0", target="../../etc/passwd")
    custom = fleet.desired.set_release(device.id, "1.3.0", target="releases/1.3.0-cam/manifest.json")
    assert custom["release"]["target"] == "releases/1.3.0-cam/manifest.json"
    with pytest.raises(DeviceNotFound, match="never connected"):
        fleet.desired.set_release("nobody-0001", "1.3.0")
    with pytest.raises(DeviceNotFound):
        fleet.desired.get("nobody-0001")


def test_resign_bumps_the_version_and_republishes(
    make_fleet: FleetFactory, make_device: MakeDevice, broker: MosquittoBroker, city: City, tmp_path: Path
) -> None:
    fleet = make_fleet(signer=city.signer())
    device = known(fleet, make_device(KIOSK, role="kiosk", version="1.0.0").connect())
    verifier = city.device_verifier(tmp_path / "kiosk", KIOSK)
    first = fleet.desired.set_release(device.id, "1.1.0")
    assert verifier.verify_desired(first).version == 1

    assert fleet.desired.resign_due(utc_now()) == []  # 30 days left: nothing due
    assert fleet.desired.get(device.id) == first
    later = parse_ts(first["expires_at"]) - timedelta(days=6)  # inside the 7-day margin
    assert fleet.desired.resign_due(later) == [device.id]

    resigned = fleet.desired.get(device.id)
    assert resigned is not None and resigned["version"] == 2
    assert resigned["nonce"] != first["nonce"] and resigned["sig"] != first["sig"]
    assert {k: resigned[k] for k in ("config", "release", "device")} == {
        k: first[k] for k in ("config", "release", "device")
    }
    payload = bytes(retained_version(broker, device.id, 2).payload)
    assert verifier.verify_payload(payload).version == 2  # a newer version: the device takes it
    assert fleet.desired.resign_due(utc_now()) == []  # the fresh signature is not due
    margin = timedelta(days=7)
    assert resign_deadline(resigned, margin) >= resign_deadline(first, margin)  # type: ignore[operator]


def test_maintenance_loop_resigns_short_lived_states_before_they_expire(
    make_fleet: FleetFactory, make_device: MakeDevice, broker: MosquittoBroker, city: City, tmp_path: Path
) -> None:
    fleet = make_fleet(signer=city.signer(desired_ttl=timedelta(seconds=3)))
    device = known(fleet, make_device(KIOSK, role="kiosk", version="1.0.0").connect())
    first = fleet.desired.set_release(device.id, "1.1.0")
    # re-signed one third of its lifetime before expiry, by the fleet's own maintenance thread
    payload = bytes(retained_version(broker, device.id, first["version"] + 1).payload)
    again = json.loads(payload)
    assert parse_ts(again["expires_at"]) > parse_ts(first["expires_at"])
    assert again["release"] == first["release"]
    verifier = city.device_verifier(tmp_path / "kiosk", KIOSK)
    assert verifier.verify_payload(payload).version == first["version"] + 1


# --- API, CLI, dashboard (the clients only see HTTP: one database is enough) -----------------------


@pytest.fixture
def served(
    make_fleet: FleetFactory, city: City, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[FleetService, str]]:
    """The served API; an admin token in CITYEDGE_TOKEN (the CLI reads it, ``bearer_env`` too)."""
    fleet = make_fleet(signer=city.signer())
    monkeypatch.setenv("CITYEDGE_TOKEN", make_token(fleet, "admin"))
    with serve_http(create_app(fleet)) as url:
        yield fleet, url


def bearer_env() -> dict[str, str]:
    return bearer(os.environ["CITYEDGE_TOKEN"])


@SQLITE_ONLY
def test_rest_api(
    served: tuple[FleetService, str], make_device: MakeDevice, city: City, tmp_path: Path
) -> None:
    fleet, url = served
    known(fleet, make_device(KIOSK, role="kiosk", version="1.0.0").connect())
    wait_for(lambda: (fleet.store.device(KIOSK) or {}).get("version") == "1.0.0", what="running version")
    paths = httpx.get(f"{url}/openapi.json", headers=bearer_env()).json()["paths"]
    assert {"put", "delete"} <= set(paths["/api/devices/{device_id}/release"])
    assert "get" in paths["/api/devices/{device_id}/desired"]

    view = httpx.get(f"{url}/api/devices/{KIOSK}/desired", headers=bearer_env()).json()
    assert view == {
        "device": KIOSK,
        "desired": None,
        "running_version": "1.0.0",
        "applied_version": None,
        "ota": None,
    }
    put = httpx.put(
        f"{url}/api/devices/{KIOSK}/release", headers=bearer_env(), json={"version": "1.1.0", "force": True}
    )
    assert put.status_code == 200, put.text
    signed = put.json()
    assert signed == fleet.desired.get(KIOSK)  # the exact signed document, nothing dropped
    verifier = city.device_verifier(tmp_path / "kiosk", KIOSK)
    assert verifier.verify_desired(signed).version == 1
    assert signed["release"]["force"] is True

    view = httpx.get(f"{url}/api/devices/{KIOSK}/desired", headers=bearer_env()).json()
    assert view["desired"] == signed and view["running_version"] == "1.0.0"

    cleared = httpx.delete(f"{url}/api/devices/{KIOSK}/release", headers=bearer_env()).json()
    assert cleared["release"] is None and cleared["version"] == 2
    assert verifier.verify_desired(cleared).version == 2

    def status(method: str, path: str, **kwargs: Any) -> tuple[int, str]:
        response = httpx.request(method, f"{url}{path}", headers=bearer_env(), **kwargs)
        return response.status_code, str(response.json().get("detail"))

    assert status("PUT", "/api/devices/nobody-0001/release", json={"version": "1.1.0"})[0] == 404
    assert status("DELETE", "/api/devices/nobody-0001/release")[0] == 404
    assert status("GET", "/api/devices/nobody-0001/desired")[0] == 404
    code, detail = status("PUT", f"/api/devices/{KIOSK}/release", json={"version": "one"})
    assert code == 422 and "release version" in detail
    assert status("PUT", f"/api/devices/{KIOSK}/release", json={"version": "1.1.0", "x": 1})[0] == 422
    code, detail = status("PUT", f"/api/devices/{KIOSK}/release", json={"version": "0.9.0"})
    assert code == 409 and "allow" in detail
    down = {"version": "0.9.0", "allow_downgrade": True}
    assert status("PUT", f"/api/devices/{KIOSK}/release", json=down)[0] == 200


@SQLITE_ONLY
def test_cli(served: tuple[FleetService, str], make_device: MakeDevice) -> None:
    fleet, url = served
    for device_id in (KIOSK, CAMERA):
        known(fleet, make_device(device_id, version="1.0.0").connect())

    result = cli("fleet", "set-release", KIOSK, CAMERA, "--version", "1.1.0", "--json", "--api", url)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [item["device"] for item in out] == [KIOSK, CAMERA]
    assert all(item["desired"]["release"]["version"] == "1.1.0" for item in out)
    assert all(item["desired"] == fleet.desired.get(item["device"]) for item in out)

    text = cli("fleet", "set-release", KIOSK, "--version", "1.0.0", "--allow-downgrade", "--api", url)
    assert text.exit_code == 0 and f"{KIOSK}: desired version 2, release 1.0.0" in text.output
    assert "downgrade allowed" in text.output

    partly = cli("fleet", "set-release", CAMERA, "nobody-0001", "--version", "1.2.0", "--api", url)
    assert partly.exit_code == 1
    assert "nobody-0001: not changed" in partly.output and "404" in partly.output
    assert (fleet.desired.get(CAMERA) or {})["release"]["version"] == "1.2.0"  # the others are set

    view = cli("fleet", "desired", KIOSK, "--json", "--api", url)
    assert view.exit_code == 0, view.output
    data = json.loads(view.output)
    assert data["desired"]["version"] == 2 and data["running_version"] == "1.0.0"
    shown = cli("fleet", "desired", CAMERA, "--api", url)
    assert shown.exit_code == 0
    assert "running version  1.0.0" in shown.output and "desired release  1.2.0" in shown.output
    cleared = cli("fleet", "clear-release", CAMERA, "--api", url)
    assert cleared.exit_code == 0 and "none (stay" in cleared.output
    missing = cli("fleet", "desired", "nobody-0001", "--api", url)
    assert missing.exit_code == 1 and "not known" in missing.output


@SQLITE_ONLY
def test_dashboard_shows_ota_progress_and_desired_beside_running(
    served: tuple[FleetService, str], make_device: MakeDevice
) -> None:
    fleet, url = served
    kiosk = known(fleet, make_device(KIOSK, role="kiosk", version="1.0.0").connect())
    camera = known(fleet, make_device(CAMERA, version="1.0.0").connect())
    fleet.desired.set_release(KIOSK, "1.1.0")

    ota_event(kiosk, "ota.downloading", 0, **{"from": "1.0.0", "to": "1.1.0"}, bytes_done=1, bytes_total=4)
    ota_event(kiosk, "ota.committed", 2, **{"from": "1.0.0", "to": "1.1.0"})
    ota_event(kiosk, "ota.downloading", 1, **{"from": "1.0.0", "to": "1.1.0"}, bytes_done=3, bytes_total=4)
    reason = "health check did not pass within 120 s"
    ota_event(camera, "ota.rolled_back", 0, **{"from": "1.0.0", "to": "1.1.0"}, reason=reason, code="health")
    wait_for(lambda: len(fleet.store.events(KIOSK)) == 3 and fleet.store.events(CAMERA), what="events")

    index = httpx.get(f"{url}/", headers=bearer_env()).text
    assert "committed 1.1.0" in index  # the late seq 1 does not hide the newer state
    assert f"rolled back: {reason}" in index
    assert "badge ota-ok" in index and "badge ota-bad" in index
    fragment = httpx.get(f"{url}/ui/devices", headers=bearer_env()).text
    assert "committed 1.1.0" in fragment and "<th>OTA</th>" in fragment

    page = httpx.get(f"{url}/devices/{KIOSK}", headers=bearer_env()).text
    assert '<td class="running">1.0.0</td>' in page
    assert '<td class="desired">1.1.0' in page and "releases/1.1.0/manifest.json" in page
    assert "committed 1.1.0" in page
    camera_page = httpx.get(f"{url}/ui/devices/{CAMERA}", headers=bearer_env()).text
    assert "not set" in camera_page and f"rolled back: {reason}" in camera_page

    view = httpx.get(f"{url}/api/devices/{KIOSK}/desired", headers=bearer_env()).json()
    assert view["ota"]["kind"] == "ota.committed" and view["ota"]["label"] == "committed 1.1.0"
    assert view["ota"]["seq"] == 2


# --- pure parts and the OTA fold -----------------------------------------------------------------


def test_next_version_and_resign_deadline() -> None:
    assert next_version(None, None) == 1
    assert next_version({"version": 4}, None) == 5
    assert next_version({"version": 4}, {"config_version": 9}) == 10
    assert next_version({"version": 4}, {"config_version": "x"}) == 5
    now = utc_now()
    doc = {"issued_at": format_ts(now), "expires_at": format_ts(now + timedelta(days=30))}
    assert resign_deadline(doc, timedelta(days=7)) == parse_ts(doc["expires_at"]) - timedelta(days=7)
    short = {"issued_at": format_ts(now), "expires_at": format_ts(now + timedelta(seconds=30))}
    assert resign_deadline(short, timedelta(days=7)) == parse_ts(short["issued_at"]) + timedelta(seconds=20)
    assert resign_deadline({"version": 1}, timedelta(days=7)) is None  # unsigned: never due
    signed = {**doc, "sig": {"kid": "fleet-a"}}
    assert not needs_resign(signed, now, timedelta(days=7), "fleet-a")
    assert needs_resign(signed, now, timedelta(days=7), "fleet-b")  # the fleet rotated its key
    assert needs_resign(signed, now + timedelta(days=24), timedelta(days=7), "fleet-a")
    assert not needs_resign({"version": 1}, now, timedelta(days=7), None)


def test_ota_labels() -> None:
    def state(kind: str, **data: Any) -> dict[str, Any]:
        return {"kind": kind, "data": data}

    assert ota_label(state("ota.committed", to="1.1.0")) == "committed 1.1.0"
    assert ota_label(state("ota.rolled_back", to="1.1.0", reason="no network", code="network")) == (
        "rolled back: no network"
    )
    assert ota_label(state("ota.failed", to="1.1.0", code="disk_full")) == "failed: disk_full"
    assert ota_label(state("ota.failed", to="1.1.0")) == "failed 1.1.0"
    assert (
        ota_label(state("ota.downloading", to="2.0", bytes_done=1, bytes_total=3)) == "downloading 2.0 (33%)"
    )
    assert ota_label(state("ota.downloading", to="2.0", bytes_done=1, bytes_total=0)) == "downloading 2.0"
    assert ota_label(None) == "" and ota_tone(None) == ""
    assert [ota_tone(state(k)) for k in ("ota.healthy", "ota.failed", "ota.verifying")] == [
        "ok",
        "bad",
        "busy",
    ]


KINDS = st.sampled_from(["ota.downloading", "ota.committed", "ota.failed", "traffic.count", "kiosk.rating"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    events=st.lists(st.tuples(st.sampled_from(["dev-a-01", "dev-b-02"]), KINDS), min_size=1, max_size=25).map(
        lambda items: [(device, seq, kind) for seq, (device, kind) in enumerate(items)]
    ),
    order=st.randoms(use_true_random=False),
    cut=st.integers(min_value=1, max_value=8),
)
def test_ota_fold_keeps_the_highest_seq_whatever_the_batch_order(
    tmp_path: Path, events: list[tuple[str, int, str]], order: Any, cut: int
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / f'ota-{uuid.uuid4().hex}.db'}")
    create_schema(engine)
    rows = [
        {"device": d, "seq": seq, "kind": kind, "ts": utc_now(), "data": {"to": f"1.{seq}", "junk": [1]}}
        for d, seq, kind in events
    ]
    order.shuffle(rows)
    for start in range(0, len(rows), cut):  # batches committed in any order
        with engine.begin() as conn:
            record_ota(conn, rows[start : start + cut])
    states = ota_states(engine)
    expected: dict[str, tuple[int, str]] = {}
    for d, seq, kind in events:
        if kind.startswith("ota.") and seq >= expected.get(d, (-1, ""))[0]:
            expected[d] = (seq, kind)
    assert {d: (s["seq"], s["kind"]) for d, s in states.items()} == expected
    assert all(s["data"] == {"to": f"1.{s['seq']}"} for s in states.values())  # only the kept fields
    engine.dispose()


def test_service_without_a_device_row_is_a_clear_error(tmp_path: Path) -> None:
    from fleet.commands import UnsignedSigner
    from fleet.store import Store

    store = Store(f"sqlite:///{tmp_path / 'fleet.db'}")
    store.create_schema()
    sent: list[tuple[str, bytes, bool]] = []
    service = DesiredService(store, lambda t, p, r: sent.append((t, p, r)), UnsignedSigner(), TOPICS)
    with pytest.raises(DeviceNotFound, match="kiosk-ota-0001"):
        service.set_release(KIOSK, "1.0.0")
    assert sent == []
    assert service.tick() == []  # nothing stored: nothing to re-sign
    store.dispose()
