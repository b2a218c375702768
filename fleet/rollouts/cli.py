"""``cityedge rollout start | status | pause | resume | abort``: staged rollouts through the fleet
API (``/api/rollouts``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from fleet.cli import DEFAULT_API, ApiOpt, TokenFileOpt, api_client

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def status_lines(rollout: Mapping[str, Any]) -> list[str]:
    lines = [
        f"rollout {rollout['id']}: {rollout['release']} on '{rollout['selector'] or 'all devices'}' "
        f"({rollout['planned']} devices) {rollout['state']}"
    ]
    if rollout.get("reason"):
        lines.append(f"  reason: {rollout['reason']}")
    for wave in rollout.get("waves", []):
        counts = ", ".join(f"{k} {v}" for k, v in sorted(wave["counts"].items()))
        lines.append(f"  wave {wave['wave'] + 1}: {wave['targeted']} targeted ({counts or 'no report'})")
        for why, count in (wave.get("reasons") or {}).items():
            lines.append(f"    {count} failed: {why}")
    return lines


def _call(api: str, token_file: Path | None, method: str, path: str, **kwargs: Any) -> Any:
    from fleet.client import FleetApiError

    with api_client(api, token_file) as client:
        try:
            return client._request(method, path, **kwargs)
        except FleetApiError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc


def _show(result: Any, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    for rollout in result if isinstance(result, list) else [result]:
        typer.echo("\n".join(status_lines(rollout)))


def register_rollout(app: typer.Typer) -> None:
    rollout = typer.Typer(help="Staged rollouts of a release over the fleet.", no_args_is_help=True)

    @rollout.command("start")
    def start(
        release: Annotated[str, typer.Option("--release", help="Release version to roll out.")],
        select: Annotated[str, typer.Option("--select", help="e.g. role=camera,site=hn-btl*")] = "",
        waves: Annotated[str, typer.Option("--waves", help="Cumulative wave sizes.")] = "1%,10%,50%,100%",
        max_failure: Annotated[str, typer.Option("--max-failure")] = "5%",
        min_executed: Annotated[int, typer.Option("--min-executed")] = 5,
        soak: Annotated[str, typer.Option("--soak", help="Wait after a wave settles.")] = "10m",
        deadline: Annotated[str, typer.Option("--deadline", help="No report within: failed.")] = "30m",
        as_json: JsonOpt = False,
        api: ApiOpt = DEFAULT_API,
        token_file: TokenFileOpt = None,
    ) -> None:
        """Start a staged rollout."""
        body = {
            "release": release,
            "select": select,
            "waves": waves,
            "max_failure": max_failure,
            "min_executed": min_executed,
            "soak": soak,
            "deadline": deadline,
        }
        _show(_call(api, token_file, "POST", "/api/rollouts", json=body), as_json)

    @rollout.command("status")
    def status(
        rollout_id: Annotated[str | None, typer.Argument(metavar="[ID]")] = None,
        as_json: JsonOpt = False,
        api: ApiOpt = DEFAULT_API,
        token_file: TokenFileOpt = None,
    ) -> None:
        """One rollout, or every rollout, with per-wave counts."""
        path = "/api/rollouts" if rollout_id is None else f"/api/rollouts/{rollout_id}"
        _show(_call(api, token_file, "GET", path), as_json)

    def _action(name: str) -> None:
        def run(
            rollout_id: Annotated[str, typer.Argument(metavar="ID")],
            as_json: JsonOpt = False,
            api: ApiOpt = DEFAULT_API,
            token_file: TokenFileOpt = None,
        ) -> None:
            _show(_call(api, token_file, "POST", f"/api/rollouts/{rollout_id}/{name}"), as_json)

        run.__doc__ = f"{name.capitalize()} a rollout."
        rollout.command(name)(run)

    for name in ("pause", "resume", "abort"):
        _action(name)
    app.add_typer(rollout, name="rollout")
