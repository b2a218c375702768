"""Rich tables for the fleet CLI clients."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from rich.console import Console
from rich.table import Table

from protocol.timefmt import parse_ts


def _ago(text: str | None) -> str:
    if not text:
        return "never"
    try:
        seconds = int((datetime.now(timezone.utc) - parse_ts(text)).total_seconds())
    except ValueError:
        return text
    for size, unit in ((86_400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{max(seconds, 0)} s ago"


def _num(telemetry: dict[str, Any] | None, key: str, unit: str) -> str:
    value = (telemetry or {}).get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return f"{value:.0f}{unit}" if unit == "%" else f"{value:.1f}{unit}"


def devices_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(rows)} device(s)")
    widest = max((len(r["id"]) for r in rows), default=6)
    table.add_column("device", no_wrap=True, min_width=widest)  # an id must never be cut
    for column in ("status", "role", "version", "last seen", "cpu", "mem", "temp"):
        table.add_column(column, justify="right" if column in ("cpu", "mem", "temp") else "left")
    for row in rows:
        telemetry = row.get("telemetry")
        table.add_row(
            row["id"],
            "[bold red]revoked[/bold red]"
            if row.get("revoked")
            else "[green]online[/green]"
            if row.get("online")
            else "[yellow]silent[/yellow]"
            if row.get("state") == "silent"
            else "[red]offline[/red]",
            row.get("role") or "-",
            row.get("version") or "-",
            _ago(row.get("last_seen")),
            _num(telemetry, "cpu_pct", "%"),
            _num(telemetry, "mem_pct", "%"),
            _num(telemetry, "temp_c", " °C"),
        )
    return table


def alerts_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(rows)} alert(s)")
    widest = max((len(r["device"]) for r in rows), default=6)
    table.add_column("id", justify="right", no_wrap=True)
    table.add_column("device", no_wrap=True, min_width=widest)
    for column in ("kind", "severity", "what", "since", "state", "acknowledged"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row["id"]),
            row["device"],
            row["kind"],
            "[red]critical[/red]" if row["severity"] == "critical" else "[yellow]warning[/yellow]",
            row["summary"],
            _ago(row.get("started_at")),
            "resolved" if row.get("resolved_at") else "[bold]open[/bold]",
            f"{row['acked_by']}: {row.get('ack_note') or ''}" if row.get("acked_by") else "-",
        )
    return table


def _clock(text: str) -> str:
    try:
        return parse_ts(text).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return text


def events_table(device: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{device}: {len(rows)} latest event(s)")
    table.add_column("seq", justify="right", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("time (UTC)", no_wrap=True)
    table.add_column("signed", no_wrap=True)
    table.add_column("id", overflow="fold")
    for row in rows:
        table.add_row(
            str(row["seq"]), row["kind"], _clock(str(row["ts"])), "yes" if row.get("sig") else "-", row["id"]
        )
    return table


def print_table(table: Table) -> None:
    Console(soft_wrap=True).print(table)
