"""Broker ACL isolation matrix on a real mosquitto with per-device certificates.

Subscriptions outside a device's own topics are refused when they are made (SUBACK 0x87; more in
``test_sec_broker_subscribe.py``). mosquitto may accept a PUBLISH (MQTT v5 PUBACK) and drop it
silently, so every "cannot" is
asserted on what a legitimate subscriber receives: the forbidden message is published with QoS 1
(the broker has routed it once it acknowledges), then a sentinel that the same subscriber is
entitled to; once the sentinel is there, the forbidden message would have been too.
"""

from __future__ import annotations

from typing import Any

import pytest

from protocol.topics import Topics

T = Topics()
A, B = "dev-a-0001", "dev-b-0002"
OWN_PUBLISH = {
    "status": T.status,
    "telemetry": T.telemetry,
    "event": lambda d: T.event(d, "traffic.violation"),
    "shadow/reported": T.shadow_reported,
    "commands/res": T.commands_res,
    "rpc/req": T.rpc_req,
}
FLEET_ONLY = {"shadow/desired": T.shadow_desired, "commands/req": T.commands_req, "rpc/res": T.rpc_res}
FLEET_FILTERS = [T.shared("fleet", f) for f in T.fleet_filters()]

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def world(secure_broker: Any) -> Any:
    """Devices A and B and the fleet, each with its own certificate, A and B on the device port."""
    sb = secure_broker
    sb.a, sb.b = sb.device(A, "ed25519"), sb.device(B, "p256")
    return sb


def test_device_publishes_its_own_families_to_the_fleet(world: Any, inbox_factory: Any) -> None:
    fleet_inbox = inbox_factory()
    fleet = world.client(world.fleet, fleet=True, client_id="fleet-w1", inbox=fleet_inbox)
    world.subscribe(fleet, FLEET_FILTERS)
    a = world.client(world.a)
    for name, topic_of in OWN_PUBLISH.items():
        world.publish(a, topic_of(A), name.encode())
    for name, topic_of in OWN_PUBLISH.items():
        assert fleet_inbox.wait_for(topic_of(A), name.encode()), f"fleet did not get A's {name}"


def test_device_receives_what_the_fleet_sends_it(world: Any, inbox_factory: Any) -> None:
    a_inbox = inbox_factory()
    a = world.client(world.a, inbox=a_inbox)
    world.subscribe(a, [topic_of(A) for topic_of in FLEET_ONLY.values()])
    fleet = world.client(world.fleet, fleet=True, client_id="fleet-cmd")
    for name, topic_of in FLEET_ONLY.items():
        world.publish(fleet, topic_of(A), name.encode())
    for name, topic_of in FLEET_ONLY.items():
        assert a_inbox.wait_for(topic_of(A), name.encode()), f"A did not get its {name}"


def test_device_cannot_publish_into_another_device(world: Any, inbox_factory: Any) -> None:
    fleet_inbox, b_inbox = inbox_factory(), inbox_factory()
    fleet = world.client(world.fleet, fleet=True, client_id="fleet-w1", inbox=fleet_inbox)
    world.subscribe(fleet, FLEET_FILTERS)
    b = world.client(world.b, inbox=b_inbox)
    world.subscribe(b, [topic_of(B) for topic_of in FLEET_ONLY.values()])
    a = world.client(world.a)
    for topic_of in (*OWN_PUBLISH.values(), *FLEET_ONLY.values()):
        world.publish(a, topic_of(B), b"forged-by-a")
    world.publish(a, T.telemetry(A), b"sentinel-a")
    world.publish(fleet, T.rpc_res(B), b"sentinel-b")
    assert fleet_inbox.wait_for(T.telemetry(A), b"sentinel-a")
    assert b_inbox.wait_for(T.rpc_res(B), b"sentinel-b")
    forged = [(t, p) for t, p in fleet_inbox.payloads() + b_inbox.payloads() if p == b"forged-by-a"]
    assert forged == []


def test_device_cannot_send_itself_fleet_only_messages(world: Any, inbox_factory: Any) -> None:
    a_inbox = inbox_factory()
    a = world.client(world.a, inbox=a_inbox)
    world.subscribe(a, [topic_of(A) for topic_of in FLEET_ONLY.values()])
    for topic_of in FLEET_ONLY.values():
        world.publish(a, topic_of(A), b"self-made-command")
    fleet = world.client(world.fleet, fleet=True, client_id="fleet-cmd")
    world.publish(fleet, T.commands_req(A), b"sentinel")
    assert a_inbox.wait_for(T.commands_req(A), b"sentinel")
    assert [p for _, p in a_inbox.payloads() if p == b"self-made-command"] == []


@pytest.mark.parametrize(
    "filters",
    [
        [T.telemetry(B), T.status(B), T.event(B, "traffic.violation"), T.commands_req(B), T.rpc_res(B)],
        ["city/v1/devices/+/telemetry", "city/v1/devices/+/status", "city/v1/devices/+/commands/req"],
        ["#"],
        ["$share/evil/city/v1/devices/+/#", "$share/evil/#"],
        ["$SYS/#", "+/+/+/+/+"],
    ],
    ids=["b-topics", "plus-wildcards", "hash", "shared", "sys-and-plus"],
)
def test_device_cannot_read_another_device(world: Any, inbox_factory: Any, filters: list[str]) -> None:
    b = world.client(world.b)
    world.publish(b, T.status(B), b"b-retained", retain=True)
    a_inbox = inbox_factory()
    a = world.client(world.a, inbox=a_inbox)
    codes = world.subscribe(a, [*filters, T.commands_req(A)])
    assert [c.is_failure for c in codes] == [True] * len(filters) + [False]  # refused when made
    fleet = world.client(world.fleet, fleet=True, client_id="fleet-cmd")
    world.publish(b, T.telemetry(B), b"b-telemetry")
    world.publish(b, T.event(B, "traffic.violation"), b"b-evidence")
    world.publish(fleet, T.commands_req(B), b"b-command")
    world.publish(fleet, T.rpc_res(B), b"b-rpc")
    world.publish(fleet, T.commands_req(A), b"sentinel")
    assert a_inbox.wait_for(T.commands_req(A), b"sentinel")
    leaked = [(t, p) for t, p in a_inbox.payloads() if B in t or p.startswith(b"b-")]
    assert leaked == []


def test_fleet_identity_gets_no_device_rights(world: Any, inbox_factory: Any) -> None:
    """Pattern lines apply to services too: fleet-ingest must not act as a device of its name,
    nor forge a device's publications."""
    audit_id = world.service("fleet-audit")
    world.refresh()  # the ACL now lists fleet-audit
    obs_inbox = inbox_factory()
    observer = world.client(audit_id, fleet=True, client_id="fleet-observer", inbox=obs_inbox)
    world.subscribe(observer, T.fleet_filters())
    ingest = world.client(world.fleet, fleet=True, client_id="fleet-w9")
    for topic_of in OWN_PUBLISH.values():
        world.publish(ingest, topic_of("fleet-ingest"), b"service-as-device")
        world.publish(ingest, topic_of(B), b"service-forges-b")
    a = world.client(world.a)
    world.publish(a, T.telemetry(A), b"sentinel")
    assert obs_inbox.wait_for(T.telemetry(A), b"sentinel")
    assert [p for _, p in obs_inbox.payloads() if p != b"sentinel"] == []


def test_device_cannot_take_over_another_devices_session(world: Any, inbox_factory: Any) -> None:
    b_inbox = inbox_factory()
    b = world.client(world.b, inbox=b_inbox)
    world.subscribe(b, [T.commands_req(B)])
    world.client(world.a, client_id=B)  # the broker renames it to A's CN
    fleet = world.client(world.fleet, fleet=True, client_id="fleet-cmd")
    world.publish(fleet, T.commands_req(B), b"still-mine")
    assert b_inbox.wait_for(T.commands_req(B), b"still-mine")
    assert b.is_connected()
