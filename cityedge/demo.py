"""``cityedge demo``: the whole system on one machine, stopped cleanly with Ctrl-C.

A private mosquitto, then the parts in ``demo_parts()`` as child processes (fleet, one real agent
per role, simulated devices), each in its own session with its output in ``DATA_DIR/logs/``.
Ctrl-C or SIGTERM stops them in reverse order; a child that dies is named with its last log lines.
A new part (camera pipeline, kiosk UI) is one more ``Part(...)`` line in ``demo_parts()``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

import typer
from rich.console import Console
from rich.panel import Panel

from cityedge import demo_ota, demo_security

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
LOG_TAIL_LINES = 20
DEMO_CAMERA = "cam-demo-0001"


@dataclass(frozen=True)
class Ctx:
    """What the command line of a part may depend on."""

    broker_url: str
    data_dir: Path
    http: str
    devices: int
    cli: tuple[str, ...]
    fleet_env: dict[str, str] = field(default_factory=dict)

    def part_dir(self, name: str) -> Path:
        """``DATA_DIR/name``, created when missing."""
        path = self.data_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass(frozen=True)
class Part:
    """One child process of the demo."""

    name: str
    argv: Callable[[Ctx], list[str]]
    essential: bool = False  # its death stops the demo
    ready_path: str | None = None  # HTTP path on --http that answers 200 once it is up
    enabled: Callable[[Ctx], bool] = field(default=lambda ctx: True)
    env: Callable[[Ctx], dict[str, str]] | None = None  # added to the demo's environment


def _fleet(ctx: Ctx) -> list[str]:
    ctx.part_dir("fleet")
    db = fleet_db_url(ctx.data_dir)
    return [*ctx.cli, "fleet", "serve", "--broker", ctx.broker_url, "--db", db, "--http", ctx.http,
            "--data-dir", str(ctx.part_dir("fleet")), "--worker-id", "fleet-demo",
            "--rpc", "dossier=fleet.gateway.service:demo_dossier_service",
            "--releases", str(demo_ota.repo_dir(ctx.data_dir)),
            "--router", "fleet.enroll:router_from_env",
            "--pki", str(demo_security.pki_dir(ctx.data_dir))]  # fmt: skip


def fleet_db_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'fleet' / 'fleet.db').resolve()}"


def _ota_agent(ctx: Ctx) -> list[str]:
    """A device under the launcher that the demo updates from 0.1.0 to 0.1.1 (docs/ota.md)."""
    return demo_ota.ota_agent_argv(ctx.cli, ctx.broker_url, ctx.http, ctx.data_dir)


DEMO_AGENT_CONFIG = """\
# Demo only: the demo fleet sends unsigned commands. Enrolled devices require fleet signatures
# (the default); see docs/security-commands-enrolment.md.
[commands]
require_signature = false
"""


def _agent(device_id: str, role: str) -> Callable[[Ctx], list[str]]:
    def argv(ctx: Ctx) -> list[str]:
        config = ctx.part_dir(device_id) / "agent.toml"
        config.write_text(DEMO_AGENT_CONFIG)
        return [*ctx.cli, "agent", "run", "--config", str(config), "--device-id", device_id, "--role", role,
                "--broker", ctx.broker_url, "--data-dir", str(ctx.part_dir(device_id))]  # fmt: skip

    return argv


def kiosk_ui_http(ctx: Ctx) -> str:
    """The kiosk screen sits on the port after the dashboard's."""
    host, port = ctx.http.rsplit(":", 1)
    return f"{host}:{int(port) + 1}"


def _kiosk_ui(ctx: Ctx) -> list[str]:
    return [*ctx.cli, "kiosk", "serve", "--data-dir", str(ctx.part_dir("kiosk-demo-0001")),
            "--http", kiosk_ui_http(ctx), "--simulate-peripherals"]  # fmt: skip


def snapshot_lines(cli: str, url: str, http: str, token_file: Path) -> list[str]:
    """How to see what the demo camera sees (people and plates blurred by the camera)."""
    return [
        f"The camera's view: {url}devices/{DEMO_CAMERA} → Take snapshot, or",
        f"  {cli} fleet command {DEMO_CAMERA} snapshot --wait --api http://{http} --token-file {token_file}",
    ]


def _camera_pipeline(ctx: Ctx) -> list[str]:
    """The camera role process on a synthetic street scene, beside the camera agent."""
    import agent.camera

    config = Path(agent.camera.__file__).resolve().parent / "examples" / "demo.toml"
    return [*ctx.cli, "camera", "run", "--config", str(config),
            "--data-dir", str(ctx.part_dir("cam-demo-0001"))]  # fmt: skip


def _sim(ctx: Ctx) -> list[str]:
    return [*ctx.cli, "sim", "--broker", ctx.broker_url, "--devices", str(ctx.devices),
            "--id-prefix", "sim", "--time-scale", "6", "--telemetry-interval", "10",
            *demo_ota.SIM_OTA]  # fmt: skip


def io_board_dir(ctx: Ctx) -> Path:
    """The demo cabinet's I/O board: the real firmware under MicroPython (software in the loop)."""
    return ctx.data_dir / "io-board"


def _io_board(ctx: Ctx) -> list[str]:
    return [*ctx.cli, "iob", "sim", "--state-dir", str(io_board_dir(ctx)), "--no-usb"]


def demo_parts() -> list[Part]:
    """The demo's children, started in this order and stopped in the reverse order."""
    return [
        Part("fleet", _fleet, essential=True, ready_path="/healthz", env=lambda ctx: ctx.fleet_env),
        Part("io-board", _io_board),
        Part("agent-kiosk", _agent("kiosk-demo-0001", "kiosk")),
        Part("kiosk-ui", _kiosk_ui),
        Part("agent-camera", _agent(DEMO_CAMERA, "camera")),
        Part("camera-pipeline", _camera_pipeline),
        Part("agent-ota", _ota_agent),
        Part("sim", _sim, enabled=lambda ctx: ctx.devices > 0),
    ]


class DemoError(RuntimeError):
    """The demo cannot start or a part it needs failed; the message says which and why."""


def _die_with_parent() -> None:
    """Child side of fork: get SIGTERM if the demo itself is killed (Linux), so nothing is orphaned."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _cli_prefix() -> tuple[str, ...]:
    script = Path(sys.executable).with_name("cityedge")
    if script.exists():
        return (str(script),)
    return (
        sys.executable,
        "-c",
        "import sys; from cityedge.cli import main; sys.argv[0] = 'cityedge'; main()",
    )


@dataclass
class Child:
    part: Part
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    reported: bool = False

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        self.log_file.flush()
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"


class Supervisor:
    """Starts the parts, watches them, and stops them in reverse order."""

    def __init__(self, ctx: Ctx, console: Console) -> None:
        self.ctx = ctx
        self.console = console
        self.children: list[Child] = []
        (ctx.data_dir / "logs").mkdir(parents=True, exist_ok=True)

    def start(self, part: Part) -> Child:
        log_path = self.ctx.data_dir / "logs" / f"{part.name}.log"
        log_file = log_path.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(part.env(self.ctx) if part.env else {})}
        proc = subprocess.Popen(
            part.argv(self.ctx),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops children in order
            preexec_fn=_die_with_parent,
        )
        child = Child(part, proc, log_path, log_file)
        self.children.append(child)
        self.console.print(f"  started [bold]{part.name}[/bold] (pid {proc.pid}), log {log_path}")
        return child

    def wait_ready(self, child: Child, stop: threading.Event) -> None:
        url = f"http://{self.ctx.http}{child.part.ready_path}"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not stop.is_set():
            if child.proc.poll() is not None:
                raise DemoError(self.death_note(child))
            if _answers(url):
                return
            if time.monotonic() > deadline:
                raise DemoError(f"{child.part.name} did not answer {url} within {READY_TIMEOUT_S:.0f} s; "
                                f"its last log lines:\n{child.tail()}")  # fmt: skip
            stop.wait(0.3)

    def death_note(self, child: Child) -> str:
        child.reported = True
        return (f"{child.part.name} (pid {child.proc.pid}) exited with code {child.proc.returncode}; "
                f"last lines of {child.log_path}:\n{child.tail()}")  # fmt: skip

    def check(self) -> Child | None:
        """Report children that died since the last check; return an essential one that did."""
        for child in self.children:
            if child.proc.poll() is not None and not child.reported:
                self.console.print(f"[red]{self.death_note(child)}[/red]", highlight=False)
                if child.part.essential:
                    return child
        return None

    def stop_all(self) -> None:
        for child in reversed(self.children):
            self._stop(child)
            child.log_file.close()

    def _stop(self, child: Child) -> None:
        proc = child.proc
        if proc.poll() is None:
            self._signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.console.print(f"  {child.part.name} did not stop in {STOP_TIMEOUT_S:.0f} s: killing it")
                self._signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
            self.console.print(f"  stopped {child.part.name} (exit code {proc.returncode})")
        self._signal_group(proc.pid, signal.SIGKILL)  # anything the child left in its session

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def _answers(url: str) -> bool:
    """True when ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _check_http(http: str) -> tuple[str, int]:
    host, _, port_text = http.rpartition(":")
    if not host or not port_text.isdigit():
        raise DemoError(f"--http {http!r} must be HOST:PORT, e.g. 127.0.0.1:8080")
    port = int(port_text)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise DemoError(f"cannot serve the dashboard on {http} ({exc.strerror}); "
                            f"pass another one, e.g. --http {host}:{port + 1}") from None  # fmt: skip
    return host, port


@contextlib.contextmanager
def _stop_signals(stop: threading.Event) -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield None
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def run_demo(devices: int, http: str, data_dir: Path, console: Console) -> int:
    from fleet.broker import BrokerError, MosquittoBroker, find_mosquitto
    from fleet.releases.errors import ReleaseError

    try:
        find_mosquitto()
    except BrokerError as exc:
        console.print(str(exc), highlight=False, markup=False)
        return 1
    stop = threading.Event()
    with _stop_signals(stop):
        try:
            _check_http(http)
            data_dir.mkdir(parents=True, exist_ok=True)
            with console.status("preparing the release repository (two releases) and the city PKI ..."):
                demo_ota.prepare_releases(data_dir)
                demo_security.prepare_pki(data_dir)
                demo_security.prepare_fleet_keys(data_dir)
            broker = MosquittoBroker(data_dir / "broker").start()
        except (DemoError, BrokerError, ReleaseError) as exc:
            console.print(f"[red]cityedge demo: {exc}[/red]", highlight=False)
            return 1
        try:
            city = demo_security.prepare_city_broker(data_dir, int(broker.url.rsplit(":", 1)[1]))
            city_dir = data_dir / demo_security.CITY_BROKER / "broker"
            city_broker = MosquittoBroker(city_dir, city.config).start()
        except BrokerError as exc:
            broker.stop()
            console.print(f"[red]cityedge demo: the city broker did not start: {exc}[/red]", highlight=False)
            return 1
        console.print(
            f"[bold]cityedge demo[/bold]: broker {broker.url} (mosquitto, files in {broker.workdir}); "
            f"city broker for enrolled devices {city.device_url} (mTLS)"
        )
        env = demo_security.enroll_env(data_dir, city)
        ctx = Ctx(broker.url, data_dir, http, devices, _cli_prefix(), env)
        sup = Supervisor(ctx, console)
        try:
            return _run_parts(sup, stop, console)
        finally:
            console.print("stopping ...")
            sup.stop_all()
            city_broker.stop()
            broker.stop()
            console.print("  stopped brokers\ndemo stopped cleanly.")


def _run_parts(sup: Supervisor, stop: threading.Event, console: Console) -> int:
    try:
        for part in demo_parts():
            if stop.is_set():
                return 0
            if part.enabled(sup.ctx):
                child = sup.start(part)
                if part.ready_path is not None:
                    sup.wait_ready(child, stop)
    except DemoError as exc:
        console.print(f"[red]cityedge demo: {exc}[/red]", highlight=False)
        return 1
    url = f"http://{sup.ctx.http}/"
    kiosk = f"http://{kiosk_ui_http(sup.ctx)}/"
    from fleet.auth.tokensignin import signin_link

    token, token_file = demo_security.prepare_admin_token(fleet_db_url(sup.ctx.data_dir), sup.ctx.data_dir)
    demo_ota.roll_out_later(sup.ctx.http, stop, token_file)
    console.print(
        Panel.fit(
            f"[bold green]Dashboard: {url}[/bold green]\n"
            f"Kiosk screen: {kiosk}\n"
            f"Update: {demo_ota.DEVICE} moves {demo_ota.FIRST} -> {demo_ota.SECOND} once online,\n"
            "  flashing its I/O board's new firmware after its health gate\n"
            f"  (its OTA column; on the device: cityedge agent ota status --data-dir\n"
            f"   {sup.ctx.data_dir / demo_ota.DEVICE / 'data'})",
            title="cityedge demo is running",
        )
    )
    # outside the panel, so that the link is never wrapped and can be clicked or copied whole
    link = signin_link(url, token)
    console.print(f"Sign in to the dashboard (admin, this demo only):\n{link}", markup=False)
    console.print(f"The token is also in {token_file} (mode 0600) for the CLI: --token-file", markup=False)
    if sup.ctx.devices > 0:
        for line in demo_ota.rollout_lines("cityedge", sup.ctx.http, token_file):
            console.print(line, markup=False, highlight=False)
    for line in snapshot_lines("cityedge", url, sup.ctx.http, token_file):
        console.print(line, markup=False, highlight=False)
    claim = demo_security.create_claim(sup.ctx.data_dir)
    board = io_board_dir(sup.ctx)
    tech = demo_security.technician_lines(
        "cityedge", sup.ctx.data_dir, sup.ctx.http, claim, str(board / "port")
    )
    for line in tech:
        console.print(line, markup=False, highlight=False)
    console.print("Press Ctrl-C to stop everything.")
    while not stop.wait(0.5):
        dead = sup.check()
        if dead is not None:
            console.print(f"[red]{dead.part.name} is essential: stopping the demo.[/red]")
            return 1
    return 0


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        devices: int = typer.Option(30, "--devices", help="Simulated devices besides the two real agents."),
        http: str = typer.Option("127.0.0.1:8080", "--http", help="HOST:PORT of the fleet dashboard."),
        data_dir: Path = typer.Option(Path("var/demo"), "--data-dir", help="Where logs, DB and state go."),
    ) -> None:
        """Broker + fleet + a kiosk agent + a camera agent + simulated devices; Ctrl-C stops all."""
        raise typer.Exit(run_demo(devices, http, data_dir, Console(soft_wrap=True)))
