"""Simulator test helpers: the simulator on its own loop in a thread, and an MQTT observer."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleet.broker import MosquittoBroker
from hil.sim.config import SimConfig
from hil.sim.device import SimDevice
from hil.sim.stats import SimStats
from hil.sim.swarm import Simulator


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class SimThread:
    """A Simulator running on a private event loop in a background thread."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.sim: Simulator | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.result: SimStats | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="sim", daemon=True)

    def _main(self) -> None:
        async def body() -> None:
            self.loop = asyncio.get_running_loop()
            self.sim = Simulator(self.cfg)
            self._ready.set()
            self.result = await self.sim.run()

        asyncio.run(body())

    def start(self) -> SimThread:
        self._thread.start()
        assert self._ready.wait(10), "simulator did not start"
        return self

    @property
    def stats(self) -> SimStats:
        assert self.sim is not None
        return self.sim.stats

    @property
    def devices(self) -> list[SimDevice]:
        assert self.sim is not None
        return self.sim.devices

    def wait_connected(self, count: int | None = None, timeout: float = 30.0) -> None:
        want = self.cfg.devices if count is None else count
        wait_until(lambda: self.stats.connected >= want, timeout, f"{want} simulated devices connected")

    def stop(self, timeout: float = 30.0) -> SimStats:
        if self.loop is not None and self.sim is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.sim.request_stop)
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "simulator did not stop"
        assert self.result is not None
        return self.result


@dataclass(frozen=True)
class Seen:
    topic: str
    payload: bytes
    retain: bool
    at: float

    def json(self) -> dict[str, Any]:
        data = json.loads(self.payload)
        assert isinstance(data, dict)
        return data


class Observer:
    """A plain paho client that records everything under a topic filter and can publish."""

    def __init__(self, broker: MosquittoBroker, topic_filter: str, client_id: str = "observer") -> None:
        self.messages: list[Seen] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic_filter, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rc, p: self._subscribed.set()
        self.client.reconnect_delay_set(1, 2)
        self.client.connect(broker.config.host, broker.config.port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "observer could not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Seen(msg.topic, bytes(msg.payload), bool(msg.retain), time.monotonic()))

    def snapshot(self, contains: str = "") -> list[Seen]:
        with self._lock:
            return [m for m in self.messages if contains in m.topic]

    def wait_for(
        self, predicate: Callable[[list[Seen]], bool], contains: str, timeout: float, what: str
    ) -> list[Seen]:
        wait_until(lambda: predicate(self.snapshot(contains)), timeout, what)
        return self.snapshot(contains)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
