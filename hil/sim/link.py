"""The MQTT side of one simulated device: connect, announce, send, answer, reconnect.

Each device is one aiomqtt client on the shared loop. A connection goes through a shared
semaphore (bounded ramp-up); a dropped connection is retried with jittered exponential backoff;
events wait in an in-memory outbox until the broker acknowledges them, so ``seq`` has no gaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hil.sim.config import SimConfig
from hil.sim.device import Outgoing, SimDevice
from hil.sim.stats import SimStats

log = logging.getLogger(__name__)

ANNOUNCE_TIMEOUT_S = 30.0
GOODBYE_TIMEOUT_S = 5.0
# Publishes wait for their PUBACK without a timer of their own (a timer per message costs a task):
# a dead connection ends the receive task, which cancels the whole session.
NO_TIMEOUT = math.inf


class Backoff:
    """Exponential backoff from ``low`` to ``high`` seconds, with jitter so devices spread out."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high, self.attempt = low, high, 0

    def next(self, uniform: float) -> float:
        """Next delay; ``uniform`` in [0, 1) picks where in the upper half of the window it lands."""
        cap = min(self.high, self.low * (2.0**self.attempt))
        self.attempt += 1
        return cap * (0.5 + uniform / 2)

    def reset(self) -> None:
        self.attempt = 0


class DeviceLink:
    """Keeps one simulated device connected until ``stop`` is set."""

    def __init__(
        self,
        device: SimDevice,
        cfg: SimConfig,
        stats: SimStats,
        gate: asyncio.Semaphore,
        stop: asyncio.Event,
        load_go: asyncio.Event,
    ) -> None:
        self.device = device
        self.cfg = cfg
        self.stats = stats
        self.gate = gate
        self.stop = stop
        self.load_go = load_go
        self.outbox: deque[Outgoing] = deque()
        self.load_left = cfg.load_events
        self._flush_lock = asyncio.Lock()
        self._had_session = False
        self._backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s)
        t = device.topics
        self._cmd_topic = t.commands_req(device.id)
        self._desired_topic = t.shadow_desired(device.id)

    async def run(self, start_delay: float = 0.0) -> None:
        if await self._sleep(start_delay):
            return
        while not self.stop.is_set():
            client = self._client()
            try:
                async with self.gate:
                    if self.stop.is_set():
                        return
                    await client.__aenter__()
            except aiomqtt.MqttError as exc:
                self.stats.failed_attempts += 1
                self.stats.last_error = f"cannot connect to {self.cfg.broker}: {exc}"
                if await self._sleep(self._backoff.next(self.device.rng.random())):
                    return
                continue
            await self._connected(client)

    async def _connected(self, client: aiomqtt.Client) -> None:
        if self._had_session:
            self.stats.reconnects += 1
        self._had_session = True
        counted = False
        try:
            subs = [(self._cmd_topic, 1), (self._desired_topic, 1)]
            await client.subscribe(subs, timeout=ANNOUNCE_TIMEOUT_S)
            await self._send(client, self.device.status(True), ANNOUNCE_TIMEOUT_S)
            await self._send(client, self.device.shadow_reported(), ANNOUNCE_TIMEOUT_S)
            self.stats.on_connected(self.device.id)
            counted = True
            self.device.log(f"connected to {self.cfg.broker} (boot {self.device.boot_id})")
            self._backoff.reset()
            await self._session(client)
        except aiomqtt.MqttError as exc:
            self.device.log(f"connection lost: {exc}")
        finally:
            if counted:
                self.stats.on_disconnected()
            await self._close(client)
        if not self.stop.is_set():
            await self._sleep(self._backoff.next(self.device.rng.random()))

    async def _close(self, client: aiomqtt.Client) -> None:
        """Say goodbye (offline status) when stopping; release the connection either way."""
        with contextlib.suppress(aiomqtt.MqttError, asyncio.TimeoutError):
            if self.stop.is_set():
                offline = self.device.status(False)
                await client.publish(offline.topic, offline.payload, 1, True, timeout=GOODBYE_TIMEOUT_S)
                self.stats.sent["status"] += 1
            await asyncio.wait_for(client.__aexit__(None, None, None), GOODBYE_TIMEOUT_S)

    async def _session(self, client: aiomqtt.Client) -> None:
        """Run receive, telemetry/events and load side by side until stop or a lost connection."""
        stopped = asyncio.ensure_future(self.stop.wait())
        receive = asyncio.ensure_future(self._receive(client))
        pending = {stopped, receive, asyncio.ensure_future(self._activity(client))}
        if self.load_left > 0:
            pending.add(asyncio.ensure_future(self._load(client)))
        try:
            while stopped in pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    error = task.exception()
                    if error is not None:
                        raise error
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _send(self, client: aiomqtt.Client, out: Outgoing, timeout: float = NO_TIMEOUT) -> None:
        await client.publish(out.topic, out.payload, out.qos, out.retain, timeout=timeout)
        self.stats.sent[out.family] += 1

    async def _flush(self, client: aiomqtt.Client) -> None:
        """Send queued events in order; each leaves the outbox only once acknowledged."""
        async with self._flush_lock:
            while self.outbox:
                await self._send(client, self.outbox[0])
                self.outbox.popleft()

    async def _activity(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        next_telemetry = loop.time() + self.device.telemetry_interval_s * self.device.rng.random()
        while True:
            now = loop.time()
            interval = self.device.telemetry_interval_s  # set_config may change it
            if now >= next_telemetry:
                await self._send(client, self.device.telemetry())
                next_telemetry = max(next_telemetry + interval, now + interval / 2)
            next_telemetry = min(next_telemetry, now + interval)
            self.outbox.extend(self.device.due_events())
            await self._flush(client)
            wait = min(next_telemetry - loop.time(), self.device.next_event_in())
            await asyncio.sleep(max(0.01, wait))

    async def _load(self, client: aiomqtt.Client) -> None:
        """Benchmark load: extra events once every device is connected."""
        await self.load_go.wait()
        cfg = self.cfg
        interval = cfg.devices / cfg.load_rate if cfg.load_rate > 0 else 0.0
        if interval:
            await asyncio.sleep(interval * self.device.rng.random())
        while self.load_left > 0:
            self.outbox.append(self.device.load_event())
            self.load_left -= 1
            await self._flush(client)
            if interval:
                await asyncio.sleep(interval)

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = message.topic.value
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            try:
                if topic == self._cmd_topic:
                    outs = self.device.on_command(payload, topic)
                elif topic == self._desired_topic:
                    outs = self.device.on_desired(payload, topic)
                else:
                    continue
            except Exception:  # one bad message must not stop the device (supervisor boundary)
                self.stats.handler_errors += 1
                log.exception("%s: handler failed for a message on %s", self.device.id, topic)
                continue
            for out in outs:
                await self._send(client, out)
                if out.family == "commands":
                    self.stats.commands_answered += 1

    def _client(self) -> aiomqtt.Client:
        dev, cfg = self.device, self.cfg
        offline = dev.status(False)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = cfg.session_expiry_s
        return aiomqtt.Client(
            cfg.host,
            cfg.port,
            identifier=dev.id,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=aiomqtt.Will(offline.topic, offline.payload, qos=1, retain=True),
            clean_start=not self._had_session,
            properties=props,
            keepalive=cfg.keepalive_s,
            timeout=cfg.connect_timeout_s,
        )

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped first; True when the run should end."""
        if seconds > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop.wait(), seconds)
        return self.stop.is_set()
