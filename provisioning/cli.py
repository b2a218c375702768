"""``cityedge provision``: the field technician's tool (enroll, selftest, label, status, renew, decommission).

Every step is shown as it runs (✓ / ✗); every failure says what happened and what to do, and
``--json`` prints one JSON object for scripts. Exit codes: see ``provisioning.errors``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from protocol.timefmt import utc_now
from provisioning.errors import ProvisionError
from provisioning.files import DEFAULT_DATA_DIR, DeviceFiles

Clock = Callable[[], datetime]
DataDir = Annotated[
    Path,
    typer.Option("--data-dir", envvar="CITYEDGE_DATA_DIR", help="The agent's data directory on this device."),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print one JSON object (for scripts).")]


class ConsoleSteps:
    """Shows each step with a spinner, then ✓ or ✗ (rich)."""

    def __init__(self, quiet: bool = False) -> None:

        self.console = screen_console()
        self.quiet = quiet
        self.current = ""

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.current = title
        if self.quiet:
            yield
            return
        with self.console.status(f"{title} …"):
            try:
                yield
            except BaseException:
                self.console.print(f"[red]✗[/red] {title}")
                raise
        self.console.print(f"[green]✓[/green] {title}")


def _report_failure(exc: ProvisionError, as_json: bool, steps: ConsoleSteps | None = None) -> typer.Exit:
    if as_json:
        doc = {"ok": False, "error": exc.message, "what_to_do": exc.hint, "kind": type(exc).__name__}
        typer.echo(json.dumps(doc))
    else:
        console = steps.console if steps else screen_console(stderr=True)
        console.print(f"[bold red]Problem:[/bold red] {exc.message}")
        console.print(f"[bold]What to do:[/bold] {exc.hint}")
    return typer.Exit(exc.exit_code)


SCREEN_COLUMNS = 80
"""A serial console's width: every technician screen fits it."""


def _print(doc: dict[str, Any], as_json: bool, lines: list[str]) -> None:
    if as_json:
        typer.echo(json.dumps(doc, indent=1, default=str))
    else:
        for line in lines:
            typer.echo(fit(line))


def screen_console(stderr: bool = False) -> Any:
    """A rich console no wider than a serial console, whatever the terminal says."""
    from rich.console import Console

    console = Console(highlight=False, stderr=stderr)
    console.width = min(console.width, SCREEN_COLUMNS)
    return console


def fit(line: str, width: int = SCREEN_COLUMNS) -> str:
    """``line`` wrapped to ``width`` columns at spaces, continuation lines indented; paths and URLs
    are never cut (a word longer than the screen stays whole on its own line)."""
    import textwrap

    return "\n".join(
        textwrap.wrap(line, width, subsequent_indent="    ", break_long_words=False, break_on_hyphens=False)
        or [""]
    )


def build_provision_app(clock: Clock = utc_now) -> typer.Typer:
    """The ``provision`` group; ``clock`` is injectable so tests can play a device with a wrong time."""
    app = typer.Typer(
        help="Field technician tool: enrol, test, label and retire devices.", no_args_is_help=True
    )

    @app.command("enroll")
    def enroll_cmd(
        claim: Annotated[str, typer.Option("--claim", help="Claim token, @FILE, or the scanned QR text.")],
        role: Annotated[str, typer.Option("--role", help="kiosk or camera.")],
        site: Annotated[str, typer.Option("--site", help="Site code, e.g. hn-btl.")],
        fleet: Annotated[str, typer.Option("--fleet", help="Fleet address, https://HOST:PORT.")],
        ca: Annotated[
            Path | None, typer.Option("--ca", help="CA file for the fleet's HTTPS certificate.")
        ] = None,
        data_dir: DataDir = DEFAULT_DATA_DIR,
        device_id: Annotated[
            str | None, typer.Option("--device-id", help="Device id (default: made up).")
        ] = None,
        start: Annotated[bool, typer.Option("--start/--no-start", help="Start the agent at the end.")] = True,
        io_board: Annotated[
            str | None,
            typer.Option("--io-board", help="Serial port of the cabinet I/O board (e.g. /dev/serial0)."),
        ] = None,
        system: Annotated[
            str,
            typer.Option("--system", help="Agent reboot backend: linux or simulated (tests).", hidden=True),
        ] = "linux",
        as_json: JsonOut = False,
    ) -> None:
        """Bring this device into the fleet with a one-time claim token."""
        from provisioning.agentproc import start_agent
        from provisioning.enroll import EnrollOptions, enroll

        opts = EnrollOptions(claim, role, site, fleet, data_dir, ca, device_id, start, system, io_board)
        steps = ConsoleSteps(quiet=as_json)
        try:
            result = enroll(opts, steps, clock, start_agent)
        except ProvisionError as exc:
            raise _report_failure(exc, as_json, steps) from None
        _print(
            {"ok": True, **result},
            as_json,
            [f"Enrolled {result['device_id']} ({role} at {site}); agent {result['agent']}."],
        )

    @app.command("selftest")
    def selftest_cmd(
        data_dir: DataDir = DEFAULT_DATA_DIR,
        as_json: JsonOut = False,
        camera: Annotated[
            str | None, typer.Option(help="Camera source to check (else peripherals.json).")
        ] = None,
        scanner: Annotated[str | None, typer.Option(help="QR scanner port to check.")] = None,
        printer: Annotated[str | None, typer.Option(help="Receipt printer port to check.")] = None,
        ioboard: Annotated[str | None, typer.Option(help="I/O board port to check.")] = None,
        timeout: Annotated[float, typer.Option(help="Seconds allowed per network / device check.")] = 10.0,
    ) -> None:
        """Check clock, disk, identity, broker connection and peripherals; exit 1 if any fails."""
        from provisioning.selftest import as_json as checks_json
        from provisioning.selftest import selftest

        overrides = {"camera": camera, "scanner": scanner, "printer": printer, "ioboard": ioboard}
        checks = selftest(data_dir, clock, peripherals=overrides, timeout=timeout)
        doc = checks_json(checks)
        if as_json:
            typer.echo(json.dumps(doc, indent=1))
        else:
            _checks_table(checks)
        if not doc["ok"]:
            raise typer.Exit(1)

    @app.command("ack-tamper")
    def ack_tamper_cmd(data_dir: DataDir = DEFAULT_DATA_DIR, as_json: JsonOut = False) -> None:
        """After closing the cabinet: clear the I/O board's tamper alarm (through the agent)."""
        from agent.errors import LocalApiError
        from agent.localapi import LocalApiClient

        try:
            answer = LocalApiClient(data_dir, timeout=5.0).call("iobus_ack_tamper")
        except LocalApiError as exc:
            raise _report_failure(
                ProvisionError(
                    f"the agent could not clear the tamper alarm: {exc}",
                    "start the agent (cityedge provision status) and check the I/O board",
                ),
                as_json,
            ) from None
        latched = bool(answer.get("tamper_latched"))
        line = (
            "tamper alarm still set: the door switch is open (close the cabinet door)"
            if latched
            else "tamper alarm cleared"
        )
        _print({"ok": not latched, **answer}, as_json, [line])
        if latched:
            raise typer.Exit(1)

    @app.command("label")
    def label_cmd(
        data_dir: DataDir = DEFAULT_DATA_DIR,
        out: Annotated[Path, typer.Option("--out", help="PNG file to write.")] = Path("label.png"),
        fleet_url: Annotated[
            str | None, typer.Option("--fleet-url", help="Dashboard URL (default: enrolment).")
        ] = None,
    ) -> None:
        """Make a label PNG: device id and a QR code of its page on the fleet dashboard."""
        from provisioning.files import load_enrollment
        from provisioning.label import device_page_url, render_label

        try:
            enrollment = load_enrollment(DeviceFiles(data_dir))
            url = device_page_url(fleet_url or enrollment.fleet_url, enrollment.device_id)
            render_label(enrollment.device_id, url, [f"{enrollment.role} · {enrollment.site}", url], out)
        except ProvisionError as exc:
            raise _report_failure(exc, False) from None
        _print({}, False, [f"label for {enrollment.device_id} written to {out}", f"QR code: {url}"])

    @app.command("status")
    def status_cmd(data_dir: DataDir = DEFAULT_DATA_DIR, as_json: JsonOut = False) -> None:
        """Who this device is, when its certificate expires, and whether the agent runs."""
        from provisioning.lifecycle import status

        try:
            doc = status(DeviceFiles(data_dir))
        except ProvisionError as exc:
            raise _report_failure(exc, as_json) from None
        agent = doc["agent"]
        lines = [
            f"device       {doc['device_id']} ({doc['role']} at site {doc['site']})",
            f"certificate  until {doc.get('certificate_not_after', '?')}",
            f"fleet        {doc['fleet_url']}",
            f"broker       {doc['broker_url']}",
            f"fleet keys   version {doc.get('fleet_keys_version', '?')}",
            f"agent        {'running' if agent['running'] else 'NOT running'} ({agent['how']})",
        ]
        _print(doc, as_json, lines)

    @app.command("renew")
    def renew_cmd(
        data_dir: DataDir = DEFAULT_DATA_DIR,
        new_key: Annotated[bool, typer.Option("--new-key", help="Also replace the device key.")] = False,
        as_json: JsonOut = False,
    ) -> None:
        """Renew the device certificate before it expires (no claim token needed)."""
        from provisioning.lifecycle import renew

        steps = ConsoleSteps(quiet=as_json)
        try:
            doc = renew(DeviceFiles(data_dir), clock, steps, new_key=new_key)
        except ProvisionError as exc:
            raise _report_failure(exc, as_json, steps) from None
        _print({"ok": True, **doc}, as_json, [f"certificate renewed until {doc['certificate_not_after']}"])

    @app.command("decommission")
    def decommission_cmd(
        data_dir: DataDir = DEFAULT_DATA_DIR,
        yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
        offline: Annotated[
            bool, typer.Option("--offline", help="Wipe even if the fleet cannot be told.")
        ] = False,
        as_json: JsonOut = False,
    ) -> None:
        """Revoke this device at the fleet and wipe its keys and certificates."""
        from provisioning.lifecycle import decommission

        if not yes and not typer.confirm("Revoke this device and wipe its keys and certificates?"):
            raise typer.Exit(1)
        steps = ConsoleSteps(quiet=as_json)
        try:
            doc = decommission(DeviceFiles(data_dir), clock, steps, offline=offline)
        except ProvisionError as exc:
            raise _report_failure(exc, as_json, steps) from None
        _print({"ok": True, **doc}, as_json, list(doc["done"]))

    return app


def _checks_table(checks: list[Any]) -> None:
    from rich.table import Table

    table = Table(title="cityedge selftest")
    for column in ("", "check", "result", "what to do"):
        table.add_column(column)
    marks = {"ok": "[green]✓[/green]", "fail": "[red]✗[/red]", "skip": "–"}
    for check in checks:
        table.add_row(marks[check.status], check.name, check.detail, check.fix)
    screen_console().print(table)


def register(app: typer.Typer) -> None:
    """Add the ``provision`` group to the ``cityedge`` command."""
    app.add_typer(build_provision_app(), name="provision")
    register_firmware(app)


def register_firmware(app: typer.Typer) -> None:
    """``cityedge firmware``: build, flash and check the cabinet I/O board's firmware."""
    fw = typer.Typer(help="Cabinet I/O board firmware: build (mpy-cross), flash (mpremote), status.")
    app.add_typer(fw, name="firmware")

    @fw.command("build")
    def build_cmd(
        out: Annotated[Path, typer.Option("--out", help="Folder to write the built firmware to.")],
        version: Annotated[str | None, typer.Option(help="Version to stamp (default: the source's).")] = None,
        as_json: JsonOut = False,
    ) -> None:
        """Compile the firmware to .mpy with a manifest of sha256 per file."""
        from provisioning.firmware import build_firmware

        try:
            manifest = build_firmware(out, version=version)
        except ProvisionError as exc:
            raise _report_failure(exc, as_json) from None
        lines = [f"firmware {manifest['version']}: {len(manifest['files'])} files in {out}"]
        _print({"ok": True, "out": str(out), **manifest}, as_json, lines)

    @fw.command("flash")
    def flash_cmd(
        port: Annotated[str, typer.Option("--port", help="The board's USB serial port (or socket://).")],
        build: Annotated[
            Path | None, typer.Option("--build", help="A built firmware folder (default: build now).")
        ] = None,
        as_json: JsonOut = False,
    ) -> None:
        """Copy, verify on the board, then switch; a cut copy never boots."""
        import tempfile

        from rich.progress import Progress

        from provisioning.firmware import build_firmware, flash_firmware

        console = screen_console()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                source = build or Path(tmp) / "build"
                if build is None:
                    build_firmware(source)
                files = len(json.loads((source / "manifest.json").read_text())["files"])
                with Progress(console=console, transient=True, disable=as_json) as bar:
                    task = bar.add_task("flashing", total=files + 3)

                    def step(message: str) -> None:
                        bar.update(task, advance=1, description=message[:40])

                    summary = flash_firmware(source, port, progress=step)
        except ProvisionError as exc:
            raise _report_failure(exc, as_json) from None
        except (OSError, ValueError, KeyError) as exc:
            failure = ProvisionError(
                f"no usable firmware build: {exc}", "run: cityedge firmware build --out DIR"
            )
            raise _report_failure(failure, as_json) from None
        lines = [f"flashed firmware {summary['version']} ({summary['files']} files, verified) to {port}"]
        _print({"ok": True, **summary}, as_json, lines)

    @fw.command("status")
    def status_cmd(
        port: Annotated[str, typer.Option("--port", help="The board's USB serial port (or socket://).")],
        as_json: JsonOut = False,
    ) -> None:
        """The firmware version on the board and whether an update is staged."""
        from provisioning.firmware import board_status

        try:
            doc = board_status(port)
        except ProvisionError as exc:
            raise _report_failure(exc, as_json) from None
        lines = [
            f"firmware  {doc['version'] or 'none installed'} ({doc['files']} files)",
            f"staged    {'an update is staged in next/' if doc['update_staged'] else 'nothing'}",
        ]
        _print({"ok": True, **doc}, as_json, lines)
