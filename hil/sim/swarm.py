"""Many simulated devices on one asyncio loop: build them, ramp them up, stop them cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import random
import resource
import time
from collections.abc import Sequence
from typing import Any

from hil.sim.config import SimConfig, fleet_keys
from hil.sim.device import SimDevice
from hil.sim.link import DeviceLink
from hil.sim.scenario import Role
from hil.sim.stats import SimStats
from protocol.topics import Topics

ROLE_PREFIX: dict[Role, str] = {"kiosk": "kiosk", "camera": "cam"}


def device_ids(cfg: SimConfig) -> list[tuple[str, Role]]:
    """Ids and roles. By default kiosks and cameras alternate: kiosk-sim-0001, cam-sim-0001,
    kiosk-sim-0002...; with ``cfg.cameras`` set, that many cameras are spread evenly among the rest."""
    if cfg.cameras is None:
        roles: list[Role] = ["kiosk" if i % 2 == 0 else "camera" for i in range(cfg.devices)]
    else:
        cams, n = cfg.cameras, cfg.devices
        roles = ["camera" if (i + 1) * cams // n > i * cams // n else "kiosk" for i in range(n)]
    width = max(4, len(str(max(roles.count("kiosk"), roles.count("camera")))))
    numbers: dict[Role, int] = {"kiosk": 0, "camera": 0}
    out: list[tuple[str, Role]] = []
    for role in roles:
        numbers[role] += 1
        out.append((f"{ROLE_PREFIX[role]}-{cfg.id_prefix}-{numbers[role]:0{width}d}", role))
    return out


def build_devices(cfg: SimConfig, assigned: Sequence[tuple[str, Role]] | None = None) -> list[SimDevice]:
    """The devices of this process: ``assigned`` (a share of ``device_ids``), or all of them."""
    topics = Topics(cfg.prefix)
    trusted = None if cfg.trust is None else fleet_keys(cfg.trust)
    return [
        SimDevice(
            device_id,
            role,
            topics,
            random.Random(f"{cfg.seed}:{device_id}"),
            version=cfg.version,
            time_scale=cfg.time_scale,
            telemetry_interval_s=cfg.telemetry_interval_s,
            ota=cfg.ota,
            seed=cfg.seed,
            trusted=trusted,
        )
        for device_id, role in (device_ids(cfg) if assigned is None else assigned)
    ]


def raise_fd_limit() -> int:
    """Lift this process's soft limit on open files to the hard one (a device is a socket)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Simulator:
    """Runs ``cfg.devices`` devices (or an ``assigned`` share) until ``request_stop()`` or the duration."""

    def __init__(self, cfg: SimConfig, assigned: Sequence[tuple[str, Role]] | None = None) -> None:
        self.cfg = cfg
        self.devices = build_devices(cfg, assigned)
        self.stats = SimStats(devices=len(self.devices))
        self._stop = asyncio.Event()
        self._load_go = asyncio.Event()

    def request_stop(self) -> None:
        """Ask every device to say goodbye and disconnect (call from the loop's thread)."""
        self._stop.set()

    def snapshot(self) -> dict[str, Any]:
        return self.stats.snapshot()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def run(self) -> SimStats:
        cfg = self.cfg
        self.stats.started = time.monotonic()
        gate = asyncio.Semaphore(cfg.max_connecting)
        links = [DeviceLink(d, cfg, self.stats, gate, self._stop, self._load_go) for d in self.devices]
        tasks = [asyncio.ensure_future(link.run(i / cfg.ramp_rate)) for i, link in enumerate(links)]
        watcher = asyncio.ensure_future(self._watch_load(links))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), cfg.duration_s)
        self._stop.set()
        await asyncio.gather(*tasks)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        return self.stats

    async def _watch_load(self, links: list[DeviceLink]) -> None:
        """Start the load phase once all devices are connected; note when it is done."""
        await self.stats.all_connected.wait()
        if self.cfg.load_events == 0:
            return
        self.stats.load_started = time.monotonic()
        self._load_go.set()
        while any(link.load_left or link.outbox for link in links):
            await asyncio.sleep(0.05)
        self.stats.load_finished = time.monotonic()
