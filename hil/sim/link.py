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
import random
from collections import deque

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.link import backoff_delay
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
    """Capped exponential backoff with full jitter (``agent.link.backoff_delay``, as the agent)."""

    def __init__(self, low: float, high: float, rng: random.Random) -> None:
        self.low, self.high, self.rng, self.attempt = low, high, rng, 0

    def next(self) -> float:
        """Next delay: uniform in [0, min(high, low * 2**attempt)], at least 50 ms."""
        delay = backoff_delay(self.attempt, self.low, self.high, self.rng)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


class WentOffline(Exception):
    """The device drops off the network for ``seconds`` (mid-update) and comes back after."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"offline for {seconds:.1f} s")
        self.seconds = seconds


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
        self._backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s, device.rng)
        self._ota_wake = asyncio.Event()
        t = device.topics
        self._cmd_topic = t.commands_req(device.id)
        self._desired_topic = t.shadow_desired(device.id)

    async def run(self, start_delay: float = 0.0) -> None:
        try:
            if not await self._sleep(start_delay):
                await self._keep_connected()
        finally:
            self.stats.events_unacked += len(self.outbox)

    async def _keep_connected(self) -> None:
        """Connect, and after every failed attempt or lost connection wait (backoff) and retry."""
        while not self.stop.is_set():
            client = self._client()
            try:
                async with self.gate:
                    if self.stop.is_set():
                        return
                    await client.__aenter__()
            except aiomqtt.MqttError as exc:
                self._connect_failed(exc)
                await self._abandon(client)
                if await self._sleep(self._backoff.next()):
                    return
                continue
            await self._connected(client)

    def _connect_failed(self, exc: aiomqtt.MqttError) -> None:
        self.stats.failed_attempts += 1
        if "timed out" in str(exc):
            self.stats.connect_timeouts += 1
        self.stats.last_error = f"cannot connect to {self.cfg.broker}: {exc}"

    async def _abandon(self, client: aiomqtt.Client) -> None:
        """Release a connection the broker never acknowledged (no CONNACK in time).

        aiomqtt leaves its socket open and watched by the loop: closed at random later, that
        descriptor number is reused by another device's socket ("Bad file descriptor").
        """
        paho = client._client
        if paho.socket() is None:
            return
        with contextlib.suppress(aiomqtt.MqttError, asyncio.TimeoutError):
            await asyncio.wait_for(client.__aexit__(None, None, None), GOODBYE_TIMEOUT_S)
        _drop_socket(client)

    async def _connected(self, client: aiomqtt.Client) -> None:
        if self._had_session:
            self.stats.reconnects += 1
        self._had_session = True
        counted = False
        away: float | None = None
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
        except WentOffline as exc:
            away = exc.seconds
            self.stats.ota_offline += 1
        finally:
            if counted:
                self.stats.on_disconnected()
            await self._close(client, goodbye=away is not None)
        if not self.stop.is_set():
            await self._sleep(self._backoff.next() if away is None else away)

    async def _close(self, client: aiomqtt.Client, goodbye: bool = False) -> None:
        """Say goodbye (offline status, as the last will would) when stopping or dropping off;
        release the connection either way."""
        with contextlib.suppress(aiomqtt.MqttError, asyncio.TimeoutError):
            if self.stop.is_set() or goodbye:
                await self._send(client, self.device.status(False), GOODBYE_TIMEOUT_S)
            await asyncio.wait_for(client.__aexit__(None, None, None), GOODBYE_TIMEOUT_S)
        _drop_socket(client)

    async def _session(self, client: aiomqtt.Client) -> None:
        """Run receive, telemetry/events and load side by side until stop or a lost connection."""
        stopped = asyncio.ensure_future(self.stop.wait())
        receive = asyncio.ensure_future(self._receive(client))
        pending = {stopped, receive, asyncio.ensure_future(self._activity(client))}
        pending.add(asyncio.ensure_future(self._updates(client)))
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
            # On stop, let an event in flight get its PUBACK first: cancelled after the broker took
            # it, it would be stored by the fleet but never counted as acknowledged.
            drained = self.stop.is_set() and await self._hold_flush()
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if drained:
                try:  # a clean stop sends what the device made before it says goodbye
                    with contextlib.suppress(aiomqtt.MqttError, asyncio.TimeoutError):
                        await asyncio.wait_for(self._send_queued(client), GOODBYE_TIMEOUT_S)
                finally:
                    self._flush_lock.release()

    async def _hold_flush(self) -> bool:
        """Take the outbox lock (no event in flight then) unless that takes longer than a goodbye."""
        try:
            await asyncio.wait_for(self._flush_lock.acquire(), GOODBYE_TIMEOUT_S)
        except asyncio.TimeoutError:
            return False
        return True

    async def _send(self, client: aiomqtt.Client, out: Outgoing, timeout: float = NO_TIMEOUT) -> None:
        """Publish and return once the broker has it (QoS 1: its PUBACK); only then is it counted sent."""
        self.stats.published[out.family] += 1
        await client.publish(out.topic, out.payload, out.qos, out.retain, timeout=timeout)
        self.stats.sent[out.family] += 1

    async def _flush(self, client: aiomqtt.Client) -> None:
        """Send queued events in order; each leaves the outbox only once acknowledged."""
        async with self._flush_lock:
            await self._send_queued(client)

    async def _send_queued(self, client: aiomqtt.Client) -> None:
        """The outbox, in order (the caller holds ``_flush_lock``)."""
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

    async def _updates(self, client: aiomqtt.Client) -> None:
        """Take the steps of an update in progress when they are due (woken by a new desired
        state or command); raises WentOffline when the device drops off mid-update."""
        device = self.device
        while True:
            wait = device.ota_next_in()
            if wait is None or wait > 0:
                self._ota_wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._ota_wake.wait(), wait)
                continue
            outs, away = device.ota_due()
            self._queue(outs)
            await self._flush(client)
            if away is not None:
                raise WentOffline(away)

    def _queue(self, outs: list[Outgoing]) -> None:
        for out in outs:
            if out.family == "events" and "/events/ota." in out.topic:
                self.stats.ota[out.topic.rsplit("/", 1)[1]] += 1
        self.outbox.extend(outs)

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
                if out.family == "events":  # update events go through the outbox, in order
                    self._queue([out])
                    continue
                await self._send(client, out)
                if out.family == "commands":
                    self.stats.commands_answered += 1
            if self.outbox:
                await self._flush(client)
            if topic == self._desired_topic:
                self.stats.desired_received += 1
            self._ota_wake.set()

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


def _drop_socket(client: aiomqtt.Client) -> None:
    """Close the client's socket if a goodbye did not (timed out): paho first tells the loop to
    stop watching it, so its descriptor number can be reused safely."""
    paho = client._client
    if paho.socket() is not None:
        paho._sock_close()
