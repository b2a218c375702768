"""The broker enforces isolation when a client subscribes, and the fleet listener admits services only.

Real mosquitto (the configuration of ``fleet.brokerconf``: dynamic-security access list, device
and fleet mTLS listeners), real certificates from the city PKI, paho clients.

Every "receives nothing" is asserted after a sentinel the same client is entitled to has arrived:
the broker routes in order, so anything forbidden would have arrived before it.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fleet.brokerconf import refresh_local_broker
from fleet.config import FleetConfig
from fleet.dynsec import DynsecAdmin
from fleet.inbound import Received
from fleet.ingest import MqttLink
from fleet.stats import IngestStats
from hw.keystore import FileKeyStore
from protocol.topics import Topics

T = Topics()
A, B = "dev-a-0001", "dev-b-0002"
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def world(secure_broker: Any) -> Any:
    sb = secure_broker
    sb.a, sb.b = sb.device(A), sb.device(B)
    return sb


def refused(code: Any) -> bool:
    return int(code.value) >= 0x80


@pytest.mark.parametrize(
    "topic_filter",
    [
        "$share/fleet/city/v1/devices/+/events/#",
        "city/v1/devices/+/events/#",
        T.commands_req(B),
        "#",
        "$SYS/#",
        "$share/fleet/#",
        "city/v1/devices/+/commands/req",
        f"city/v1/devices/{A}/#",
        "$CONTROL/dynamic-security/v1/response",
    ],
)
def test_subscription_outside_its_own_topics_is_refused_when_made(
    world: Any, inbox_factory: Any, topic_filter: str
) -> None:
    inbox = inbox_factory()
    a = world.client(world.a, inbox=inbox)
    codes = world.subscribe(a, [topic_filter, T.commands_req(A)])
    assert refused(codes[0]), f"{topic_filter} was granted: {codes[0]}"
    assert not refused(codes[1]), f"its own commands/req was refused: {codes[1]}"

    b = world.client(world.b)
    fleet = world.client(world.fleet, fleet=True, client_id="fleet-cmd")
    for n in range(3):
        world.publish(b, T.event(B, "traffic.violation"), f"b-event-{n}".encode())
    world.publish(b, T.telemetry(B), b"b-telemetry")
    world.publish(fleet, T.commands_req(B), b"b-command")
    world.publish(fleet, T.commands_req(A), b"sentinel")
    assert inbox.wait_for(T.commands_req(A), b"sentinel")
    assert [(t, p) for t, p in inbox.payloads() if p != b"sentinel"] == []


def _fleet_worker(sb: Any, tmp_path: Path, received: list[Received], cond: threading.Condition) -> MqttLink:
    """The fleet's own MQTT link, started as `cityedge fleet serve --share` does."""

    def sink(item: Received) -> None:
        if item.ack is not None:
            item.ack()
        with cond:
            received.append(item)
            cond.notify_all()

    config = FleetConfig(
        broker_url=f"mqtts://127.0.0.1:{sb.fleet_port}",
        share=True,
        group="fleet",
        worker_id="fleet-w1",
        ca_file=sb.ca,
        cert_file=sb.fleet.cert,
        key_file=sb.fleet.key,
        data_dir=tmp_path / "fleet",
    )
    link = MqttLink(config, T, sink, IngestStats(), lambda device, body: None)
    link.start(timeout=10)
    return link


def test_a_device_cannot_join_the_fleets_shared_group_and_no_event_is_lost(
    world: Any, inbox_factory: Any, tmp_path: Path
) -> None:
    received: list[Received] = []
    cond = threading.Condition()
    link = _fleet_worker(world, tmp_path, received, cond)
    try:
        thief_inbox = inbox_factory()
        thief = world.client(world.a, inbox=thief_inbox)
        group = [
            "$share/fleet/city/v1/devices/+/events/#",
            *[T.shared("fleet", f) for f in T.fleet_filters()],
        ]
        codes = world.subscribe(thief, [*group, T.commands_req(A)])
        assert all(refused(c) for c in codes[:-1]), codes
        assert not refused(codes[-1])

        b = world.client(world.b)
        topic = T.event(B, "traffic.violation")
        payloads = [json.dumps({"n": n}).encode() for n in range(8)]
        for payload in payloads:
            world.publish(b, topic, payload)  # PUBACKed: the broker owns them now
        with cond:
            assert cond.wait_for(lambda: len([r for r in received if r.topic == topic]) >= 8, 10), (
                f"the fleet worker got {len([r for r in received if r.topic == topic])} of 8 events"
            )
        assert sorted(bytes(r.payload) for r in received if r.topic == topic) == sorted(payloads)
        world.publish(world.client(world.fleet, fleet=True, client_id="fleet-cmd"), T.commands_req(A), b"s")
        assert thief_inbox.wait_for(T.commands_req(A), b"s")
        assert thief_inbox.payloads() == [(T.commands_req(A), b"s")]
    finally:
        link.stop()


def test_a_device_certificate_is_refused_on_the_fleet_listener(
    world: Any, conn_refused: type[Exception], tmp_path: Path
) -> None:
    with pytest.raises(conn_refused):
        world.client(world.a, fleet=True, client_id="fleet-w1")
    # Sending its whole chain (device, issuing CA, root) does not help: the root is not trusted there.
    chain = tmp_path / "chain.pem"
    chain.write_bytes(world.a.cert.read_bytes() + world.pki.issuing_cert_pem() + world.pki.root_cert_pem())
    with pytest.raises(conn_refused):
        world.client(world.identity(A, chain, world.a.key), fleet=True, client_id=B)
    world.client(world.fleet, fleet=True, client_id="fleet-w1")  # a service certificate connects


def test_a_revoked_service_is_refused_on_the_fleet_listener(
    world: Any, conn_refused: type[Exception]
) -> None:
    audit = world.service("fleet-audit")
    world.client(audit, fleet=True, client_id="fleet-audit-1")
    world.pki.revoke(audit.name, "superseded")
    world.refresh()
    with pytest.raises(conn_refused):
        world.client(audit, fleet=True, client_id="fleet-audit-2")


def test_a_device_cannot_take_over_another_devices_session_on_any_listener(
    world: Any, inbox_factory: Any, conn_refused: type[Exception]
) -> None:
    """B's persistent session holds a command queued while B was offline; A tries B's client id."""
    b_inbox = inbox_factory()
    b = world.client(world.b, inbox=b_inbox, persistent=True)
    world.subscribe(b, [T.commands_req(B)])
    b.disconnect()  # its session (subscription, queue) stays on the broker
    b.loop_stop()
    fleet = world.client(world.fleet, fleet=True, client_id="fleet-cmd")
    world.publish(fleet, T.commands_req(B), b"queued-for-b")

    with pytest.raises(conn_refused):
        world.client(world.a, fleet=True, client_id=B)
    a_inbox = inbox_factory()
    a = world.client(world.a, client_id=B, inbox=a_inbox)  # device listener: renamed to A's CN
    world.subscribe(a, [T.commands_req(A)])
    world.publish(fleet, T.commands_req(A), b"sentinel-a")
    assert a_inbox.wait_for(T.commands_req(A), b"sentinel-a")
    assert [p for _, p in a_inbox.payloads() if p != b"sentinel-a"] == []

    again = world.client(world.b, inbox=b_inbox, persistent=True)
    assert b_inbox.wait_for(T.commands_req(B), b"queued-for-b"), "B's queued command was lost"
    world.client(world.a, client_id=B)  # while B is online: B stays connected
    world.publish(fleet, T.commands_req(B), b"still-mine")
    assert b_inbox.wait_for(T.commands_req(B), b"still-mine")
    assert again.is_connected()


def test_a_device_cannot_change_the_access_list(world: Any) -> None:
    a = world.client(world.a)
    grant_all = {
        "commands": [
            {
                "command": "createRole",
                "rolename": "evil",
                "acls": [{"acltype": "subscribePattern", "topic": "#"}],
            },
            {"command": "addClientRole", "username": A, "rolename": "evil"},
            {"command": "deleteClient", "username": B},
        ]
    }
    world.publish(a, "$CONTROL/dynamic-security/v1", json.dumps(grant_all).encode())
    with DynsecAdmin(world.admin_endpoint) as admin:
        state = admin.read()
    assert "evil" not in state.roles and B in state.clients
    assert state.clients[A] == frozenset({(f"device:{A}", 0)})
    assert refused(world.subscribe(a, ["#"])[0])


def test_an_identity_the_access_list_does_not_name_gets_nothing(world: Any, inbox_factory: Any) -> None:
    """A certificate issued without granting it on the broker (e.g. a manual `pki sign-csr`
    before `fleet broker-sync`): it connects, but may neither subscribe nor publish."""
    folder = world.root / "ids" / "dev-c-0003"
    store = FileKeyStore.create(folder / "key.pem", algorithm="p256")
    (folder / "cert.pem").write_bytes(world.pki.sign_device_csr(store.csr("dev-c-0003"), "dev-c-0003"))
    c_id = world.identity("dev-c-0003", folder / "cert.pem", folder / "key.pem")
    fleet_inbox = inbox_factory()
    fleet = world.client(world.fleet, fleet=True, client_id="fleet-w1", inbox=fleet_inbox)
    world.subscribe(fleet, T.fleet_filters())
    c = world.client(c_id)
    assert refused(world.subscribe(c, [T.commands_req("dev-c-0003")])[0])
    info = c.publish(T.telemetry("dev-c-0003"), b"unlisted", qos=1)
    info.wait_for_publish(5)
    world.publish(world.client(world.a), T.telemetry(A), b"sentinel")
    assert fleet_inbox.wait_for(T.telemetry(A), b"sentinel")
    assert (T.telemetry("dev-c-0003"), b"unlisted") not in fleet_inbox.payloads()

    # The file now lists it, but the plugin reads its file at start only: SIGHUP changes nothing.
    refresh_local_broker(world.pki, world.config, world.security)
    world.broker.reload()
    assert refused(world.subscribe(c, [T.commands_req("dev-c-0003")])[0])
    assert world.grant("dev-c-0003").created_clients == ["dev-c-0003"]
    assert not refused(world.subscribe(c, [T.commands_req("dev-c-0003")])[0])
    world.publish(c, T.telemetry("dev-c-0003"), b"listed")
    assert fleet_inbox.wait_for(T.telemetry("dev-c-0003"), b"listed")


def test_the_generated_file_alone_refuses_at_subscribe_time(secure_broker: Any) -> None:
    """Devices already in the PKI when the broker starts are in its file: no $CONTROL needed."""
    sb = secure_broker
    sb.broker.stop()
    sb.a, sb.b = sb.device(A), sb.device(B)  # not running: only the inventory has them
    refresh_local_broker(sb.pki, sb.config, sb.security)
    sb.broker.start()
    a = sb.client(sb.a)
    codes = sb.subscribe(a, [T.commands_req(A), T.commands_req(B), "#"])
    assert [refused(c) for c in codes] == [False, True, True]


def test_a_revoked_device_is_deleted_from_the_running_broker_and_disconnected(world: Any) -> None:
    a = world.client(world.a)
    world.pki.revoke(A, "stolen")
    changes = world.refresh()
    assert changes.deleted_clients == [A] and changes.deleted_roles == [f"device:{A}"]
    deadline = time.monotonic() + 5
    while a.is_connected() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not a.is_connected()
    assert world.refresh().deleted_clients == []  # converged: nothing left to do


def test_enrolment_grants_the_device_on_the_broker_first_or_refuses(
    secure_broker: Any, make_enroll_fleet: Any, tmp_path: Path
) -> None:
    """The enrolment API lists the device on the running broker before it issues the certificate;
    when the broker cannot be reached it answers 503 and the claim stays usable."""
    import ssl

    import httpx

    sb = secure_broker
    fleet = make_enroll_fleet(sb.pki, f"mqtts://127.0.0.1:{sb.device_port}", on_enrolling=sb.grant)
    tls = ssl.create_default_context(cafile=str(fleet.ca))
    key = FileKeyStore.create(tmp_path / "dev" / "key.pem", algorithm="p256")
    body = {
        "token": fleet.claim(),
        "device_id": "kiosk-hn-btl-0042",
        "csr_pem": key.csr("kiosk-hn-btl-0042").decode(),
    }
    body |= {"role": "kiosk", "site": "hn-btl"}
    sb.broker.stop()
    refused_now = httpx.post(f"{fleet.url}/api/enroll", json=body, verify=tls, timeout=30)
    assert refused_now.status_code == 503, refused_now.text
    assert "broker could not be prepared" in refused_now.json()["detail"]
    assert not sb.pki.inventory.by_subject("kiosk-hn-btl-0042")
    sb.broker.start()
    answer = httpx.post(f"{fleet.url}/api/enroll", json=body, verify=tls, timeout=30)
    assert answer.status_code == 200, answer.text
    (tmp_path / "dev" / "cert.pem").write_text(answer.json()["certificate_pem"])
    device = sb.client(sb.identity("kiosk-hn-btl-0042", tmp_path / "dev" / "cert.pem", key.path))
    assert not refused(sb.subscribe(device, [T.commands_req("kiosk-hn-btl-0042")])[0])
    assert refused(sb.subscribe(device, ["$share/fleet/city/v1/devices/+/events/+"])[0])
