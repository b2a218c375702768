"""The worker's MQTT link: shared subscription in (manual acks), commands and RPC answers out.

paho-mqtt 2.x, MQTT v5, persistent session (``clean_start=False`` + session expiry) under a
stable client id. Every received message is classified and handed, in arrival order, to the
batch writer with an ``ack`` callback; the PUBACK goes out only once its batch committed. Acks
of a previous connection are dropped (the broker resends those messages; events de-duplicate).

With a ``raw_sink`` (the writer process) the MQTT thread does the least it can per message: no
objects, no closures, no clock reads beyond one float; the message goes on as (token, topic,
payload, time, retained), where the token carries the connection generation and the packet id.
Committed tokens come back in batches (``ack_tokens``) and their PUBACKs are queued to paho as one
write instead of one queued packet (and one wake-up of the network thread) per message.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from fleet.config import FleetConfig
from fleet.inbound import Received, decode, family_of
from fleet.stats import IngestStats
from protocol.timefmt import utc_now
from protocol.topics import Topics

log = logging.getLogger(__name__)

Sink = Callable[[Received], None]
RawSink = Callable[[int, str, bytes | bytearray, float, bool], None]
"""(token, topic, payload, time.time() of arrival, retained); token -1: nothing to acknowledge."""
RpcHandler = Callable[[str, dict[str, Any]], None]

RAW_TOKEN = 1 << 62
"""Set in every token a raw sink receives: ``RAW_TOKEN | generation << 16 | packet id``."""


def raw_token(generation: int, mid: int) -> int:
    return RAW_TOKEN | (generation << 16) | mid


class IngestError(RuntimeError):
    """The broker could not be reached or refused this worker."""


def make_client(config: FleetConfig, client_id: str) -> mqtt.Client:
    broker = config.broker()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if broker.username is not None:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls:
        client.tls_set(
            ca_certs=str(config.ca_file) if config.ca_file else None,
            certfile=str(config.cert_file) if config.cert_file else None,
            keyfile=str(config.key_file) if config.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    client.reconnect_delay_set(min_delay=1, max_delay=config.reconnect_max_s)
    return client


class MqttLink:
    """One fleet worker's connection to the broker."""

    def __init__(
        self,
        config: FleetConfig,
        topics: Topics,
        sink: Sink,
        stats: IngestStats,
        on_rpc: RpcHandler,
        *,
        raw_sink: RawSink | None = None,
    ) -> None:
        self.config = config
        self.topics = topics
        self.sink = sink
        self.raw_sink = raw_sink
        self.stats = stats
        self.on_rpc = on_rpc
        self.client = make_client(config, config.worker_id)
        self.client.manual_ack_set(True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message if raw_sink is None else self._on_message_raw
        self._generation = 0
        self._prefix = topics.prefix
        self._received = stats.received
        self._subscribed = threading.Event()
        self._refused: str | None = None
        self.connected = False

    def filters(self) -> list[str]:
        filters = self.topics.fleet_filters()
        if not self.config.share:
            return filters
        return [Topics.shared(self.config.group, f) for f in filters]

    def start(self, timeout: float = 15.0) -> None:
        broker = self.config.broker()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.config.session_expiry_s
        props.ReceiveMaximum = self.config.receive_maximum
        try:
            self.client.connect(
                broker.host, broker.port, self.config.keepalive_s, clean_start=False, properties=props
            )
        except (OSError, ssl.SSLError) as exc:
            raise IngestError(f"cannot reach the broker at {broker.host}:{broker.port}: {exc}") from exc
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while not self._subscribed.wait(0.05):
            if self._refused is not None or time.monotonic() > deadline:
                self.stop()
                why = self._refused or "no answer"
                raise IngestError(f"broker {broker.host}:{broker.port} did not accept this worker: {why}")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.connected = False

    def force_reconnect(self) -> None:
        """Drop the connection (paho reconnects): the broker resends every unacknowledged message."""
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> mqtt.MQTTMessageInfo:
        """Publish QoS 1, retained if asked (paho queues it while reconnecting); the returned
        ``MQTTMessageInfo`` tells when the broker has acknowledged it."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise IngestError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        return info

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)
            log.error("broker refused the connection: %s", reason)
            return
        self._generation += 1
        self.connected = True
        log.info("connected to broker (session present: %s)", flags.session_present)
        client.subscribe([(f, SubscribeOptions(qos=1)) for f in self.filters()])

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[Any], _p: Any) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            self._refused = f"subscription refused: {', '.join(failed)}"
            log.error("%s", self._refused)
            return
        self._subscribed.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connected = False
        if not self._subscribed.is_set() and self._refused is None:
            self._refused = f"connection closed during start ({reason}; check TLS files and credentials)"
        if reason.is_failure:
            log.warning("disconnected from broker: %s (reconnecting)", reason)
        else:
            log.info("disconnected from broker")

    def _acker(self, mid: int, qos: int) -> Callable[[], None] | None:
        if qos == 0:
            return None
        generation = self._generation

        def ack() -> None:
            if generation == self._generation:
                self.client.ack(mid, qos)

        return ack

    def ack_tokens(self, tokens: Sequence[int]) -> None:
        """Acknowledge committed messages by raw token (those of an earlier connection are dropped:
        the broker delivers them again)."""
        current = raw_token(self._generation, 0) >> 16
        mids = [token & 0xFFFF for token in tokens if token >> 16 == current]
        if not mids:
            return
        for mid in mids:  # paho's public manual acknowledgement (one PUBACK each)
            self.client.ack(mid, 1)

    def _on_message_raw(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        """The hot path: count, hand on the raw message with its token, nothing else."""
        topic = msg.topic
        family = family_of(topic, self._prefix)
        self._received[family] += 1  # only this thread counts received messages: no lock needed
        if family == "rpc/req":
            self._dispatch_rpc(Received(topic, msg.payload, utc_now(), bool(msg.retain), None))
        token = raw_token(self._generation, msg.mid) if msg.qos else -1
        assert self.raw_sink is not None
        self.raw_sink(token, topic, msg.payload, time.time(), bool(msg.retain))

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        received = Received(
            msg.topic, msg.payload, utc_now(), bool(msg.retain), self._acker(msg.mid, msg.qos)
        )
        family = family_of(received.topic, self.topics.prefix)
        self.stats.on_received(family)
        if family == "rpc/req":
            self._dispatch_rpc(received)
        self.sink(received)

    def _dispatch_rpc(self, received: Received) -> None:
        item = decode(received, self.topics, self.config.max_bytes_for)
        if item.ok and item.device is not None and item.body is not None:
            try:
                self.on_rpc(item.device, item.body)
            except Exception:  # supervisor boundary: the message is still counted and acknowledged
                log.exception("rpc dispatch failed for %s", item.device)


def sync_retained(config: FleetConfig, topics: Topics, sink: Sink) -> int:
    """Read the retained status and shadow of every device once (brokers that follow MQTT 5
    send no retained messages to shared subscriptions). Returns how many were read."""
    got: list[int] = [0]
    last = [time.monotonic()]
    ready = threading.Event()
    client = make_client(config, f"{config.worker_id}-sync"[:64])
    root = f"{topics.prefix}/devices/+"

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            c.subscribe([(f"{root}/status", 1), (f"{root}/shadow/reported", 1)])

    def on_subscribe(*_a: Any) -> None:
        last[0] = time.monotonic()
        ready.set()

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if not msg.retain:
            return
        sink(Received(msg.topic, msg.payload, utc_now(), True, None))
        got[0] += 1
        last[0] = time.monotonic()

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    broker = config.broker()
    try:
        client.connect(broker.host, broker.port, config.keepalive_s, clean_start=True)
    except (OSError, ssl.SSLError) as exc:
        log.warning("retained sync skipped: %s", exc)
        return 0
    client.loop_start()
    try:
        if ready.wait(config.retained_sync_s + 5):
            deadline = time.monotonic() + config.retained_sync_s
            while time.monotonic() < deadline and time.monotonic() - last[0] < 0.3:
                time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    log.info("retained sync read %d messages", got[0])
    return got[0]
