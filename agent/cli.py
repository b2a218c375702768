"""``cityedge agent run|emit|status``: the daemon and two helpers for apps and technicians."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import typer

EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"cityedge agent: {message}", err=True)
    return typer.Exit(code)


def _flags(
    device_id: str | None, role: str | None, broker: str | None, data_dir: Path | None
) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    device: dict[str, Any] = {}
    if device_id is not None:
        device["id"] = device_id
    if role is not None:
        device["role"] = role
    if device:
        flags["device"] = device
    if broker is not None:
        flags["mqtt"] = {"broker": broker}
    if data_dir is not None:
        flags["data_dir"] = str(data_dir)
    return flags


def run(
    config: Path | None = typer.Option(None, "--config", "-c", help="Agent config file (TOML)."),
    device_id: str | None = typer.Option(None, "--device-id", help="Device id (overrides the file)."),
    role: str | None = typer.Option(None, "--role", help="kiosk, camera or generic."),
    broker: str | None = typer.Option(None, "--broker", help="mqtt://HOST:PORT or mqtts://HOST:PORT."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Outbox, state, socket and logs."),
) -> None:
    """Run the agent daemon (until SIGTERM / Ctrl-C)."""
    from agent.daemon import run_agent
    from agent.errors import AgentError

    try:
        code = run_agent(config, _flags(device_id, role, broker, data_dir))
    except AgentError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    except (OSError, sqlite3.Error) as exc:
        raise _fail(f"cannot start: {exc}", 1) from None
    raise typer.Exit(code)


def emit(
    data_dir: Path = typer.Option(..., "--data-dir", help="The agent's data directory."),
    kind: str = typer.Option(..., "--kind", help="Event kind, e.g. kiosk.session."),
    json_text: str = typer.Option(..., "--json", help="Event data, a JSON object."),
    sign: bool = typer.Option(False, "--sign", help="Sign the envelope with the device key."),
) -> None:
    """Store one event in the outbox; prints {"id","seq"} once it is durable."""
    from agent.errors import LocalApiError
    from agent.localapi import LocalApiClient

    try:
        data = json.loads(json_text)
    except ValueError as exc:
        raise _fail(f"--json is not valid JSON ({exc})", EXIT_USAGE) from None
    if not isinstance(data, dict):
        raise _fail(f"--json must be a JSON object, not {type(data).__name__}", EXIT_USAGE)
    try:
        result = LocalApiClient(data_dir).emit(kind, data, sign=sign)
    except LocalApiError as exc:
        raise _fail(str(exc), 1) from None
    typer.echo(json.dumps(result))


def status(
    data_dir: Path = typer.Option(..., "--data-dir", help="The agent's data directory."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Link state, outbox depth, seq and last error of the agent (exit 3 if it is not running)."""
    from agent.errors import LocalApiError
    from agent.localapi import LocalApiClient

    try:
        info = LocalApiClient(data_dir, timeout=5.0).status()
        running = True
    except LocalApiError as exc:
        info = {"running": False, "reason": str(exc), **offline_status(data_dir)}
        running = False
    if as_json:
        typer.echo(json.dumps(info, indent=2, sort_keys=True))
    else:
        typer.echo(_human(info, running))
    if not running:
        raise typer.Exit(EXIT_NOT_RUNNING)


def offline_status(data_dir: Path) -> dict[str, Any]:
    """What the outbox file says while the agent is not running."""
    db = data_dir / "outbox.db"
    if not db.exists():
        return {"outbox": None}
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            depth = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            meta = conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return {"outbox": None, "outbox_error": str(exc)}
    return {"outbox": {"depth": int(depth)}, "seq": int(meta[0]) if meta else 0}


def _human(info: dict[str, Any], running: bool) -> str:
    if not running:
        outbox = info.get("outbox") or {}
        return (
            f"agent: NOT RUNNING ({info.get('reason')})\n"
            f"outbox: {outbox.get('depth', '?')} events waiting, last seq {info.get('seq', '?')}"
        )
    link, outbox = info["link"], info["outbox"]
    state = "connected" if link["connected"] else "DISCONNECTED"
    return "\n".join(
        [
            f"agent: running  device {info['device']} ({info['role']})  version {info['version']}",
            f"link: {state} to {link['broker']} since {link['since']}",
            f"outbox: {outbox['depth']} events ({outbox['bytes']} bytes) waiting, "
            f"{outbox['inflight']} in flight, {outbox['evidence']} evidence, {outbox['evicted']} evicted",
            f"seq: {info['seq']}  config version: {info['config_version']}",
            f"bad messages: {info['bad_messages']}  last error: {info['last_error'] or '-'}",
        ]
    )


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="agent",
        help="The device agent: run it, emit events, check its status.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    app.command("run")(run)
    app.command("emit")(emit)
    app.command("status")(status)
    from agent.ota.cli import register as register_ota

    register_ota(app)
    return app


def register(app: typer.Typer) -> None:
    app.add_typer(build_app(), name="agent")


def main() -> None:
    build_app()(prog_name="cityedge agent")
