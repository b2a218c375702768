"""``cityedge fleet set-release | clear-release | desired``: a device's desired release, through the
fleet API (``fleet.client``), like ``cityedge fleet command``."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from fleet.cli import DEFAULT_API, ApiOpt, TokenFileOpt, api_client

DevicesArg = Annotated[list[str], typer.Argument(help="Device id(s).", metavar="DEVICE")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def release_text(release: Mapping[str, Any] | None) -> str:
    """``1.1.0 (releases/1.1.0/manifest.json, downgrade allowed)``, or ``none (stay)``."""
    if not release:
        return "none (stay on the running version)"
    notes = [str(release.get("target", ""))]
    if release.get("allow_downgrade"):
        notes.append("downgrade allowed")
    if release.get("force"):
        notes.append("forced: ignores update lock and install windows")
    return f"{release.get('version')} ({', '.join(n for n in notes if n)})"


def desired_lines(view: Mapping[str, Any]) -> list[str]:
    """The text of ``cityedge fleet desired``: desired release beside what the device runs."""
    desired = view.get("desired") or {}
    sig = desired.get("sig") or {}
    ota = view.get("ota") or {}
    applied = view.get("applied_version")
    rows = [
        ("device", view.get("device")),
        ("running version", view.get("running_version") or "unknown"),
        ("desired release", release_text(desired.get("release")) if desired else "no desired state set"),
    ]
    if desired:
        applied_text = "not reported" if applied is None else str(applied)
        rows.append(("desired version", f"{desired.get('version')} (device applied: {applied_text})"))
        signed = f"by {sig.get('kid')}" if sig else "unsigned"
        if desired.get("expires_at"):
            signed += f", expires {desired['expires_at']}"
        rows.append(("signature", signed))
    rows.append(("ota", f"{ota.get('label')} ({ota.get('ts')})" if ota else "no update reported"))
    return [f"{name:<16} {value}" for name, value in rows]


def _each(
    devices: list[str], api: str, call: Callable[[Any, str], dict[str, Any]], token_file: Path | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    from fleet.client import FleetApiError

    done: dict[str, Any] = {}
    failed: dict[str, str] = {}
    with api_client(api, token_file) as client:
        for device in devices:
            try:
                done[device] = call(client, device)
            except FleetApiError as exc:
                failed[device] = str(exc)
    return done, failed


def _report(done: dict[str, Any], failed: dict[str, str], as_json: bool) -> None:
    if as_json:
        out = [{"device": d, "desired": doc} for d, doc in done.items()]
        out += [{"device": d, "error": why} for d, why in failed.items()]
        typer.echo(json.dumps(out, indent=2))
    else:
        for device, doc in done.items():
            typer.echo(
                f"{device}: desired version {doc['version']}, release {release_text(doc.get('release'))}"
            )
        for device, why in failed.items():
            typer.echo(f"{device}: not changed: {why}", err=True)
    if failed:
        raise typer.Exit(1)


def set_release_cmd(
    devices: DevicesArg,
    version: Annotated[str, typer.Option("--version", help="Release version to run, e.g. 1.4.2.")],
    target: Annotated[
        str | None, typer.Option(help="TUF target of the manifest (default releases/VERSION/manifest.json).")
    ] = None,
    allow_downgrade: Annotated[
        bool, typer.Option("--allow-downgrade", help="Install even if a device runs a newer version.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Ignore the devices' update locks and install windows.")
    ] = False,
    as_json: JsonOpt = False,
    api: ApiOpt = DEFAULT_API,
    token_file: TokenFileOpt = None,
) -> None:
    """Set the release devices must run (signed desired state, published retained).

    Exit 1 if any device could not be set (the others are set)."""
    done, failed = _each(
        devices,
        api,
        lambda client, device: client.set_release(
            device, version, target=target, allow_downgrade=allow_downgrade, force=force
        ),
        token_file,
    )
    _report(done, failed, as_json)


def clear_release_cmd(
    devices: DevicesArg, as_json: JsonOpt = False, api: ApiOpt = DEFAULT_API, token_file: TokenFileOpt = None
) -> None:
    """Clear the desired release (devices stay on what they run). Exit 1 if any failed."""
    done, failed = _each(devices, api, lambda client, device: client.clear_release(device), token_file)
    _report(done, failed, as_json)


def desired_cmd(
    device: Annotated[str, typer.Argument(help="Device id.")],
    as_json: JsonOpt = False,
    api: ApiOpt = DEFAULT_API,
    token_file: TokenFileOpt = None,
) -> None:
    """Show a device's desired release beside the version it runs, and its latest OTA progress."""
    from fleet.client import FleetApiError

    try:
        with api_client(api, token_file) as client:
            view = client.desired(device)
    except FleetApiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps(view, indent=2))
    else:
        typer.echo("\n".join(desired_lines(view)))


def register_desired(fleet: typer.Typer) -> None:
    fleet.command("set-release")(set_release_cmd)
    fleet.command("clear-release")(clear_release_cmd)
    fleet.command("desired")(desired_cmd)
