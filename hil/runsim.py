"""The body of ``cityedge sim``: settings check, signals, progress display, JSON summary."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from hil.sim.config import SimConfig
from hil.sim.stats import SimStats
from hil.sim.swarm import Simulator


def _explain(exc: ValidationError) -> str:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"])
    return f"bad setting {field}: {first['msg']}"


def run_sim_command(settings: dict[str, Any], *, json_out: bool, quiet: bool) -> int:
    """Run the simulator; 0 when it stopped as asked, 1 when no device could connect, 2 on bad settings."""
    err = Console(stderr=True, soft_wrap=True)
    try:
        cfg = SimConfig(**settings)
    except ValidationError as exc:
        err.print(f"[red]cityedge sim: {_explain(exc)}[/red]")
        return 2
    stats = asyncio.run(_main(cfg, err, quiet))
    summary = stats.summary()
    if json_out:
        sys.stdout.write(json.dumps(summary) + "\n")
        sys.stdout.flush()
    else:
        err.print(
            f"sim stopped: {summary['connected_peak']}/{cfg.devices} connected at peak, "
            f"{summary['messages_sent']} messages sent, {summary['commands_answered']} commands answered"
        )
    if not summary["ever_connected"]:
        reason = summary["last_error"]
        err.print(f"[red]cityedge sim: no device could connect ({reason})[/red]", highlight=False)
        return 1
    return 0


async def _main(cfg: SimConfig, err: Console, quiet: bool) -> SimStats:
    sim = Simulator(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, sim.request_stop)
    shown = asyncio.ensure_future(_show(sim, err, quiet))
    try:
        return await sim.run()
    finally:
        shown.cancel()
        await asyncio.gather(shown, return_exceptions=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _line(sim: Simulator) -> str:
    s = sim.stats
    line = (
        f"sim: {s.connected}/{s.devices} connected, {s.messages_sent} messages sent, "
        f"{s.commands_answered} commands answered, {s.reconnects} reconnects"
    )
    if s.connected < s.devices and s.last_error:
        line += f" (retrying; last error: {s.last_error})"
    return line


def _load_line(sim: Simulator) -> str | None:
    s = sim.stats
    if s.load_started is None or s.load_finished is None:
        return None
    n, took = sim.cfg.load_events * sim.cfg.devices, s.load_finished - s.load_started
    return f"sim: load done: {n} events in {took:.3f} s ({n / max(took, 1e-9):.0f} events/s)"


async def _show(sim: Simulator, err: Console, quiet: bool) -> None:
    """A live bar on a terminal; otherwise a plain line on each change (for logs), at most every 2 s."""
    if quiet:
        return
    if err.is_terminal:
        await _show_bar(sim, err)
    last, last_at, load_said = "", 0.0, False
    while True:
        line = _line(sim)
        changed = line.split(",")[0] != last.split(",")[0] or ("retrying" in line) != ("retrying" in last)
        if changed or time.monotonic() - last_at > 30:
            err.print(line, highlight=False)
            last, last_at = line, time.monotonic()
        load = _load_line(sim)
        if load and not load_said:
            err.print(load, highlight=False)
            load_said = True
        await asyncio.sleep(0.5 if sim.cfg.load_events and not load_said else 2.0)


async def _show_bar(sim: Simulator, err: Console) -> None:
    with Progress(
        TextColumn("[bold]sim[/bold] connected"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("· {task.fields[info]}"),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("sim", total=sim.cfg.devices, info="")
        load_said = False
        while True:
            s = sim.stats
            info = f"{s.messages_sent} msgs · {s.commands_answered} cmds · {s.reconnects} reconnects"
            bar.update(task, completed=s.connected, info=info)
            load = _load_line(sim)
            if load and not load_said:
                bar.console.print(load, highlight=False)
                load_said = True
            await asyncio.sleep(0.25)
