"""Counters of a simulator run, shared by all device links (one asyncio loop, no locking)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SimStats:
    devices: int
    started: float = field(default_factory=time.monotonic)
    connected: int = 0
    connected_peak: int = 0
    connects: int = 0
    reconnects: int = 0
    failed_attempts: int = 0
    commands_answered: int = 0
    handler_errors: int = 0
    desired_received: int = 0
    ota_offline: int = 0
    ramp_s: float | None = None
    last_error: str = ""
    load_started: float | None = None
    load_finished: float | None = None
    sent: Counter[str] = field(default_factory=Counter)
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

    def summary(self) -> dict[str, Any]:
        load_s = None
        if self.load_started is not None and self.load_finished is not None:
            load_s = round(self.load_finished - self.load_started, 3)
        return {
            "devices": self.devices,
            "connected": self.connected,
            "connected_peak": self.connected_peak,
            "ever_connected": len(self.ever_connected),
            "ramp_s": None if self.ramp_s is None else round(self.ramp_s, 3),
            "messages_sent": self.messages_sent,
            "sent_by_family": dict(sorted(self.sent.items())),
            "events_sent": self.sent["events"],
            "commands_answered": self.commands_answered,
            "connects": self.connects,
            "reconnects": self.reconnects,
            "failed_attempts": self.failed_attempts,
            "handler_errors": self.handler_errors,
            "desired_received": self.desired_received,
            "ota": dict(sorted(self.ota.items())),
            "ota_offline": self.ota_offline,
            "last_error": self.last_error or None,
            "load_s": load_s,
            "duration_s": round(time.monotonic() - self.started, 3),
        }
