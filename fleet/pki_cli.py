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
        crl_days: Annotated[int, typer.Option(help="CRL lifetime in days (refresh it daily).")] = 7,
    ) -> None:
        """Create the root and issuing CAs."""
        from fleet.pki import CityPKI

        try:
            CityPKI.init(
                pki_dir, city=city, root_days=root_days, issuing_days=issuing_days, crl_days=crl_days
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
        """Issue a fleet service identity (then re-run broker-config so the ACL lists it)."""
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
        typer.echo(f"identity {name} written to {out}; refresh the broker ACL (fleet broker-config)")

    @app.command("crl")
    def crl(
        pki_dir: PkiDir, broker_dir: BrokerDir = None, pidfile: Pidfile = None, unit: Unit = None
    ) -> None:
        """Re-sign the CRL (run daily: a CRL past its next update locks every device out)."""
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
        """Revoke a device in one step: PKI, CRL + ACL in the broker dir, reload, disconnect."""
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
            typer.echo(f"CRL and ACL updated in {broker_dir}")
        if report.broker_reloaded:
            typer.echo("broker reloaded (SIGHUP): new connections with this certificate are refused")
        else:
            typer.echo("reload the broker now (systemctl reload mosquitto) so that it reads the new CRL")
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
        out: Annotated[Path, typer.Option(help="Directory for mosquitto.conf, acl, certificates, CRL.")],
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
    ) -> None:
        """Write the city broker's mosquitto configuration (mTLS, CRL, per-device ACL)."""
        from fleet.brokerconf import BrokerSecurity, write_broker_files
        from fleet.pki import CityPKI

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
            )
            passwords = write_broker_files(
                CityPKI.load(pki_dir), out, security, renew_server_cert=renew_server_cert
            )
        except _errors() as exc:
            _fail(str(exc))
        typer.echo(f"broker configuration written to {out} (run: mosquitto -c {out / 'mosquitto.conf'})")
        for name, password in passwords.items():
            typer.echo(f"password for {name} on the plain fleet listener: {password}")


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
    """Add ``pki``, ``revoke``, ``broker-config`` and ``audit`` to the ``fleet`` group."""
    fleet_app.add_typer(_pki_app(), name="pki")
    _revoke_command(fleet_app)
    _broker_config_command(fleet_app)
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
