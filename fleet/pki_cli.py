"""``cityedge fleet pki ...``, ``fleet revoke``, ``fleet broker-config`` and ``fleet audit``.

``register_pki(fleet_app)`` adds the commands to the ``fleet`` group; ``python -m fleet.pki_cli``
runs them standalone (same commands, for tests and for a PKI host without the fleet service).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Literal, NoReturn

import typer

PkiDir = Annotated[Path, typer.Option("--pki", "--dir", help="PKI directory (made by `fleet pki init`).")]
BrokerDir = Annotated[
    Path | None, typer.Option("--broker-dir", help="Broker directory made by `fleet broker-config`.")
]
Pidfile = Annotated[
    Path | None, typer.Option("--pidfile", help="Reload the broker: SIGHUP the pid in this file.")
]
Unit = Annotated[str | None, typer.Option("--systemd-unit", help="Reload the broker: systemctl reload UNIT.")]


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _errors() -> tuple[type[BaseException], ...]:
    from fleet.pki import PKIError
    from protocol.clock import ClockNotSet

    return (PKIError, ClockNotSet, OSError, ValueError)


def _reloader(pidfile: Path | None, unit: str | None) -> object:
    from fleet.revocation import reload_by_pidfile, reload_by_systemd

    if pidfile is not None:
        return lambda: reload_by_pidfile(pidfile)
    if unit is not None:
        return lambda: reload_by_systemd(unit)
    return None


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _pki_app() -> typer.Typer:
    app = typer.Typer(help="The city PKI: root + issuing CA, device/service certificates, CRL.")

    @app.command("init")
    def init(
        pki_dir: PkiDir,
        city: Annotated[str, typer.Option(help="City name in the CA names.")] = "Hanoi",
        root_days: Annotated[int, typer.Option(help="Root CA lifetime in days.")] = 7300,
        issuing_days: Annotated[int, typer.Option(help="Issuing CA lifetime in days.")] = 1825,
        crl_days: Annotated[
            int, typer.Option(help="CRL lifetime in days (`fleet serve --pki` re-signs it at half-life).")
        ] = 7,
        db: Annotated[
            str | None,
            typer.Option(help="Keep the certificate inventory in this database (e.g. PostgreSQL URL)."),
        ] = None,
    ) -> None:
        """Create the root and issuing CAs."""
        from fleet.pki import CityPKI

        try:
            CityPKI.init(
                pki_dir,
                city=city,
                root_days=root_days,
                issuing_days=issuing_days,
                crl_days=crl_days,
                db_url=db,
            )
        except _errors() as exc:
            _fail(str(exc))
        typer.echo(f"city PKI created in {pki_dir}")
        typer.echo(f"IMPORTANT: move {pki_dir / 'root' / 'root.key'} offline (encrypted USB in a safe).")

    @app.command("sign-csr")
    def sign_csr(
        pki_dir: PkiDir,
        device: Annotated[str, typer.Option(help="Device id (must equal the CSR's CN).")],
        csr: Annotated[Path, typer.Option(help="PEM CSR made on the device.")],
        out: Annotated[Path, typer.Option(help="Where to write the PEM certificate.")],
        days: Annotated[int, typer.Option(help="Certificate lifetime in days.")] = 365,
    ) -> None:
        """Sign a device CSR."""
        from fleet.pki import CityPKI

        try:
            out.write_bytes(CityPKI.load(pki_dir).sign_device_csr(csr.read_bytes(), device, days=days))
        except _errors() as exc:
            _fail(str(exc))
        typer.echo(f"certificate for {device} written to {out}")

    @app.command("service")
    def service(
        pki_dir: PkiDir,
        name: Annotated[str, typer.Option(help="Service identity, e.g. fleet-ingest.")],
        out: Annotated[Path, typer.Option(help="Directory for cert.pem, key.pem (0600) and ca.pem.")],
        days: Annotated[int, typer.Option(help="Certificate lifetime in days.")] = 365,
    ) -> None:
        """Issue a fleet service identity (then `fleet broker-sync` so the broker lists it)."""
        from fleet.pki import CityPKI

        try:
            pki = CityPKI.load(pki_dir)
            key, cert = pki.issue_service_identity(name, days=days)
            out.mkdir(parents=True, exist_ok=True)
            _write_private(out / "key.pem", key)
            (out / "cert.pem").write_bytes(cert)
            (out / "ca.pem").write_bytes(pki.trust_bundle_pem())
        except _errors() as exc:
            _fail(str(exc))
        typer.echo(f"identity {name} written to {out}; grant it on the broker: cityedge fleet broker-sync")

    @app.command("server")
    def server(
        pki_dir: PkiDir,
        host: Annotated[list[str], typer.Option(help="DNS name or IP address the server answers on.")],
        out: Annotated[Path, typer.Option(help="Directory for cert.pem, key.pem (0600) and ca.pem.")],
        days: Annotated[int, typer.Option(help="Certificate lifetime in days.")] = 365,
    ) -> None:
        """Issue an HTTPS server certificate, e.g. for `fleet serve --tls-cert/--tls-key`."""
        from fleet.pki import CityPKI

        try:
            pki = CityPKI.load(pki_dir)
            key, cert = pki.issue_server_cert(host, days=days)
            out.mkdir(parents=True, exist_ok=True)
            _write_private(out / "key.pem", key)
            (out / "cert.pem").write_bytes(cert)
            (out / "ca.pem").write_bytes(pki.trust_bundle_pem())
        except _errors() as exc:
            _fail(str(exc))
        typer.echo(f"server certificate for {', '.join(host)} written to {out}: "
                   f"fleet serve --tls-cert {out / 'cert.pem'} --tls-key {out / 'key.pem'}")  # fmt: skip

    @app.command("crl")
    def crl(
        pki_dir: PkiDir, broker_dir: BrokerDir = None, pidfile: Pidfile = None, unit: Unit = None
    ) -> None:
        """Re-sign the CRL now (`fleet serve --pki` does it by itself; a stale CRL locks devices out)."""
        from fleet.brokerconf import refresh_broker_files
        from fleet.pki import CityPKI

        try:
            pki = CityPKI.load(pki_dir)
            pki.crl_pem()
            if broker_dir is not None:
                refresh_broker_files(pki, broker_dir)
            reload = _reloader(pidfile, unit)
            if callable(reload):
                reload()
        except _errors() as exc:
            _fail(str(exc))
        typer.echo("CRL refreshed")

    @app.command("move-inventory")
    def move_inventory(
        pki_dir: PkiDir,
        db: Annotated[str, typer.Option(help="Database URL to move the inventory to (must be empty).")],
    ) -> None:
        """Copy the certificate inventory into another database (e.g. PostgreSQL) and use it from now on."""
        from sqlalchemy.exc import SQLAlchemyError

        from fleet.pki_store import Inventory, InventoryError, atomic_write, inventory_url

        errors: tuple[type[BaseException], ...] = (*_errors(), InventoryError, SQLAlchemyError, KeyError)
        try:
            settings = json.loads((pki_dir / "pki.json").read_text())
            source, target = Inventory(inventory_url(pki_dir)), Inventory(db)
            try:
                copied = source.copy_to(target)
            finally:
                source.dispose()
                target.dispose()
            settings["db_url"] = db
            atomic_write(pki_dir / "pki.json", json.dumps(settings, indent=2).encode(), 0o600)
        except errors as exc:
            _fail(str(exc))
        typer.echo(
            f"{copied} certificate(s) copied to {target.display_url}; {pki_dir}/pki.json now points there"
        )

    @app.command("list")
    def list_certs(pki_dir: PkiDir, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
        """The inventory of issued certificates."""
        from fleet.pki import CityPKI

        try:
            records = CityPKI.load(pki_dir).certificates()
        except _errors() as exc:
            _fail(str(exc))
        if as_json:
            typer.echo(json.dumps([r.as_json() for r in records], indent=2))
            return
        for r in records:
            state = f"REVOKED ({r.revocation_reason})" if r.revoked else "valid"
            typer.echo(f"{r.serial:040x}  {r.kind:7}  {r.subject:32}  until {r.not_after:%Y-%m-%d}  {state}")

    return app


def _revoke_command(fleet_app: typer.Typer) -> None:
    @fleet_app.command("revoke")
    def revoke(
        target: Annotated[str, typer.Argument(help="Device id, service name, or 0x-serial.")],
        pki_dir: PkiDir,
        reason: Annotated[str, typer.Option(help="stolen, lost, tampered, retired, superseded, ...")],
        note: Annotated[str, typer.Option(help="Free text for the inventory (case number...).")] = "",
        broker_dir: BrokerDir = None,
        pidfile: Pidfile = None,
        unit: Unit = None,
        kick: Annotated[
            Path | None, typer.Option(help="Service identity dir (cert.pem, key.pem) used to disconnect it.")
        ] = None,
    ) -> None:
        """Revoke a device in one step: PKI, CRL + access list in the broker dir, reload, disconnect."""
        from fleet.brokerconf import SETTINGS_FILE, BrokerSecurity
        from fleet.pki import CityPKI
        from fleet.revocation import KickVia, revoke_everywhere

        try:
            pki = CityPKI.load(pki_dir)
            via = None
            if kick is not None:
                if broker_dir is None:
                    _fail("--kick needs --broker-dir (for the fleet listener address and CA)")
                sec = BrokerSecurity.model_validate_json((broker_dir / SETTINGS_FILE).read_text())
                host = "127.0.0.1" if sec.fleet_bind in ("0.0.0.0", "::") else sec.fleet_bind
                via = KickVia(
                    host, sec.fleet_port, broker_dir / "ca.pem", kick / "cert.pem", kick / "key.pem"
                )
            reload = _reloader(pidfile, unit)
            report = revoke_everywhere(
                pki,
                target,
                reason,
                note=note,
                broker_dir=broker_dir,
                reload=reload if callable(reload) else None,
                kick_via=via,
            )
        except _errors() as exc:
            _fail(str(exc))
        for rec in report.revoked:
            typer.echo(f"revoked {rec.subject} serial {rec.serial:x} ({rec.revocation_reason})")
        if not report.revoked:
            typer.echo(f"{target} was already revoked; CRL re-issued")
        if report.broker_files_updated:
            typer.echo(f"CRL and access list file updated in {broker_dir}")
        if report.broker_reloaded:
            typer.echo("broker reloaded (SIGHUP): new connections with this certificate are refused")
        else:
            typer.echo("reload the broker now (systemctl reload mosquitto) so that it reads the new CRL")
        if report.access_updated:
            typer.echo(f"{target} removed from the running broker's access list")
        elif broker_dir is not None and kick is None:
            typer.echo(
                "drop it from the running broker's access list now: cityedge fleet broker-sync "
                f"--pki {pki_dir} --broker-dir {broker_dir} --identity ADMIN_DIR"
            )
        if report.kicked:
            typer.echo(f"{target}'s connection was closed")
        for problem in report.problems:
            typer.echo(f"warning: {problem}", err=True)
        if report.problems:
            raise typer.Exit(1)


def _broker_config_command(fleet_app: typer.Typer) -> None:
    @fleet_app.command("broker-config")
    def broker_config(
        pki_dir: PkiDir,
        out: Annotated[
            Path, typer.Option(help="Directory for mosquitto.conf, access list, certificates, CRL.")
        ],
        hostname: Annotated[
            list[str], typer.Option(help="Broker DNS name or IP for its certificate (repeat).")
        ] = ["localhost", "127.0.0.1"],  # noqa: B006 (typer needs a literal default)
        device_bind: Annotated[str, typer.Option(help="Address of the device listener.")] = "0.0.0.0",
        device_port: Annotated[int, typer.Option(help="Port of the device listener.")] = 8883,
        fleet_listener: Annotated[
            str, typer.Option(help="mtls (internal mTLS), plain-localhost (password), or none.")
        ] = "mtls",
        fleet_bind: Annotated[
            str, typer.Option(help="Address of the fleet listener (internal).")
        ] = "127.0.0.1",
        fleet_port: Annotated[int, typer.Option(help="Port of the fleet listener.")] = 8884,
        persistence_dir: Annotated[str, typer.Option(help="mosquitto persistence_location.")] = (
            "/var/lib/mosquitto/"
        ),
        renew_server_cert: Annotated[bool, typer.Option(help="Issue a new broker certificate.")] = False,
        broker_admin: Annotated[
            list[str],
            typer.Option(help="Service identity that manages the access list (repeat); nothing else."),
        ] = ["fleet-admin"],  # noqa: B006 (typer needs a literal default)
        dynsec_plugin: Annotated[
            str | None, typer.Option(help="Path of mosquitto_dynamic_security.so (default: found).")
        ] = None,
    ) -> None:
        """Write the city broker's mosquitto configuration (mTLS, CRL, per-identity access list
        checked at subscribe time, fleet listener for service certificates only)."""
        from fleet.brokerconf import BrokerSecurity, pki_access_list, write_broker_files
        from fleet.dynsec import BrokerAccessError
        from fleet.pki import CityPKI

        errors: tuple[type[BaseException], ...] = (*_errors(), BrokerAccessError)

        if fleet_listener not in ("mtls", "plain-localhost", "none"):
            _fail("--fleet-listener must be mtls, plain-localhost or none")
        mode: Literal["mtls", "plain-localhost", "none"] = fleet_listener  # type: ignore[assignment]
        try:
            security = BrokerSecurity(
                device_bind=device_bind,
                device_port=device_port,
                fleet_listener=mode,
                fleet_bind=fleet_bind,
                fleet_port=fleet_port,
                server_names=hostname,
                persistence_dir=persistence_dir,
                broker_admins=broker_admin,
                dynsec_plugin=dynsec_plugin,
            )
            pki = CityPKI.load(pki_dir)
            passwords = write_broker_files(pki, out, security, renew_server_cert=renew_server_cert)
            access = pki_access_list(pki, security)
        except errors as exc:
            _fail(str(exc))
        devices = sum(1 for refs in access.clients.values() for role, _ in refs if role.startswith("device:"))
        typer.echo(f"broker configuration written to {out} (run: mosquitto -c {out / 'mosquitto.conf'})")
        typer.echo(
            f"access list: {devices} device(s), {len(access.clients) - devices} service(s); a running "
            "broker picks it up with `cityedge fleet broker-sync` (or a restart)"
        )
        if not any(role == "broker-admin" for refs in access.clients.values() for role, _ in refs):
            typer.echo(
                f"no broker admin identity yet ({', '.join(security.broker_admins) or 'none named'}): issue "
                "one (cityedge fleet pki service --name fleet-admin) and re-run broker-config, or the "
                "broker learns new devices only when it restarts"
            )
        for name, password in passwords.items():
            typer.echo(f"password for {name} on the plain fleet listener: {password}")


def _broker_sync_command(fleet_app: typer.Typer) -> None:
    @fleet_app.command("broker-sync")
    def broker_sync(
        pki_dir: PkiDir,
        broker_dir: Annotated[Path, typer.Option(help="Broker directory made by `fleet broker-config`.")],
        identity: Annotated[
            Path, typer.Option(help="Broker admin identity dir (cert.pem, key.pem), e.g. fleet-admin.")
        ],
    ) -> None:
        """Bring a running broker's access list in line with the PKI (new devices and services in,
        revoked ones out and disconnected); also rewrites its file for the next start."""
        from fleet.brokerconf import BrokerAccess, refresh_broker_files
        from fleet.dynsec import BrokerAccessError
        from fleet.pki import CityPKI

        errors: tuple[type[BaseException], ...] = (*_errors(), BrokerAccessError)
        try:
            pki = CityPKI.load(pki_dir)
            refresh_broker_files(pki, broker_dir)
            changes = BrokerAccess(pki, broker_dir, identity).sync()
        except errors as exc:
            _fail(str(exc))
        typer.echo(f"broker access list: {changes.summary()}")
        for name in changes.deleted_clients:
            typer.echo(f"removed (and disconnected): {name}")


def _audit_command(fleet_app: typer.Typer) -> None:
    @fleet_app.command("audit")
    def audit(
        pki_dir: PkiDir,
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable findings.")] = False,
        days: Annotated[int, typer.Option(help="Report certificates expiring within DAYS.")] = 30,
        connected: Annotated[
            Path | None, typer.Option(help="File of connected device ids, one per line ('-': stdin).")
        ] = None,
        crl: Annotated[
            list[Path] | None, typer.Option(help="CRL files to check (e.g. the broker's copy); repeat.")
        ] = None,
    ) -> None:
        """Security audit; exit code 1 when a high-severity finding exists."""
        from fleet.audit import has_high, run_audit
        from fleet.pki import CityPKI

        ids: list[str] = []
        try:
            if connected is not None:
                text = sys.stdin.read() if str(connected) == "-" else connected.read_text()
                ids = [line.strip() for line in text.splitlines() if line.strip()]
            findings = run_audit(
                CityPKI.load(pki_dir), connected=ids, expiring_days=days, crl_paths=crl or []
            )
        except _errors() as exc:
            _fail(str(exc))
        if as_json:
            typer.echo(json.dumps([f.as_json() for f in findings], indent=2))
        elif not findings:
            typer.echo("no findings")
        for f in [] if as_json else findings:
            typer.echo(f"[{f.severity.upper():6}] {f.check:22} {f.subject}: {f.message}")
        if has_high(findings):
            raise typer.Exit(1)


def register_pki(fleet_app: typer.Typer) -> None:
    """Add ``pki``, ``revoke``, ``broker-config``, ``broker-sync`` and ``audit`` to the ``fleet`` group."""
    fleet_app.add_typer(_pki_app(), name="pki")
    _revoke_command(fleet_app)
    _broker_config_command(fleet_app)
    _broker_sync_command(fleet_app)
    _audit_command(fleet_app)


def build_app() -> typer.Typer:
    """The same commands as a standalone app (``python -m fleet.pki_cli``)."""
    app = typer.Typer(help="cityedge fleet security commands.", no_args_is_help=True, add_completion=False)
    register_pki(app)
    return app


def main() -> None:
    build_app()()


if __name__ == "__main__":
    main()
