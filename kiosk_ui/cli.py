"""``cityedge kiosk``: serve the kiosk web app, supervise it (and Chromium), sign pushed content."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

DataDir = Annotated[Path, typer.Option("--data-dir", help="The agent's data directory (local API socket).")]
Http = Annotated[str, typer.Option("--http", help="HOST:PORT to listen on (keep it loopback).")]


def split_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise typer.BadParameter(f"expected HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def register(app: typer.Typer) -> None:
    """Add the ``kiosk`` command group to ``cityedge``."""
    app.add_typer(build_kiosk_app(), name="kiosk")


def build_kiosk_app() -> typer.Typer:
    kiosk = typer.Typer(
        help="Resident kiosk: web app, launcher and supervisor.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @kiosk.command("serve")
    def serve_cmd(
        data_dir: DataDir,
        scanner: Annotated[str | None, typer.Option(help="QR scanner: device path or pyserial URL.")] = None,
        printer: Annotated[
            str | None, typer.Option(help="Receipt printer: device path or pyserial URL.")
        ] = None,
        doccam: Annotated[
            str | None, typer.Option(help="Document camera: V4L2 device path (e.g. /dev/video0).")
        ] = None,
        http: Http = "127.0.0.1:8080",
        simulate_peripherals: Annotated[
            bool,
            typer.Option("--simulate-peripherals", help="Simulated scanner, printer and document camera."),
        ] = False,
        idle_s: Annotated[float, typer.Option(help="Seconds without input before the warning.")] = 60.0,
        warn_s: Annotated[float, typer.Option(help="Seconds the warning lasts before the reset.")] = 15.0,
        signage_s: Annotated[float, typer.Option(help="Seconds per announcement.")] = 12.0,
        content_keys: Annotated[
            Path | None,
            typer.Option(help="Extra JSON {kid: base64 public key} trusted for pushed content."),
        ] = None,
        site_name_vi: Annotated[str, typer.Option(help="Building name (Vietnamese).")] = "Toà nhà chung cư",
        site_name_en: Annotated[str, typer.Option(help="Building name (English).")] = "Apartment building",
        log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
    ) -> None:
        """Serve the kiosk web app on localhost for Chromium in kiosk mode."""
        from kiosk_ui.config import KioskSettings
        from kiosk_ui.server import serve

        _logging(log_level)
        host, port = split_hostport(http)
        settings = KioskSettings(
            data_dir=data_dir,
            http_host=host,
            http_port=port,
            scanner=scanner,
            printer=printer,
            doccam=doccam,
            simulate_peripherals=simulate_peripherals,
            idle_s=idle_s,
            warn_s=warn_s,
            signage_s=signage_s,
            content_keys=content_keys,
            site_name_vi=site_name_vi,
            site_name_en=site_name_en,
        )
        serve(settings)

    @kiosk.command("supervise", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def supervise_cmd(
        ctx: typer.Context,
        data_dir: DataDir,
        http: Http = "127.0.0.1:8080",
        browser: Annotated[bool, typer.Option(help="Also run Chromium in kiosk mode.")] = False,
        chromium: Annotated[str, typer.Option(help="Chromium binary.")] = "/usr/bin/chromium",
        log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
    ) -> None:
        """Run the app (and optionally Chromium) and restart whatever dies, within seconds.

        Options not listed here are passed on to ``kiosk serve`` (e.g. --scanner, --idle-s).
        """
        from kiosk_ui.supervisor import kiosk_children, run_supervisor

        _logging(log_level)
        host, port = split_hostport(http)
        children = kiosk_children(data_dir, host, port, list(ctx.args), browser=browser, chromium=chromium)
        raise typer.Exit(run_supervisor(children))

    @kiosk.command("browser")
    def browser_cmd(
        url: Annotated[str, typer.Option(help="Kiosk page.")] = "http://127.0.0.1:8080/",
        chromium: Annotated[str, typer.Option(help="Chromium binary.")] = "/usr/bin/chromium",
        stale_s: Annotated[float, typer.Option(help="Restart when the page is silent this long.")] = 30.0,
        log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
    ) -> None:
        """Run Chromium in kiosk mode with a throw-away profile; exit when the page hangs or dies."""
        from kiosk_ui.browser import run_browser

        _logging(log_level)
        raise typer.Exit(run_browser(url, chromium, stale_s=stale_s))

    @kiosk.command("sign-content")
    def sign_content_cmd(
        source: Annotated[Path, typer.Argument(help="Catalogue or announcements JSON document.")],
        key: Annotated[Path, typer.Option(help="Ed25519 private key (PEM), e.g. a fleet command key.")],
        kid: Annotated[str, typer.Option(help="Key id the device knows this key by.")],
        out: Annotated[Path, typer.Option(help="Where to write the signed document.")],
    ) -> None:
        """Sign kiosk content for ``shadow/desired`` (config.catalogue / config.announcements)."""
        from kiosk_ui.contentsign import sign_content_file

        signed = sign_content_file(source, key, kid)
        out.write_text(json.dumps(signed, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        typer.echo(f"signed {signed['format']} version {signed['version']} with {kid} -> {out}")

    return kiosk
