"""``cityedge sim``: many simulated kiosks and cameras speaking the MQTT contract."""

from __future__ import annotations

import typer

from protocol.topics import DEFAULT_PREFIX


def register(app: typer.Typer) -> None:
    @app.command("sim")
    def sim(
        broker: str = typer.Option(..., "--broker", help="Broker URL, mqtt://HOST:PORT."),
        devices: int = typer.Option(30, "--devices", "-n", help="Number of simulated devices (half kiosks)."),
        duration: float | None = typer.Option(None, "--duration", help="Stop after this many seconds."),
        prefix: str = typer.Option(DEFAULT_PREFIX, "--prefix", help="Topic prefix."),
        telemetry_interval: float = typer.Option(10.0, "--telemetry-interval", help="Telemetry period (s)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the scenario randomness."),
        id_prefix: str = typer.Option("sim", "--id-prefix", help="Device ids look like kiosk-PREFIX-0001."),
        time_scale: float = typer.Option(1.0, "--time-scale", help="Scenario speed-up (60: 1 min/s)."),
        load_events: int = typer.Option(0, "--load-events", help="Benchmark: extra events per device."),
        load_rate: float = typer.Option(0.0, "--load-rate", help="Benchmark: total events/s (0: flat out)."),
        json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout at the end."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
    ) -> None:
        """Run simulated kiosks and cameras on one asyncio loop until Ctrl-C or --duration."""
        from hil.runsim import run_sim_command

        code = run_sim_command(
            {
                "broker": broker,
                "devices": devices,
                "duration_s": duration,
                "prefix": prefix,
                "telemetry_interval_s": telemetry_interval,
                "seed": seed,
                "id_prefix": id_prefix,
                "time_scale": time_scale,
                "load_events": load_events,
                "load_rate": load_rate,
            },
            json_out=json_out,
            quiet=quiet,
        )
        raise typer.Exit(code)
