"""Probes of the city-scale benchmark (bench/fleet_scale.py): status freshness, memory, the API.

Freshness: the bench sends a simulated device a ``restart`` command; the device answers with a
new boot id in a fresh online status whose ``ts`` is the moment of the change. The time from that
``ts`` until ``GET /api/devices/ID`` shows the new boot id is the API's freshness; the time until a
raw paho subscriber to the same status topic receives it is the baseline (the broker's part).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from hil.sim.config import parse_broker_url
from protocol.timefmt import format_ts, parse_ts, utc_now
from protocol.topics import Topics

POLL_S = 0.05


class Api:
    """The fleet REST API with a bearer token."""

    def __init__(self, base: str, token: str) -> None:
        self.client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def get(self, path: str, **params: Any) -> Any:
        resp = self.client.get(path, params=params)
        resp.raise_for_status()
        return resp.json()

    def online(self) -> int:
        """Devices the fleet shows online (the overview, summed over sites)."""
        return sum(int(site.get("online", 0)) for site in self.get("/api/overview")["sites"])

    def known(self, device: str) -> bool:
        """The fleet has the device in its registry (404 otherwise)."""
        return self.client.get(f"/api/devices/{device}").status_code == 200

    def stored_events(self) -> int:
        return int(self.get("/api/stats")["events"])

    def close(self) -> None:
        self.client.close()


@dataclass
class Freshness:
    api_s: list[float] = field(default_factory=list)
    raw_s: list[float] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)


class StatusProbe:
    """A paho client that sends ``restart`` commands and notes when new statuses arrive."""

    def __init__(self, broker_url: str, devices: list[str], topics: Topics) -> None:
        self.topics = topics
        self.arrived: dict[str, tuple[str, float]] = {}  # device -> (boot id, arrival wall time)
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        host, port = parse_broker_url(broker_url)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-probe", protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.connect(host, port, keepalive=60)
        self.client.loop_start()
        self.client.subscribe([(topics.status(d), 1) for d in devices])
        if not self._subscribed.wait(30):
            raise RuntimeError("the freshness probe could not subscribe to the statuses")

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        device = msg.topic.split("/")[-2]
        with self._lock:
            self.arrived[device] = (str(body.get("boot_id")), now - parse_ts(body["ts"]).timestamp())

    def raw_latency(self, device: str, old_boot: str) -> float | None:
        with self._lock:
            boot, latency = self.arrived.get(device, (old_boot, 0.0))
        return latency if boot != old_boot else None

    def restart(self, device: str) -> None:
        now = utc_now()
        cmd = {
            "id": uuid.uuid4().hex[:24],
            "name": "restart",
            "args": {},
            "issued_at": format_ts(now),
            "expires_at": format_ts(now + timedelta(minutes=5)),
            "nonce": uuid.uuid4().hex,
        }
        self.client.publish(self.topics.commands_req(device), json.dumps(cmd), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def freshness(api: Api, probe: StatusProbe, devices: list[str], batch: int, timeout: float) -> Freshness:
    """Restart ``devices`` ``batch`` at a time; time each new boot id to the API and to the probe."""
    out = Freshness()
    for start in range(0, len(devices), batch):
        group = [d for d in devices[start : start + batch] if api.known(d)]
        out.missed += [d for d in devices[start : start + batch] if d not in group]
        old = {d: str(api.get(f"/api/devices/{d}").get("boot_id")) for d in group}
        for device in group:
            probe.restart(device)
        pending = set(group)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for device in sorted(pending):
                row = api.get(f"/api/devices/{device}")
                if str(row.get("boot_id")) != old[device] and row.get("status"):
                    out.api_s.append(time.time() - parse_ts(row["status"]["ts"]).timestamp())
                    pending.discard(device)
            time.sleep(POLL_S)
        out.missed += sorted(pending)
        for device in group:
            raw = probe.raw_latency(device, old[device])
            if raw is not None:
                out.raw_s.append(raw)
    return out


def tree_rss(pid: int) -> int:
    """Resident memory of a process and its children, in bytes (0 once it is gone)."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


class RssSampler:
    """Peaks of the resident memory of named process trees, sampled once a second in a thread."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak: dict[str, int] = dict.fromkeys(pids, 0)
        self.last: dict[str, int] = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.sample()

    def sample(self) -> None:
        for name, pid in self.pids.items():
            rss = tree_rss(pid)
            if rss:
                self.last[name] = rss
                self.peak[name] = max(self.peak[name], rss)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
