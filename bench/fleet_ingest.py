"""Fleet ingest rate with 2,000 simulated devices, against a raw paho subscriber on the same stream.

    python -m bench.fleet_ingest [--db sqlite|postgresql|both] [--devices 2000]
                                 [--events-per-device 20] [--runs 3] [--json]

Each run starts a private mosquitto. ``cityedge fleet serve`` (on a SQLite file, or on a database
of a throwaway PostgreSQL cluster, ``hil.pgcluster``) and a raw paho subscriber
(the baseline: it only counts) first connect once, each with its persistent session on the same
filters, and go away. ``cityedge sim`` (a separate process) then connects the devices and publishes
``devices x events-per-device`` events (QoS 1): the broker queues the same backlog for both. The
baseline comes back alone and is timed from its first to its last event, then the fleet alone,
timed from the first to the last event stored in its database. The devices stay connected
throughout. Printed, for each database: the medians over the runs of both rates and their ratio;
targets: >= 5,000 events stored per second, and >= 0.8 x the raw subscriber.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from bench import common

TARGET_RATE = 5000.0
TARGET_RATIO = 0.8
CLI = str(Path(sys.executable).with_name("cityedge"))


class BenchError(RuntimeError):
    """A part of the benchmark did not start or did not finish in time."""


@dataclass
class RunResult:
    publish_rate: float
    baseline_rate: float
    fleet_rate: float
    events: int
    connected: int

    @property
    def ratio(self) -> float:
        return self.fleet_rate / self.baseline_rate


# --- the baseline: a raw paho subscriber in its own process --------------------------------------


def baseline_main(url: str, target: int) -> None:
    """Count events on the fleet's filters; print one JSON line when ``target`` have arrived.

    With ``target`` 0 it only creates its persistent session (subscribes) and leaves.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from hil.sim.config import parse_broker_url
    from protocol.topics import Topics

    host, port = parse_broker_url(url)
    state = {"count": 0, "first": 0.0}

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if "/events/" not in msg.topic:
            return
        state["count"] += 1
        if state["count"] == 1:
            state["first"] = time.time()
        if state["count"] == target:
            done = {"count": target, "first": state["first"], "last": time.time()}
            print(json.dumps(done), flush=True)

    def on_subscribe(client: mqtt.Client, *args: object) -> None:
        print("ready", flush=True)
        if target == 0:
            client.disconnect()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-baseline", protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    client.connect(host, port, keepalive=60, clean_start=target == 0, properties=props)
    if target == 0:
        client.subscribe([(f, 1) for f in Topics().fleet_filters()])
    else:
        print("ready", flush=True)
    signal.signal(signal.SIGTERM, lambda *a: client.disconnect())
    client.loop_forever()


# --- process helpers ------------------------------------------------------------------------------


class Lines:
    """Lines of a child's pipe, read by a thread, waited for by content."""

    def __init__(self, stream: IO[str]) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.queue.put(line.rstrip("\n"))

    def wait_for(self, needle: str, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                tail = "\n".join(self.seen[-10:])
                raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}; last output:\n{tail}")
            try:
                line = self.queue.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            self.seen.append(line)
            if needle in line:
                return line


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _wait_http(url: str, proc: subprocess.Popen[Any], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise BenchError(f"fleet exited with {proc.returncode}:\n{tail}")
        if _answers(url):
            return
        time.sleep(0.2)
    raise BenchError(f"fleet did not answer {url} within {timeout:.0f} s")


class Database:
    """Where the fleet stores events in one run: its URL and a cheap count of the events so far."""

    def __init__(self, url: str, sqlite_path: Path | None = None) -> None:
        self.url = url
        self.sqlite_path = sqlite_path

    def count(self) -> int:
        if self.sqlite_path is not None:
            return _count_sqlite(self.sqlite_path)
        return _count_postgresql(self.url)


def _count_postgresql(url: str) -> int:
    import psycopg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    try:
        with psycopg.connect(
            host=str(parsed.query["host"]), port=int(str(parsed.query["port"])), user="postgres",
            dbname=str(parsed.database), connect_timeout=5,
        ) as conn:  # fmt: skip
            row = conn.execute("SELECT count(*) FROM events").fetchone()
            return int(row[0]) if row else 0
    except psycopg.Error:  # the schema is not there yet
        return 0


def _count_sqlite(db: Path) -> int:
    """Events stored so far: max(rowid) is O(log n) (rows are only appended), count(*) as a fallback."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
            try:
                row = conn.execute("SELECT max(rowid) FROM events").fetchone()
            except sqlite3.OperationalError:  # a WITHOUT ROWID table
                row = conn.execute("SELECT count(*) FROM events").fetchone()
            return int(row[0] or 0)
    except sqlite3.Error:
        return 0


def _stop(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGCONT)
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def _children() -> Iterator[list[subprocess.Popen[Any]]]:
    procs: list[subprocess.Popen[Any]] = []
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            _stop(proc, signal.SIGINT if "sim" in proc.args else signal.SIGTERM)


# --- one run --------------------------------------------------------------------------------------


def _fleet(
    broker_url: str, db: Database, workdir: Path, procs: list[subprocess.Popen[Any]], *, wait: bool = True
) -> subprocess.Popen[Any]:
    """Start ``cityedge fleet serve`` (same worker id, so the same broker session); maybe wait until up."""
    from fleet.broker import free_port

    http = f"127.0.0.1:{free_port()}"
    log_path = workdir / "fleet.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [CLI, "fleet", "serve", "--broker", broker_url, "--db", db.url,
             "--http", http, "--data-dir", str(workdir / "fleet"), "--worker-id", "fleet-bench",
             "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    procs.append(proc)
    if wait:
        _wait_http(f"http://{http}/healthz", proc, log_path)
    return proc


def _baseline(broker_url: str, target: int, procs: list[subprocess.Popen[Any]]) -> Lines:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.fleet_ingest", "--baseline-subscriber", broker_url, str(target)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    procs.append(proc)
    assert proc.stdout is not None
    lines = Lines(proc.stdout)
    lines.wait_for("ready", 30, "the baseline subscriber")
    return lines


def _fleet_drain_rate(proc: subprocess.Popen[Any], db: Database, target: int, timeout: float = 300) -> float:
    """Events/s the fleet stores, from the first stored event to the last."""
    deadline = time.monotonic() + timeout
    first_at, first_count = 0.0, 0
    while (stored := db.count()) < target:
        if proc.poll() is not None:
            raise BenchError(f"the fleet exited with {proc.returncode} after storing {stored} of {target}")
        if stored and not first_at:
            first_at, first_count = time.monotonic(), stored
        if time.monotonic() > deadline:
            raise BenchError(f"the fleet stored {stored} of {target} events in {timeout:.0f} s")
        time.sleep(0.02)
    if not first_at:  # everything arrived between two polls
        raise BenchError("the fleet stored every event within one 20 ms poll: use more events")
    return (target - first_count) / (time.monotonic() - first_at)


def one_run(devices: int, per_device: int, workdir: Path, db: Database) -> RunResult:
    from fleet.broker import MosquittoBroker

    target = devices * per_device
    with MosquittoBroker(workdir / "broker") as broker, _children() as procs:
        _stop(_fleet(broker.url, db, workdir, procs))  # creates the fleet's persistent session
        _baseline(broker.url, 0, procs)  # and the baseline's
        sim = subprocess.Popen(
            [CLI, "sim", "--broker", broker.url, "--devices", str(devices), "--load-events", str(per_device),
             "--time-scale", "0.0001", "--telemetry-interval", "3600", "--id-prefix", "bench"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(sim)
        assert sim.stderr is not None
        sim_out = Lines(sim.stderr)
        done = sim_out.wait_for("load done", 300, "the simulator to publish its load")
        publish_rate = float(done.rsplit("(", 1)[1].split()[0])
        connected = max(int(line.split()[1].split("/")[0]) for line in sim_out.seen if "connected" in line)

        base_out = _baseline(broker.url, target, procs)
        report = json.loads(base_out.wait_for('"count"', 300, "the baseline to receive every event"))
        baseline_rate = (target - 1) / (report["last"] - report["first"])
        _stop(procs[-1])

        fleet = _fleet(broker.url, db, workdir, procs, wait=False)  # timed from its first stored event
        fleet_rate = _fleet_drain_rate(fleet, db, target)
    return RunResult(publish_rate, baseline_rate, fleet_rate, target, connected)


@contextlib.contextmanager
def _databases(kind: str) -> Iterator[Callable[[Path], Database]]:
    """A factory of fresh databases of ``kind`` (a PostgreSQL cluster lives as long as the context)."""
    if kind == "sqlite":
        yield lambda workdir: Database(f"sqlite:///{workdir / 'fleet.db'}", workdir / "fleet.db")
        return
    from hil.pgcluster import PgCluster, find_bindir

    bindir = find_bindir()
    if bindir is None:
        raise BenchError("PostgreSQL (initdb, pg_ctl) is not installed")
    cluster = PgCluster(bindir).start()
    try:
        yield lambda _workdir: Database(cluster.new_database())
    finally:
        cluster.stop()


def bench_db(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """``--runs`` runs on databases of ``kind``; prints the medians and the ratio."""
    total = args.devices * args.events_per_device
    print(
        f"fleet ingest on {kind}: {args.devices} devices x {args.events_per_device} events = {total} per run"
    )
    results: list[RunResult] = []
    with _databases(kind) as new_db:
        for i in range(args.runs):
            workdir = Path(tempfile.mkdtemp(prefix="cityedge-bench-ingest-"))
            try:
                r = one_run(args.devices, args.events_per_device, workdir, new_db(workdir))
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            results.append(r)
            print(f"  run {i + 1}: {r.connected} devices connected, sim sent {r.publish_rate:,.0f} events/s; "
                  f"raw paho {r.baseline_rate:,.0f}/s; fleet {r.fleet_rate:,.0f}/s "
                  f"(ratio {r.ratio:.2f})", flush=True)  # fmt: skip
    fleet = [r.fleet_rate for r in results]
    baseline = [r.baseline_rate for r in results]
    ratio = common.report(
        f"fleet ingest on {kind} (events stored/s)",
        "events/s",
        fleet,
        baseline,
        baseline_name="raw paho subscriber",
        target=f">= {TARGET_RATIO}; fleet >= {TARGET_RATE:,.0f} events/s",
        digits=0,
    )
    verdict = "meets" if common.median(fleet) >= TARGET_RATE else "is BELOW"
    print(f"  fleet {verdict} the {TARGET_RATE:,.0f} events/s target; ratio {ratio:.2f} "
          f"{'meets' if ratio >= TARGET_RATIO else 'is BELOW'} the {TARGET_RATIO} target")  # fmt: skip
    return {
        "db": kind,
        "devices": args.devices,
        "events_per_run": total,
        "runs": [asdict(r) | {"ratio": r.ratio} for r in results],
        "median_fleet_events_per_s": common.median(fleet),
        "median_baseline_events_per_s": common.median(baseline),
        "ratio_of_medians": ratio,
        "target_events_per_s": TARGET_RATE,
        "target_ratio": TARGET_RATIO,
    }


def main(argv: list[str] | None = None) -> int:
    parser = common.parser("Fleet ingest rate vs a raw paho subscriber, 2,000 simulated devices.")
    parser.add_argument(
        "--db", choices=("sqlite", "postgresql", "both"), default="both",
        help="the fleet's database: a SQLite file, a throwaway PostgreSQL cluster, or both in turn",
    )  # fmt: skip
    parser.add_argument("--devices", type=int, default=2000, help="simulated devices (default 2000)")
    parser.add_argument(
        "--events-per-device", type=int, default=20, help="load events per device (default 20)"
    )
    parser.add_argument("--json", action="store_true", help="also print the summary as JSON")
    parser.add_argument("--baseline-subscriber", nargs=2, metavar=("URL", "TARGET"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_subscriber:
        baseline_main(args.baseline_subscriber[0], int(args.baseline_subscriber[1]))
        return 0
    kinds = ("sqlite", "postgresql") if args.db == "both" else (args.db,)
    summaries = [bench_db(kind, args) for kind in kinds]
    if args.json:
        print(json.dumps(summaries if len(summaries) > 1 else summaries[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
