"""``cityedge sim``: many simulated kiosks and cameras speaking the MQTT contract."""

from __future__ import annotations

from pathlib import Path

import typer

from protocol.topics import DEFAULT_PREFIX


def register(app: typer.Typer) -> None:
    register_iob(app)

    @app.command("sim")
    def sim(
        broker: str = typer.Option(..., "--broker", help="Broker URL, mqtt://HOST:PORT."),
        devices: int = typer.Option(30, "--devices", "-n", help="Number of simulated devices (half kiosks)."),
        cameras: int | None = typer.Option(
            None, "--cameras", help="How many of the devices are cameras (default half; the rest kiosks)."
        ),
        procs: int = typer.Option(
            0, "--procs", help="Worker processes to split the devices over (0: one per 5,000 devices)."
        ),
        duration: float | None = typer.Option(None, "--duration", help="Stop after this many seconds."),
        prefix: str = typer.Option(DEFAULT_PREFIX, "--prefix", help="Topic prefix."),
        telemetry_interval: float = typer.Option(10.0, "--telemetry-interval", help="Telemetry period (s)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the scenario randomness."),
        id_prefix: str = typer.Option("sim", "--id-prefix", help="Device ids look like kiosk-PREFIX-0001."),
        time_scale: float = typer.Option(1.0, "--time-scale", help="Scenario speed-up (60: 1 min/s)."),
        version: str = typer.Option("0.1.0-sim", "--version", help="Software version the devices run."),
        load_events: int = typer.Option(0, "--load-events", help="Benchmark: extra events per device."),
        load_rate: float = typer.Option(0.0, "--load-rate", help="Benchmark: total events/s (0: flat out)."),
        ota_fail: float = typer.Option(0.0, "--ota-fail", help="Chance an update fails (ota.failed), 0..1."),
        ota_rollback: float = typer.Option(
            0.0, "--ota-rollback", help="Chance an update fails its health gate (ota.rolled_back), 0..1."
        ),
        ota_offline: float = typer.Option(
            0.0, "--ota-offline", help="Chance a device drops off the network mid-update, 0..1."
        ),
        ota_seconds: str = typer.Option("5..30", "--ota-seconds", help="Update download time, LOW..HIGH."),
        ota_offline_seconds: str = typer.Option(
            "10..60", "--ota-offline-seconds", help="How long a device that drops off stays away, LOW..HIGH."
        ),
        trust: str | None = typer.Option(
            None,
            "--trust",
            help="Fleet key directory (fleet DATA_DIR/keys): run only commands signed by the fleet.",
        ),
        json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout at the end."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
    ) -> None:
        """Run simulated kiosks and cameras until Ctrl-C or --duration (one loop per 5,000 devices).

        They run the update exchange of the real agent on a desired release (ota.* events), with
        the chances and times given by the --ota-* options, drawn reproducibly from --seed."""
        from hil.runsim import run_sim_command

        code = run_sim_command(
            {
                "broker": broker,
                "devices": devices,
                "cameras": cameras,
                "procs": procs,
                "duration_s": duration,
                "prefix": prefix,
                "telemetry_interval_s": telemetry_interval,
                "seed": seed,
                "id_prefix": id_prefix,
                "time_scale": time_scale,
                "version": version,
                "load_events": load_events,
                "load_rate": load_rate,
                "ota_fail": ota_fail,
                "ota_rollback": ota_rollback,
                "ota_offline": ota_offline,
                "ota_seconds": ota_seconds,
                "ota_offline_seconds": ota_offline_seconds,
                "trust": trust,
            },
            json_out=json_out,
            quiet=quiet,
        )
        raise typer.Exit(code)


def register_iob(app: typer.Typer) -> None:
    """``cityedge iob``: a software-in-the-loop cabinet I/O board (the real firmware, MicroPython)."""
    iob = typer.Typer(help="Software-in-the-loop cabinet I/O board (real firmware, MicroPython).")
    app.add_typer(iob, name="iob")

    @iob.command("sim")
    def iob_sim(
        state_dir: Path = typer.Option(
            ..., "--state-dir", help="Board flash, inputs, outputs and port link."
        ),
        usb: bool = typer.Option(True, "--usb/--no-usb", help="Serve its USB REPL for mpremote."),
    ) -> None:
        """Run one SIL board in the foreground until Ctrl-C; its UART is STATE_DIR/port."""
        import signal
        import threading

        from hil.iobsil import SilBoard, SilError

        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
        try:
            board = SilBoard(state_dir, usb=usb).start()
        except SilError as exc:
            typer.echo(f"cannot start the I/O board: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(
            f"I/O board firmware {board.installed_version()} running; UART {board.link} -> {board.port}"
        )
        if usb:
            typer.echo(f"USB (mpremote): {board.usb_url}")
        typer.echo(f"toggle its inputs: cityedge iob set --state-dir {state_dir} tamper=open")
        try:
            while not stop.wait(0.5):
                if not board.alive and not board.usb:
                    typer.echo(f"the I/O board stopped: {board.log_tail()}", err=True)
                    raise typer.Exit(1)
        except KeyboardInterrupt:
            pass
        finally:
            board.stop()

    @iob.command("set")
    def iob_set(
        assignments: list[str] = typer.Argument(
            ..., help="NAME=VALUE: tamper=open, temp_c=70, battery_v=11…"
        ),
        state_dir: Path = typer.Option(..., "--state-dir", help="The SIL board's state directory."),
    ) -> None:
        """Change a SIL board's inputs (the cabinet door, temperature, supply, signal lamp)."""
        import json

        from hil.iobsil import SilBoard

        known = {"tamper", "temp_c", "rh", "battery_v", "phase", "fan_rpm_when_on", "sensor_fail"}
        values: dict[str, object] = {}
        for item in assignments:
            name, sep, raw = item.partition("=")
            if not sep or name not in known:
                typer.echo(f"{item!r}: use NAME=VALUE with NAME one of {', '.join(sorted(known))}", err=True)
                raise typer.Exit(2)
            try:
                values[name] = json.loads(raw)
            except ValueError:
                values[name] = raw
        current = SilBoard(state_dir).set_inputs(**values)
        typer.echo(json.dumps(current, sort_keys=True))
