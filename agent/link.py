"""The MQTT link: one paho-mqtt 2.x client (MQTT v5) per connection attempt, driven by one thread.

* client id = device id, persistent session (``clean_start=False`` + long session expiry);
* last will = retained ``status`` ``{"online": false, ...}`` QoS 1;
* on connect: retained ``status`` online, subscriptions to the device's own ``shadow/desired``,
  ``commands/req`` and ``rpc/res`` (QoS 1), then the connect hooks (shadow, outbox sender);
* reconnect with capped exponential backoff and full jitter; each failure is logged with its
  reason in words (connection refused, DNS, TLS, not authorised, timeout). Never raises out of the
  thread because the broker is unreachable;
* ``stop``: retained ``status`` offline, then a normal DISCONNECT (so the will is not sent).

A fresh paho client per attempt means nothing unacknowledged lingers inside paho: the outbox is
the only source of truth and re-sends whatever was not acknowledged (``generation`` tells its
sender which connection an acknowledgement belongs to).
"""

from __future__ import annotations

import json
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.config import MqttSection
from agent.errors import LinkDown
from protocol.timefmt import now_ts
from protocol.topics import Topics

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]
AckHandler = Callable[[int, int, bool, str], None]
"""(generation, mid, ok, reason) for each PUBACK."""
Hook = Callable[[], None]

_HINTS = {
    "Not authorized": "check the device certificate and the broker ACL",
    "Bad user name or password": "check the device credentials",
    "Client identifier not valid": "the broker refused the device id as client id",
    "Banned": "the broker has banned this device",
}


def describe_error(exc: BaseException, host: str, port: int) -> str:
    """Say in words why a connection attempt failed."""
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {host}:{port} (is the broker running and listening there?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host name {host!r} (DNS: {exc.strerror})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the broker certificate did not verify ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {host}:{port} failed ({exc.reason or exc})"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"connection to {host}:{port} timed out"
    if isinstance(exc, FileNotFoundError):
        return f"TLS file missing: {exc.filename}"
    if isinstance(exc, OSError):
        return f"network error talking to {host}:{port} ({exc.strerror or exc})"
    return f"{type(exc).__name__}: {exc}"


def describe_reason(reason: ReasonCode) -> str:
    name = reason.getName()
    hint = _HINTS.get(name)
    return f"broker refused the connection: {name}" + (f" ({hint})" if hint else "")


def backoff_delay(attempt: int, low: float, high: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(high, low * 2**attempt)], at least 50 ms."""
    ceiling = min(high, low * (2 ** min(attempt, 30)))
    return max(0.05, rng.uniform(0.0, ceiling))


class Link:
    """Owns the connection to the broker; thread-safe ``publish``."""

    def __init__(
        self,
        settings: MqttSection,
        device_id: str,
        identity: dict[str, Any],
        on_message: MessageHandler,
        on_ack: AckHandler,
    ) -> None:
        self.settings = settings
        self.device_id = device_id
        self.identity = identity
        self.topics = Topics(settings.topic_prefix)
        self._on_message = on_message
        self._on_ack = on_ack
        self._connect_hooks: list[Hook] = []
        self._disconnect_hooks: list[Hook] = []
        self._lock = threading.Lock()
        self._client: mqtt.Client | None = None
        self._generation = 0
        self._connected = False
        self._subscribed = False  # the broker acknowledged this connection's subscriptions (SUBACK)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mqtt-link", daemon=True)
        self._rng = random.Random()
        self._refusal: str | None = None
        self.last_error: str | None = None
        self.attempts = 0
        self.connects = 0
        self.since = now_ts()

    # -- public API --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def generation(self) -> int:
        return self._generation

    def add_connect_hook(self, hook: Hook) -> None:
        self._connect_hooks.append(hook)

    def add_disconnect_hook(self, hook: Hook) -> None:
        self._disconnect_hooks.append(hook)

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Publish status offline (retained), disconnect cleanly and end the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> tuple[int, int]:
        """Queue one message; returns (generation, mid). Raises LinkDown when not connected."""
        with self._lock:
            client, generation = self._client, self._generation
            if client is None or not self._connected:
                raise LinkDown("not connected to the broker")
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise LinkDown(f"publish failed: {mqtt.error_string(info.rc)}")
        return generation, info.mid

    def publish_wait(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, timeout: float = 5.0
    ) -> bool:
        """Publish and wait for the PUBACK (never call from the link thread's callbacks)."""
        with self._lock:
            client = self._client if self._connected else None
        if client is None:
            return False
        info = client.publish(topic, payload, qos=qos, retain=retain)
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()

    def status_payload(self, online: bool, **extra: Any) -> bytes:
        body = {"online": online, "ts": now_ts(), **self.identity, **extra}
        return json.dumps(body, separators=(",", ":")).encode()

    def state(self) -> dict[str, Any]:
        return {
            "connected": self._connected,
            "subscribed": self._connected and self._subscribed,
            "since": self.since,
            "broker": self.settings.broker,
            "last_error": self.last_error,
            "attempts": self.attempts,
            "connects": self.connects,
        }

    # -- the link thread ---------------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            self.attempts += 1
            up_for = self._session()
            if self._stop.is_set():
                break
            if up_for > 30.0:
                attempt = 0
            delay = backoff_delay(
                attempt, self.settings.backoff_min_s, self.settings.backoff_max_s, self._rng
            )
            attempt += 1
            log.warning(
                "MQTT link to %s: %s; retrying in %.1f s (attempt %d)",
                self.settings.broker,
                self.last_error,
                delay,
                attempt,
            )
            self._stop.wait(delay)

    def _session(self) -> float:
        """One connection: connect, run until it drops or stop; returns seconds it was up."""
        host, port = self.settings.host, self.settings.port
        try:
            client = self._new_client()
            client.connect(host, port, self.settings.keepalive_s, clean_start=False, properties=self._props())
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.last_error = describe_error(exc, host, port)
            return 0.0
        with self._lock:
            self._client = client
        self._refusal = None
        started = time.monotonic()
        connected_at: float | None = None
        while not self._stop.is_set():
            rc = client.loop(timeout=0.5)
            if self._connected and connected_at is None:
                connected_at = time.monotonic()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                if self._refusal is not None:
                    self.last_error = self._refusal
                elif connected_at is not None:
                    self.last_error = f"connection lost ({mqtt.error_string(rc)})"
                else:
                    self.last_error = f"{host}:{port} closed the connection during the MQTT handshake"
                break
            if connected_at is None and time.monotonic() - started > self.settings.connect_timeout_s:
                self.last_error = f"broker at {host}:{port} did not answer the MQTT CONNECT"
                break
        if self._stop.is_set() and self._connected:
            self._goodbye(client)
        self._set_disconnected(client)
        return time.monotonic() - connected_at if connected_at is not None else 0.0

    def _goodbye(self, client: mqtt.Client) -> None:
        info = client.publish(
            self.topics.status(self.device_id), self.status_payload(False), qos=1, retain=True
        )
        deadline = time.monotonic() + 2.0
        while not info.is_published() and time.monotonic() < deadline:
            if client.loop(timeout=0.1) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        client.disconnect()
        deadline = time.monotonic() + 1.0
        while client.socket() is not None and time.monotonic() < deadline:  # let the loop send DISCONNECT
            if client.loop(timeout=0.1) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        log.info("MQTT link: status offline published, disconnected")

    def _set_disconnected(self, client: mqtt.Client) -> None:
        was = self._connected
        with self._lock:
            self._connected = False
            self._subscribed = False
            self._client = None
        sock = client.socket()
        if sock is not None:
            sock.close()
        if was:
            self.since = now_ts()
            for hook in self._disconnect_hooks:
                hook()

    def _props(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.settings.session_expiry_s
        return props

    def _new_client(self) -> mqtt.Client:
        self._generation += 1
        generation = self._generation
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.device_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        client.suppress_exceptions = True
        client.enable_logger(logging.getLogger("agent.paho"))
        client.max_inflight_messages_set(self.settings.inflight_window)
        client.connect_timeout = self.settings.connect_timeout_s
        will = self.status_payload(False, reason="connection lost")
        client.will_set(self.topics.status(self.device_id), will, qos=1, retain=True)
        if self.settings.use_tls:
            tls = self.settings.tls
            client.tls_set(
                ca_certs=str(tls.ca) if tls.ca else None,
                certfile=str(tls.cert) if tls.cert else None,
                keyfile=str(tls.key) if tls.key else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        # Packets are written by the link thread's loop in batches (paho's socket pair wakes it),
        # never by the publishing thread: no per-message hand-offs between threads.
        client.on_socket_register_write = lambda _c, _u, _s: None
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_subscribe = self._handle_subscribe
        client.on_publish = lambda _c, _u, mid, rc, _p: self._ack(generation, mid, rc)
        return client

    # -- paho callbacks (run in the link thread) ---------------------------------------------

    def _ack(self, generation: int, mid: int, reason: ReasonCode) -> None:
        if reason.value < 0x80:  # success (checked cheaply: this runs for every PUBACK)
            self._on_ack(generation, mid, True, "")
        else:
            self._on_ack(generation, mid, False, reason.getName())

    def _handle_connect(
        self, client: mqtt.Client, _userdata: Any, flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if reason.is_failure:
            self._refusal = describe_reason(reason)
            return
        with self._lock:
            self._connected = True
            self._subscribed = False
        self.connects += 1
        self.last_error = None
        self.since = now_ts()
        log.info(
            "MQTT link: connected to %s (session present: %s)", self.settings.broker, flags.session_present
        )
        client.publish(self.topics.status(self.device_id), self.status_payload(True), qos=1, retain=True)
        options = SubscribeOptions(qos=1)
        client.subscribe(
            [
                (self.topics.shadow_desired(self.device_id), options),
                (self.topics.commands_req(self.device_id), options),
                (self.topics.rpc_res(self.device_id), options),
            ]
        )
        for hook in self._connect_hooks:
            hook()

    def _handle_subscribe(
        self, _client: mqtt.Client, _userdata: Any, _mid: int, reasons: list[ReasonCode], _props: Any
    ) -> None:
        refused = [r.getName() for r in reasons if r.is_failure]
        if refused:
            log.error("MQTT link: the broker refused the device's subscriptions: %s", ", ".join(refused))
            return
        self._subscribed = True

    def _handle_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if reason.is_failure and not self._stop.is_set() and self._connected:
            self._refusal = f"broker closed the connection: {reason.getName()}"

    def _handle_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            log.warning("MQTT link: dropped a message whose topic is not UTF-8")
            return
        self._on_message(topic, bytes(msg.payload))
