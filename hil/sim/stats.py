"""Counters of a simulator run, shared by all device links (one asyncio loop, no locking).

``sent`` counts what the broker took: a QoS 1 message (events, status, shadow, command answers)
once its PUBACK is in, a QoS 0 message (telemetry) once it is written to the socket. ``published``
counts every publication handed to the client, re-sends after a lost connection included. An event
made by a device is either acknowledged (``sent["events"]``) or still in its outbox when the run
ends (``events_unacked``), so "events acknowledged" and "events stored by the fleet" compare
exactly.

A run split over several processes (``hil.sim.procs``) merges the workers' ``snapshot()`` dicts
with ``merge_snapshots``; ``summarize`` turns either into the printed summary.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

SUMMED = (
    "devices",
    "connected",
    "connected_peak",
    "connects",
    "reconnects",
    "failed_attempts",
    "connect_timeouts",
    "commands_answered",
    "handler_errors",
    "ever_connected",
    "events_unacked",
    "desired_received",
    "ota_offline",
)
"""Snapshot fields that add up over worker processes (the peak is the sum of the workers' peaks)."""


@dataclass
class SimStats:
    devices: int
    started: float = field(default_factory=time.monotonic)
    connected: int = 0
    connected_peak: int = 0
    connects: int = 0
    reconnects: int = 0
    failed_attempts: int = 0
    connect_timeouts: int = 0
    commands_answered: int = 0
    handler_errors: int = 0
    events_unacked: int = 0
    desired_received: int = 0
    ota_offline: int = 0
    ramp_s: float | None = None
    last_error: str = ""
    load_started: float | None = None
    load_finished: float | None = None
    sent: Counter[str] = field(default_factory=Counter)
    published: Counter[str] = field(default_factory=Counter)
    ota: Counter[str] = field(default_factory=Counter)
    ever_connected: set[str] = field(default_factory=set)
    all_connected: asyncio.Event = field(default_factory=asyncio.Event)

    def on_connected(self, device_id: str) -> None:
        self.connected += 1
        self.connects += 1
        self.connected_peak = max(self.connected_peak, self.connected)
        self.ever_connected.add(device_id)
        if self.ramp_s is None and len(self.ever_connected) == self.devices:
            self.ramp_s = time.monotonic() - self.started
            self.all_connected.set()

    def on_disconnected(self) -> None:
        self.connected -= 1

    @property
    def messages_sent(self) -> int:
        return sum(self.sent.values())

    def snapshot(self) -> dict[str, Any]:
        """Plain values (picklable, JSON-able); times are ``time.monotonic()`` readings."""
        snap: dict[str, Any] = {name: getattr(self, name) for name in SUMMED}
        snap.update(
            ever_connected=len(self.ever_connected),
            started=self.started,
            ramp_at=None if self.ramp_s is None else self.started + self.ramp_s,
            load_started=self.load_started,
            load_finished=self.load_finished,
            last_error=self.last_error,
            sent=dict(self.sent),
            published=dict(self.published),
            ota=dict(self.ota),
        )
        return snap

    def summary(self) -> dict[str, Any]:
        return summarize(self.snapshot())


def merge_snapshots(snaps: Iterable[dict[str, Any]], started: float) -> dict[str, Any]:
    """One snapshot for a run split over processes; ``started`` is when the whole run began."""
    parts = list(snaps)
    merged: dict[str, Any] = {name: sum(int(s[name]) for s in parts) for name in SUMMED}
    sent: Counter[str] = Counter()
    published: Counter[str] = Counter()
    ota: Counter[str] = Counter()
    for s in parts:
        sent.update(s["sent"])
        published.update(s["published"])
        ota.update(s["ota"])
    ramps = [s["ramp_at"] for s in parts]
    load_starts = [s["load_started"] for s in parts]
    load_ends = [s["load_finished"] for s in parts]
    merged.update(
        started=started,
        ramp_at=max(ramps) if parts and None not in ramps else None,
        load_started=min(load_starts) if parts and None not in load_starts else None,
        load_finished=max(load_ends) if parts and None not in load_ends else None,
        last_error=next((s["last_error"] for s in parts if s["last_error"]), ""),
        sent=dict(sent),
        published=dict(published),
        ota=dict(ota),
    )
    return merged


def summarize(snap: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """The run summary printed by ``cityedge sim --json``."""
    now = time.monotonic() if now is None else now
    sent: dict[str, int] = snap["sent"]
    load_s = None
    if snap["load_started"] is not None and snap["load_finished"] is not None:
        load_s = round(snap["load_finished"] - snap["load_started"], 3)
    acked = sent.get("events", 0)
    resent = sum(snap["published"].values()) - sum(sent.values())
    return {
        "devices": snap["devices"],
        "connected": snap["connected"],
        "connected_peak": snap["connected_peak"],
        "ever_connected": snap["ever_connected"],
        "ramp_s": None if snap["ramp_at"] is None else round(snap["ramp_at"] - snap["started"], 3),
        "messages_sent": sum(sent.values()),
        "sent_by_family": dict(sorted(sent.items())),
        "events_sent": acked,
        "events_acked": acked,
        "events_unacked": snap["events_unacked"],
        "events_made": acked + snap["events_unacked"],
        "publishes_not_acked": max(0, resent),
        "commands_answered": snap["commands_answered"],
        "connects": snap["connects"],
        "reconnects": snap["reconnects"],
        "failed_attempts": snap["failed_attempts"],
        "connect_timeouts": snap["connect_timeouts"],
        "handler_errors": snap["handler_errors"],
        "desired_received": snap["desired_received"],
        "ota": dict(sorted(snap["ota"].items())),
        "ota_offline": snap["ota_offline"],
        "last_error": snap["last_error"] or None,
        "load_s": load_s,
        "duration_s": round(now - snap["started"], 3),
    }
