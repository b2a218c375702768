"""``cityedge fleet claim``: one-time claim tokens for technicians (create, list)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlencode

import typer

from protocol.timefmt import format_ts

if TYPE_CHECKING:  # the claim store imports SQLAlchemy: only when a claim command runs
    from fleet.claims import Claim

DataDir = Annotated[Path, typer.Option("--data-dir", help="Fleet data directory (claims.db lives there).")]
DEFAULT_DATA = Path("var/fleet")


def claims_db(data_dir: Path) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir / "claims.db"


def claim_uri(claim: Claim, fleet_url: str | None) -> str:
    """What the QR code holds: ``cityedge:claim?token=...&role=...&site=...[&fleet=URL]``."""
    assert claim.token is not None
    query = {"token": claim.token, "role": claim.role, "site": claim.site}
    if fleet_url:
        query["fleet"] = fleet_url
    return "cityedge:claim?" + urlencode(query)


def terminal_qr(text: str) -> str:
    import io

    try:
        import qrcode
    except ImportError:
        return "(no QR code: install the qrcode package, e.g. pip install 'cityedge[kiosk]')"

    qr = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_M)
    qr.add_data(text)
    out = io.StringIO()
    qr.print_ascii(out=out, invert=True)
    return out.getvalue()


def write_token_file(path: Path, token: str) -> None:
    """The token alone, mode 0600 (for ``cityedge provision enroll --claim @FILE``)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(token + "\n")


def register_claims(fleet_app: typer.Typer) -> None:
    """Add ``claim create|list`` to the ``fleet`` command group."""
    claim_app = typer.Typer(help="One-time claim tokens to enrol new devices.", no_args_is_help=True)

    @claim_app.command("create")
    def create_cmd(
        role: Annotated[str, typer.Option(help="kiosk or camera.")],
        site: Annotated[str, typer.Option(help="Site code, e.g. hn-btl.")],
        ttl: Annotated[str, typer.Option(help="Lifetime, e.g. 30m, 2h, 1d.")] = "30m",
        device_id: Annotated[
            str | None,
            typer.Option(help="Bind to one device id (to replace a unit; the old one is revoked)."),
        ] = None,
        qr: Annotated[
            bool, typer.Option("--qr", help="Also print a QR code for the technician's phone.")
        ] = False,
        out: Annotated[Path | None, typer.Option(help="Also write the token to this file (0600).")] = None,
        fleet_url: Annotated[str | None, typer.Option(help="Fleet URL to put in the QR code.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
        data_dir: DataDir = DEFAULT_DATA,
    ) -> None:
        """Create a claim token (shown once; only its hash is kept)."""
        from fleet.claims import DEFAULT_TTL, ClaimError, ClaimStore, parse_ttl

        try:
            store = ClaimStore.open(claims_db(data_dir))
            claim = store.create(role, site, parse_ttl(ttl) if ttl else DEFAULT_TTL, device_id)
        except ClaimError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        assert claim.token is not None
        if out is not None:
            write_token_file(out, claim.token)
        if as_json:
            doc = {
                "token": claim.token,
                "role": claim.role,
                "site": claim.site,
                "device_id": claim.device_id,
                "expires_at": format_ts(claim.expires_at),
                "uri": claim_uri(claim, fleet_url),
            }
            typer.echo(json.dumps(doc, indent=1))
            return
        typer.echo(claim.token)
        target = f"device {claim.device_id}" if claim.device_id else f"one {claim.role}"
        typer.echo(
            f"for {target} at site {claim.site}; usable once, until {format_ts(claim.expires_at)}", err=True
        )
        if qr:
            typer.echo(terminal_qr(claim_uri(claim, fleet_url)))

    @claim_app.command("list")
    def list_cmd(data_dir: DataDir = DEFAULT_DATA) -> None:
        """Claim tokens not used yet and not expired (the tokens themselves are not stored)."""
        from fleet.claims import ClaimStore

        for claim in ClaimStore.open(claims_db(data_dir)).pending():
            who = claim.device_id or "-"
            until = format_ts(claim.expires_at)
            typer.echo(f"{claim.token_hash[:12]}  {claim.role:7} {claim.site:12} {who:24} {until}")

    fleet_app.add_typer(claim_app, name="claim")
