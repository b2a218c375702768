"""A simulator run split over worker processes: one asyncio loop per process, stats merged.

One loop keeps about ``DEVICES_PER_PROC`` devices busy; a city (20,000 devices) needs several.
The parent computes every id (``device_ids``) and deals them round-robin to ``procs`` workers
(started with ``spawn``), so each has kiosks and cameras and ramps up at its share of the rate.
Each worker sends its ``SimStats.snapshot()`` over a pipe twice a second and a last one when it
has stopped; the parent merges them (``merge_snapshots``). ``request_stop`` sends each worker
SIGTERM, which makes it say goodbye (offline status) and disconnect like a single-process run.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from hil.sim.config import SimConfig
from hil.sim.scenario import Role
from hil.sim.stats import merge_snapshots
from hil.sim.swarm import Simulator, device_ids, raise_fd_limit

REPORT_EVERY_S = 0.5


def worker_config(cfg: SimConfig, procs: int) -> SimConfig:
    """A worker's settings: its share of the ramp rate and of the connections in flight."""
    return cfg.model_copy(
        update={
            "procs": 1,
            "ramp_rate": cfg.ramp_rate / procs,
            "max_connecting": max(1, cfg.max_connecting // procs),
        }
    )


def deal(cfg: SimConfig, procs: int) -> list[list[tuple[str, Role]]]:
    """Every device id, dealt round-robin to ``procs`` workers."""
    ids = device_ids(cfg)
    return [ids[p::procs] for p in range(procs)]


def worker_main(settings: dict[str, Any], assigned: list[tuple[str, Role]], conn: Connection) -> None:
    """Entry point of a worker process: run its devices, report, stop on SIGTERM or SIGINT."""
    # Ctrl-C reaches the whole process group: the parent turns it into SIGTERM for each worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    early_stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _sig, _frame: early_stop.set())
    raise_fd_limit()
    parent = os.getppid()
    cfg = SimConfig(**settings)

    async def body() -> dict[str, Any]:
        sim = Simulator(cfg, assigned)
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, sim.request_stop)
        if early_stop.is_set():
            sim.request_stop()
        reporter = asyncio.ensure_future(_report(sim, conn, parent))
        try:
            stats = await sim.run()
        finally:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
        return stats.snapshot()

    final = asyncio.run(body())
    with contextlib.suppress(OSError):
        conn.send(("final", final))
    conn.close()


async def _report(sim: Simulator, conn: Connection, parent: int) -> None:
    """Send the counters to the parent; stop the devices when the parent is gone (killed)."""
    while True:
        try:
            conn.send(("progress", sim.stats.snapshot()))
        except OSError:  # BrokenPipeError: nobody reads any more
            sim.request_stop()
            return
        if os.getppid() != parent:
            sim.request_stop()
            return
        await asyncio.sleep(REPORT_EVERY_S)


class ProcSwarm:
    """Runs ``cfg.devices`` devices in ``cfg.worker_procs`` processes; the parent only merges."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.procs = cfg.worker_procs
        self.started = time.monotonic()
        self._shares = deal(cfg, self.procs)
        self._snaps: list[dict[str, Any] | None] = [None] * self.procs
        self._final: list[bool] = [False] * self.procs
        self._workers: list[tuple[BaseProcess, Connection]] = []
        self._stop_sent = False
        self.failures: list[str] = []

    def snapshot(self) -> dict[str, Any]:
        """The merged counters of all workers (zeros for a worker that has not reported yet)."""
        snaps = [s for s in self._snaps if s is not None]
        merged = merge_snapshots(snaps, self.started)
        merged["devices"] = self.cfg.devices
        if len(snaps) < self.procs:
            merged["ramp_at"] = merged["load_started"] = merged["load_finished"] = None
        return merged

    def request_stop(self) -> None:
        """Ask every worker to say goodbye and disconnect (idempotent)."""
        if self._stop_sent:
            return
        self._stop_sent = True
        for proc, _conn in self._workers:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: the worker's devices say goodbye

    async def run(self) -> dict[str, Any]:
        """Start the workers, collect their reports until all have stopped; the merged snapshot."""
        ctx = multiprocessing.get_context("spawn")
        settings = worker_config(self.cfg, self.procs).model_dump()
        self.started = time.monotonic()
        for share in self._shares:
            parent_end, child_end = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=worker_main, args=(settings, share, child_end), daemon=True)
            proc.start()
            child_end.close()
            self._workers.append((proc, parent_end))
        try:
            while not all(self._final):
                self._collect()
                await asyncio.sleep(0.1)
        finally:
            self.request_stop()
            for worker, conn in self._workers:
                await asyncio.get_running_loop().run_in_executor(None, worker.join, 30.0)
                conn.close()
        return self.snapshot()

    def _collect(self) -> None:
        for index, (proc, conn) in enumerate(self._workers):
            if self._final[index]:
                continue
            try:
                while not self._final[index] and conn.poll():
                    kind, snap = conn.recv()
                    self._snaps[index] = snap
                    self._final[index] = kind == "final"
            except (EOFError, OSError):  # the worker is gone without its last report
                proc.join(5.0)
                self._final[index] = True
                self.failures.append(f"worker {index + 1} (pid {proc.pid}) ended with code {proc.exitcode}")
