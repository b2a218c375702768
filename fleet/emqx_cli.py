"""``cityedge fleet emqx-config``: the EMQX nodes' ACL file and certificates from the city PKI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from protocol.topics import DEFAULT_PREFIX


def register_emqx(fleet_app: typer.Typer) -> None:
    """``cityedge fleet emqx-config``: the EMQX nodes' ACL file and certificates from the PKI."""

    @fleet_app.command("emqx-config")
    def emqx_config(
        pki_dir: Annotated[Path, typer.Option("--pki", help="PKI directory (made by `fleet pki init`).")],
        out: Annotated[Path, typer.Option(help="Directory for acl.conf and certs/ (deploy/emqx).")],
        hostname: Annotated[
            list[str], typer.Option(help="DNS name or IP of the broker in its certificate (repeat).")
        ],
        prefix: Annotated[str, typer.Option(help="Topic prefix of the contract.")] = DEFAULT_PREFIX,
    ) -> None:
        """Write the EMQX 5 ACL file of the city contract (services from the PKI, revoked identities
        denied) and the broker's certificates; then load them into the cluster (docs/deploy.md)."""
        from fleet.emqxconf import write_emqx_files
        from fleet.pki import CityPKI
        from fleet.pki_errors import PKIError

        try:
            services, revoked = write_emqx_files(CityPKI.load(pki_dir), out, hostname, prefix=prefix)
        except (PKIError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        typer.echo(f"{out}: acl.conf ({len(services)} service(s), {len(revoked)} revoked denied), certs/")
