"""``cityedge fleet keys``: create the fleet root and rotate the fleet command keys.

The root private key lives offline (a USB stick in a safe); it is only read by ``init`` (which
creates it) and ``rotate`` (which signs a new key list with it). Devices take the new list from
the next desired state (``trust`` member) and from then on trust only the keys it names.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from fleet.signer import (
    ACTIVE,
    KEY_LIST,
    ROOT_PUBLIC,
    KeyRingError,
    command_key_path,
    keys_dir,
    load_keyring,
    read_private_key,
    write_json,
    write_private_key,
)
from protocol.timefmt import format_ts, utc_now
from protocol.trust import (
    FleetKey,
    RootKey,
    build_key_list,
    key_id,
    parse_key_list,
    sign_key_list,
)

DataDir = Annotated[Path, typer.Option("--data-dir", help="Fleet data directory.")]
KEY_DAYS = 400
LIST_DAYS = 365


def _new_command_key(directory: Path, now: datetime, key_days: int) -> FleetKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    kid = key_id("fleet", key.public_key())
    write_private_key(command_key_path(directory, kid), key)
    return FleetKey(kid, key.public_key(), now + timedelta(days=key_days))


def init_keys(
    fleet_data_dir: Path, root_out: Path, *, key_days: int = KEY_DAYS, list_days: int = LIST_DAYS
) -> dict[str, Any]:
    """Create the root key (written only to ``root_out``), a first command key and list version 1."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory = keys_dir(fleet_data_dir)
    if (directory / KEY_LIST).exists():
        raise KeyRingError(f"{directory} already has a key ring; use `cityedge fleet keys rotate`")
    now = utc_now()
    root = Ed25519PrivateKey.generate()
    write_private_key(Path(root_out), root)
    write_json(directory / ROOT_PUBLIC, RootKey.from_private(root).to_dict())
    first = _new_command_key(directory, now, key_days)
    signed = sign_key_list(build_key_list(1, now + timedelta(days=list_days), [first]), root)
    write_json(directory / KEY_LIST, signed)
    (directory / ACTIVE).write_text(first.kid + "\n", encoding="utf-8")
    return signed


def rotate_keys(
    fleet_data_dir: Path,
    root_key: Path,
    *,
    retire_old: bool = False,
    overlap: timedelta = timedelta(days=1),
    key_days: int = KEY_DAYS,
    list_days: int = LIST_DAYS,
) -> dict[str, Any]:
    """New command key + key list (version + 1) signed by the root; the new key signs from now on.

    Old keys stay listed until ``now + overlap`` (commands already in flight still verify),
    or are dropped at once with ``retire_old`` (a key that may have been stolen).
    """
    ring = load_keyring(fleet_data_dir)
    root = read_private_key(Path(root_key))
    if RootKey.from_private(root).kid != ring.root.kid:
        raise KeyRingError(f"{root_key} is not the fleet root key {ring.root.kid}")
    now = utc_now()
    current = parse_key_list(ring.key_list)
    directory = keys_dir(fleet_data_dir)
    new = _new_command_key(directory, now, key_days)
    kept: list[FleetKey] = []
    if not retire_old:
        until = now + overlap
        for key in current.keys:
            if key.not_after is None or key.not_after > now:
                end = until if key.not_after is None else min(key.not_after, until)
                kept.append(FleetKey(key.kid, key.public_key, end))
    document = build_key_list(current.version + 1, now + timedelta(days=list_days), [new, *kept])
    signed = sign_key_list(document, root)
    write_json(directory / KEY_LIST, signed)
    (directory / ACTIVE).write_text(new.kid + "\n", encoding="utf-8")
    return signed


def _summary(signed: dict[str, Any]) -> str:
    keys = ", ".join(f"{k['kid']} (until {k['not_after']})" for k in signed["keys"])
    return f"key list version {signed['version']} (expires {signed['expires_at']}): {keys}"


def register_keys(fleet_app: typer.Typer) -> None:
    """Add ``keys init|rotate|show`` to the ``fleet`` command group."""
    keys = typer.Typer(help="Fleet command-signing keys and the offline root key.", no_args_is_help=True)

    @keys.command("init")
    def init_cmd(
        root_out: Annotated[Path, typer.Option("--root-out", help="Where to write the root private key.")],
        data_dir: DataDir = Path("var/fleet"),
    ) -> None:
        """Create the fleet root key and the first command key (once per city)."""
        try:
            signed = init_keys(data_dir, root_out)
        except (KeyRingError, FileExistsError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        typer.echo(_summary(signed))
        typer.echo(f"root private key written to {root_out}: move it offline now.")

    @keys.command("rotate")
    def rotate_cmd(
        root_key: Annotated[Path, typer.Option("--root-key", help="The offline root private key (PEM).")],
        data_dir: DataDir = Path("var/fleet"),
        retire_old: Annotated[
            bool, typer.Option("--retire-old", help="Drop the old keys at once (suspected theft).")
        ] = False,
        overlap_hours: Annotated[float, typer.Option(help="Hours the old keys stay valid.")] = 24.0,
    ) -> None:
        """Make a new command key and a new root-signed key list; restart the fleet to use it."""
        try:
            signed = rotate_keys(
                data_dir, root_key, retire_old=retire_old, overlap=timedelta(hours=overlap_hours)
            )
        except KeyRingError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        typer.echo(_summary(signed))
        typer.echo("restart the fleet service; devices take the list with their next desired state.")

    @keys.command("show")
    def show_cmd(
        data_dir: DataDir = Path("var/fleet"), as_json: bool = typer.Option(False, "--json")
    ) -> None:
        """Show the current key list and the active signing key."""
        try:
            ring = load_keyring(data_dir)
        except KeyRingError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        if as_json:
            typer.echo(json.dumps({"active_kid": ring.active_kid, "key_list": ring.key_list}, indent=1))
        else:
            typer.echo(_summary(ring.key_list))
            typer.echo(f"active signing key: {ring.active_kid}; checked at {format_ts(utc_now())}")

    fleet_app.add_typer(keys, name="keys")
