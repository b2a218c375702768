"""The body of ``cityedge sim``: settings check, signals, progress display, JSON summary."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from hil.sim.config import SimConfig
from hil.sim.procs import ProcSwarm
from hil.sim.stats import summarize
from hil.sim.swarm import Simulator, raise_fd_limit

Snapshot = Callable[[], dict[str, Any]]


def _explain(exc: ValidationError) -> str:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"])
    return f"bad setting {field}: {first['msg']}"


def run_sim_command(settings: dict[str, Any], *, json_out: bool, quiet: bool) -> int:
    """Run the simulator; 0 when it stopped as asked, 1 when no device could connect or a worker
    process died, 2 on bad settings."""
    err = Console(stderr=True, soft_wrap=True)
    try:
        cfg = SimConfig(**settings)
    except ValidationError as exc:
        err.print(f"[red]cityedge sim: {_explain(exc)}[/red]")
        return 2
    raise_fd_limit()
    snap, failures = asyncio.run(_main(cfg, err, quiet))
    summary = {**summarize(snap), "procs": cfg.worker_procs}
    if json_out:
        sys.stdout.write(json.dumps(summary) + "\n")
        sys.stdout.flush()
    else:
        err.print(
            f"sim stopped: {summary['connected_peak']}/{cfg.devices} connected at peak, "
            f"{summary['messages_sent']} messages acknowledged by the broker "
            f"({summary['events_acked']} events, {summary['events_unacked']} left unacknowledged), "
            f"{summary['commands_answered']} commands answered"
        )
    for failure in failures:
        err.print(f"[red]cityedge sim: {failure}[/red]", highlight=False)
    if not summary["ever_connected"]:
        reason = summary["last_error"]
        err.print(f"[red]cityedge sim: no device could connect ({reason})[/red]", highlight=False)
        return 1
    return 1 if failures else 0


async def _main(cfg: SimConfig, err: Console, quiet: bool) -> tuple[dict[str, Any], list[str]]:
    """Run in this process, or over worker processes when there are many devices."""
    swarm: Simulator | ProcSwarm = Simulator(cfg) if cfg.worker_procs == 1 else ProcSwarm(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, swarm.request_stop)
    shown = asyncio.ensure_future(_show(cfg, swarm.snapshot, err, quiet))
    try:
        if isinstance(swarm, Simulator):
            return (await swarm.run()).snapshot(), []
        return await swarm.run(), swarm.failures
    finally:
        shown.cancel()
        await asyncio.gather(shown, return_exceptions=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _line(snap: dict[str, Any]) -> str:
    acked = sum(snap["sent"].values())
    line = (
        f"sim: {snap['connected']}/{snap['devices']} connected, {acked} messages acknowledged "
        f"({snap['sent'].get('events', 0)} events), {snap['commands_answered']} commands answered, "
        f"{snap['reconnects']} reconnects"
    )
    if snap["connected"] < snap["devices"] and snap["last_error"]:
        line += f" (retrying; last error: {snap['last_error']})"
    return line


def _load_line(cfg: SimConfig, snap: dict[str, Any]) -> str | None:
    if snap["load_started"] is None or snap["load_finished"] is None:
        return None
    n, took = cfg.load_events * cfg.devices, snap["load_finished"] - snap["load_started"]
    return f"sim: load done: {n} events in {took:.3f} s ({n / max(took, 1e-9):.0f} events/s)"


async def _show(cfg: SimConfig, snapshot: Snapshot, err: Console, quiet: bool) -> None:
    """A live bar on a terminal; otherwise a plain line on each change (for logs), at most every 2 s."""
    if quiet:
        return
    if err.is_terminal:
        await _show_bar(cfg, snapshot, err)
    last, last_at, load_said = "", 0.0, False
    while True:
        snap = snapshot()
        line = _line(snap)
        changed = line.split(",")[0] != last.split(",")[0] or ("retrying" in line) != ("retrying" in last)
        if changed or time.monotonic() - last_at > 30:
            err.print(line, highlight=False)
            last, last_at = line, time.monotonic()
        load = _load_line(cfg, snap)
        if load and not load_said:
            err.print(load, highlight=False)
            load_said = True
        await asyncio.sleep(0.5 if cfg.load_events and not load_said else 2.0)


async def _show_bar(cfg: SimConfig, snapshot: Snapshot, err: Console) -> None:
    with Progress(
        TextColumn("[bold]sim[/bold] connected"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("· {task.fields[info]}"),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("sim", total=cfg.devices, info="")
        load_said = False
        while True:
            snap = snapshot()
            info = (
                f"{sum(snap['sent'].values())} acked · {snap['sent'].get('events', 0)} events · "
                f"{snap['commands_answered']} cmds · {snap['reconnects']} reconnects"
            )
            bar.update(task, completed=snap["connected"], info=info)
            load = _load_line(cfg, snap)
            if load and not load_said:
                bar.console.print(load, highlight=False)
                load_said = True
            await asyncio.sleep(0.25)
