"""``fleet broker-config`` output, run as-is by a real mosquitto, and ``fleet revoke`` end to end."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from typer.testing import CliRunner

from fleet.broker import find_mosquitto, free_port
from fleet.brokerconf import acl_text
from fleet.pki import CityPKI
from fleet.pki_cli import build_app
from hw.keystore import FileKeyStore

pytestmark = pytest.mark.timeout(60)


def test_acl_text_shape() -> None:
    text = acl_text(services=["fleet-ingest"], revoked=["kiosk-stolen-1"])
    lines = text.splitlines()
    assert "%c" not in text  # client ids are chosen by clients: never key an ACL on them
    assert lines.index("user fleet-ingest") < lines.index("topic deny city/v1/devices/fleet-ingest/#")
    assert lines[lines.index("user kiosk-stolen-1") : lines.index("user kiosk-stolen-1") + 2] == [
        "user kiosk-stolen-1",
        "topic deny #",
    ]
    patterns = [line for line in lines if line.startswith("pattern")]
    assert patterns == [
        "pattern write city/v1/devices/%u/status",
        "pattern write city/v1/devices/%u/telemetry",
        "pattern write city/v1/devices/%u/events/#",
        "pattern write city/v1/devices/%u/shadow/reported",
        "pattern write city/v1/devices/%u/commands/res",
        "pattern write city/v1/devices/%u/rpc/req",
        "pattern read city/v1/devices/%u/shadow/desired",
        "pattern read city/v1/devices/%u/commands/req",
        "pattern read city/v1/devices/%u/rpc/res",
    ]
    before_first_user = lines[: lines.index("user fleet-ingest")]
    assert not [line for line in before_first_user if line.startswith("topic")]  # nothing anonymous


def _cli(*args: str) -> str:
    result = CliRunner().invoke(build_app(), list(args))
    assert result.exit_code == 0, result.output
    return result.output


@dataclass(frozen=True)
class City:
    tmp: Path
    pki: Path
    broker: Path
    dev: int
    fleet: int
    output: str


@pytest.fixture(params=["mtls"])
def city(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[City]:
    """PKI + fleet identity + broker dir from the CLI, and mosquitto running that exact conf."""
    pki_dir, broker_dir = tmp_path / "pki", tmp_path / "broker"
    dev_port, fleet_port = free_port(), free_port()
    _cli("pki", "init", "--dir", str(pki_dir))
    _cli("pki", "service", "--dir", str(pki_dir), "--name", "fleet-ingest", "--out", str(tmp_path / "svc"))
    _cli("pki", "service", "--dir", str(pki_dir), "--name", "fleet-admin", "--out", str(tmp_path / "admin"))
    output = _cli(
        "broker-config", "--pki", str(pki_dir), "--out", str(broker_dir), "--device-bind", "127.0.0.1",
        "--device-port", str(dev_port), "--fleet-port", str(fleet_port),
        "--persistence-dir", f"{tmp_path}/", "--fleet-listener", request.param,
    )  # fmt: skip
    conf = (broker_dir / "mosquitto.conf").read_text()
    # Test-only additions: keep root (pytest's temp dirs are 0700) and log to a file.
    run_conf = tmp_path / "run.conf"
    run_conf.write_text(f"user root\nlog_dest file {tmp_path / 'mosquitto.log'}\n" + conf)
    proc = subprocess.Popen([find_mosquitto(), "-c", str(run_conf)], stderr=subprocess.PIPE)
    try:
        for port in (dev_port, fleet_port):
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
        (tmp_path / "mosquitto.pid").write_text(str(proc.pid))
        yield City(tmp_path, pki_dir, broker_dir, dev_port, fleet_port, output)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def _connect(ca: Path, cert: Path, key: Path, port: int, cid: str) -> mqtt.Client | None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
    done, ok = threading.Event(), []

    def on_connect(c: mqtt.Client, u: object, f: object, rc: ReasonCode, p: object) -> None:
        ok.append(not rc.is_failure)
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = lambda c, u, f, rc, p: done.set()
    try:
        client.connect("127.0.0.1", port)
    except (ssl.SSLError, OSError):
        return None
    client.loop_start()
    done.wait(5)
    if ok and ok[0]:
        return client
    client.loop_stop()
    return None


def _suback(client: mqtt.Client, topic: str) -> int:
    done, codes = threading.Event(), []

    def on_subscribe(c: mqtt.Client, u: object, mid: int, rcs: list[ReasonCode], p: object) -> None:
        codes.extend(rcs)
        done.set()

    client.on_subscribe = on_subscribe
    client.subscribe(topic, 1)
    assert done.wait(5), f"no SUBACK for {topic}"
    return int(codes[0].value)


def test_generated_config_runs_and_revoke_cuts_the_device_off(city: City) -> None:
    tmp, pki_dir, broker_dir = city.tmp, city.pki, city.broker
    conf = (broker_dir / "mosquitto.conf").read_text()
    assert "acl_file" not in conf and "mosquitto_dynamic_security.so" in conf
    assert f"cafile {broker_dir / 'fleet-ca.pem'}" in conf
    assert "access list: 0 device(s), 2 service(s)" in city.output
    store = FileKeyStore.create(tmp / "dev" / "key.pem", algorithm="p256")
    (tmp / "dev" / "req.csr").write_bytes(store.csr("kiosk-hn-0001"))
    _cli("pki", "sign-csr", "--dir", str(pki_dir), "--device", "kiosk-hn-0001",
         "--csr", str(tmp / "dev" / "req.csr"), "--out", str(tmp / "dev" / "cert.pem"))  # fmt: skip
    ca = broker_dir / "ca.pem"
    device = _connect(ca, tmp / "dev" / "cert.pem", store.path, city.dev, "kiosk-hn-0001")
    assert device is not None
    assert _suback(device, "city/v1/devices/kiosk-hn-0001/commands/req") == 0x87  # not listed yet
    sync = [
        "broker-sync",
        "--pki",
        str(pki_dir),
        "--broker-dir",
        str(broker_dir),
        "--identity",
        str(tmp / "admin"),
    ]
    assert "1 created clients, 1 created roles" in _cli(*sync)
    assert "already up to date" in _cli(*sync)
    assert _suback(device, "city/v1/devices/kiosk-hn-0001/commands/req") == 1
    assert _suback(device, "$share/fleet/city/v1/devices/+/events/#") == 0x87
    svc = tmp / "svc"
    fleet = _connect(ca, svc / "cert.pem", svc / "key.pem", city.fleet, "fleet-w1")
    assert fleet is not None
    assert _suback(fleet, "$share/fleet/city/v1/devices/+/events/+") == 1
    fleet.disconnect()
    fleet.loop_stop()
    assert _connect(ca, tmp / "dev" / "cert.pem", store.path, city.fleet, "fleet-w1") is None

    out = _cli(
        "revoke", "kiosk-hn-0001", "--pki", str(pki_dir), "--reason", "stolen",
        "--broker-dir", str(broker_dir), "--pidfile", str(tmp / "mosquitto.pid"),
        "--kick", str(tmp / "admin"),
    )  # fmt: skip
    assert "broker reloaded" in out and "removed from the running broker's access list" in out
    assert "connection was closed" in out
    deadline = time.monotonic() + 5
    while device.is_connected() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not device.is_connected()
    device.loop_stop()
    assert _connect(ca, tmp / "dev" / "cert.pem", store.path, city.dev, "again") is None
    listed = json.loads((broker_dir / "dynsec" / "dynamic-security.json").read_text())
    assert [c["username"] for c in listed["clients"]] == ["fleet-admin", "fleet-ingest"]
    assert CityPKI.load(pki_dir).certificates()[-1].revoked


def test_revoke_cli_reports_unknown_device(tmp_path: Path) -> None:
    _cli("pki", "init", "--dir", str(tmp_path / "pki"))
    result = CliRunner().invoke(
        build_app(), ["revoke", "nobody-01", "--pki", str(tmp_path / "pki"), "--reason", "lost"]
    )
    assert result.exit_code == 2
    assert "no certificate was issued for 'nobody-01'" in result.output


def _plain_connect(port: int, username: str, password: str | None) -> bool:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"plain-{username}", protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    done, ok = threading.Event(), []

    def on_connect(c: mqtt.Client, u: object, f: object, rc: ReasonCode, p: object) -> None:
        ok.append(not rc.is_failure)
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = lambda c, u, f, rc, p: done.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    done.wait(5)
    client.disconnect()
    client.loop_stop()
    return bool(ok and ok[0])


@pytest.mark.parametrize("city", ["plain-localhost"], indirect=True)
def test_plain_localhost_fleet_listener_needs_the_generated_password(city: City) -> None:
    [password] = [
        line.rsplit(": ", 1)[1] for line in city.output.splitlines() if "password for fleet-ingest" in line
    ]
    assert f"listener {city.fleet} 127.0.0.1" in (city.broker / "mosquitto.conf").read_text()
    assert _plain_connect(city.fleet, "fleet-ingest", password)
    assert not _plain_connect(city.fleet, "fleet-ingest", password + "x")
    assert not _plain_connect(city.fleet, "kiosk-hn-0001", None)  # a device name without password
    assert not _plain_connect(city.fleet, "kiosk-hn-0001", "guess")
