"""The raw hand-off of the MQTT link: tokens acknowledged in batches, only on their own connection.

Real mosquitto and the worker's persistent session: what the broker delivers again after a
reconnect shows what was acknowledged. "Nothing else arrives" is asserted after a sentinel published
last has arrived (the broker delivers one subscription's messages in order).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fleet_helpers import wait_for

from fleet.broker import MosquittoBroker
from fleet.config import FleetConfig
from fleet.ingest import MqttLink
from fleet.stats import IngestStats
from protocol.topics import Topics

T = Topics()
DEVICE = "dev-acks-0001"
pytestmark = pytest.mark.timeout(60)


class Inbox:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[int, bytes]] = []

    def __call__(self, token: int, topic: str, payload: bytes | bytearray, at: float, retained: bool) -> None:
        with self.lock:
            self.items.append((token, bytes(payload)))

    def payloads(self) -> list[bytes]:
        with self.lock:
            return [payload for _token, payload in self.items]

    def tokens(self) -> list[int]:
        with self.lock:
            return [token for token, _payload in self.items]


def _link(broker: MosquittoBroker, tmp_path: Path, inbox: Inbox) -> MqttLink:
    config = FleetConfig(broker_url=broker.url, worker_id="fleet-acks", data_dir=tmp_path / "fleet")
    link = MqttLink(config, T, lambda _r: None, IngestStats(), lambda _d, _b: None, raw_sink=inbox)
    link.start(timeout=10)
    return link


def _publish(broker: MosquittoBroker, payloads: list[bytes]) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="acks-publisher", protocol=mqtt.MQTTv5)
    client.connect(broker.config.host, broker.config.port)
    client.loop_start()
    try:
        infos = [client.publish(T.event(DEVICE, "camera.count"), p, qos=1) for p in payloads]
        for info in infos:
            info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def _round_trip(link: MqttLink) -> None:
    """Publish QoS 1 and wait for the broker's PUBACK: it handles one connection's packets in order,
    so whatever the link wrote before has been handled too (a closing client may lose what the
    broker had not read yet)."""
    info = link.publish("test/round-trip", b"")
    info.wait_for_publish(10)
    assert info.is_published()


def _after_restart(broker: MosquittoBroker, tmp_path: Path, sentinel: bytes) -> list[bytes]:
    """What a new connection of the same worker receives, up to ``sentinel`` published now."""
    inbox = Inbox()
    link = _link(broker, tmp_path, inbox)
    try:
        _publish(broker, [sentinel])
        wait_for(lambda: sentinel in inbox.payloads(), what="the sentinel")
        return inbox.payloads()
    finally:
        link.stop()


def test_acknowledged_tokens_are_not_delivered_again(broker: MosquittoBroker, tmp_path: Path) -> None:
    inbox = Inbox()
    link = _link(broker, tmp_path, inbox)
    sent = [f"m{i}".encode() for i in range(10)]
    try:
        _publish(broker, sent)
        wait_for(lambda: len(inbox.items) == 10, what="ten messages")
        assert inbox.payloads() == sent
        assert all(token >= 0 for token in inbox.tokens())
        link.ack_tokens(inbox.tokens()[:6])  # one batch of PUBACKs
        _round_trip(link)
    finally:
        link.stop()
    assert _after_restart(broker, tmp_path, b"end") == [*sent[6:], b"end"]


def test_tokens_of_an_earlier_connection_acknowledge_nothing(broker: MosquittoBroker, tmp_path: Path) -> None:
    inbox = Inbox()
    link = _link(broker, tmp_path, inbox)
    sent = [b"a", b"b", b"c"]
    try:
        _publish(broker, sent)
        wait_for(lambda: len(inbox.items) == 3, what="three messages")
        old = inbox.tokens()
        link.force_reconnect()  # the broker delivers the unacknowledged messages again
        wait_for(lambda: len(inbox.items) == 6, timeout=20, what="the messages delivered again")
        assert inbox.payloads()[3:] == sent
        link.ack_tokens(old)  # of the first connection: dropped
        _round_trip(link)
    finally:
        link.stop()
    assert _after_restart(broker, tmp_path, b"end") == [*sent, b"end"]
