"""City scale: N simulated devices (85 % cameras) against one mosquitto and one ``fleet serve``.

    python -m bench.fleet_scale [--devices 19975] [--db postgresql|sqlite|URL] [--steady 150]
                                [--sample 100] [--json]

Starts a private mosquitto, a throwaway PostgreSQL cluster (``hil.pgcluster``; or a SQLite file,
or a database URL), ``cityedge fleet serve`` on them, and ``cityedge sim`` with the city profile
(cameras and kiosks, telemetry every 30 s, a traffic count per camera a minute, kiosk sessions;
worker processes as the simulator chooses). Measured:

- time from the simulator's start until ``/api/overview`` shows every device online, next to the
  simulator's own ramp (all connected at its end) as the same-run baseline;
- status freshness: ``--sample`` devices get a ``restart`` command; from the ``ts`` of the status
  with their new boot id until ``GET /api/devices/ID`` shows it (p50/p99), against a raw paho
  subscriber receiving the same status (bench/scale_probe.py);
- events acknowledged by the broker (the simulator's PUBACK count) against events stored by the
  fleet once it has drained: lost = acknowledged - stored, must be 0;
- peak resident memory of the fleet (with its writer process), the broker and the simulator.

One mosquitto holds one descriptor per connection: the bench refuses more devices than the
open-file limit allows (``ulimit -Hn`` minus a margin for the broker's own files).
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import common
from bench.fleet_ingest import CLI, BenchError, _children, _stop, _wait_http
from bench.scale_probe import Api, RssSampler, StatusProbe, freshness, percentile
from fleet.auth.tokens import create_token
from fleet.broker import MosquittoBroker, free_port
from hil.sim.config import SimConfig
from hil.sim.swarm import device_ids
from protocol.topics import Topics

TARGET_ONLINE_S = 60.0
TARGET_FRESH_P99_S = 5.0
FD_MARGIN = 24
"""Descriptors mosquitto needs besides its clients (listener, log, epoll, the fleet, the probe)."""
ID_PREFIX = "hn"


def max_devices() -> int:
    """Most devices one mosquitto started from here can hold (its open-file limit is inherited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0] - FD_MARGIN


@contextmanager
def database(choice: str, workdir: Path) -> Iterator[str]:
    """A database URL: a fresh throwaway PostgreSQL cluster, a SQLite file, or the URL given."""
    if choice == "sqlite":
        yield f"sqlite:///{workdir / 'fleet.db'}"
        return
    if choice != "postgresql":
        yield choice
        return
    from hil.pgcluster import PgCluster, find_bindir

    bindir = find_bindir()
    if bindir is None:
        raise BenchError("PostgreSQL server binaries (initdb) are not installed; use --db sqlite")
    cluster = PgCluster(bindir).start()
    try:
        yield cluster.new_database()
    finally:
        cluster.stop()


def _fleet(broker_url: str, db_url: str, workdir: Path, procs: list[Any]) -> tuple[Any, str]:
    http = f"127.0.0.1:{free_port()}"
    log_path = workdir / "fleet.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [CLI, "fleet", "serve", "--broker", broker_url, "--db", db_url, "--http", http,
             "--data-dir", str(workdir / "fleet"), "--worker-id", "fleet-scale", "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    procs.append(proc)
    _wait_http(f"http://{http}/healthz", proc, log_path)
    return proc, f"http://{http}"


def _sim(args: argparse.Namespace, broker_url: str, workdir: Path, procs: list[Any]) -> Any:
    cmd = [CLI, "sim", "--broker", broker_url, "--devices", str(args.devices), "--cameras", str(args.cameras),
           "--telemetry-interval", "30", "--id-prefix", ID_PREFIX, "--json", "--quiet"]  # fmt: skip
    if args.procs:
        cmd += ["--procs", str(args.procs)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=(workdir / "sim.log").open("wb"), text=True)
    procs.append(proc)
    return proc


def _wait_online(api: Api, sim: Any, want: int, timeout: float) -> tuple[float | None, int]:
    started, seen = time.monotonic(), 0
    while time.monotonic() - started < timeout:
        if sim.poll() is not None:
            raise BenchError(f"the simulator exited with {sim.returncode}")
        seen = api.online()
        if seen >= want:
            return time.monotonic() - started, seen
        time.sleep(0.5)
    return None, seen


def _drain(api: Api, acked: int, timeout: float) -> tuple[int, float]:
    """Wait until the fleet has stored ``acked`` events (or stops gaining); (stored, seconds)."""
    started, stored, last_gain = time.monotonic(), -1, time.monotonic()
    while time.monotonic() - started < timeout:
        now = api.stored_events()
        if now != stored:
            stored, last_gain = now, time.monotonic()
        if stored >= acked or time.monotonic() - last_gain > 30:
            break
        time.sleep(0.5)
    return stored, time.monotonic() - started


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    cfg = SimConfig(
        broker="mqtt://127.0.0.1:1", devices=args.devices, cameras=args.cameras, id_prefix=ID_PREFIX
    )
    ids = [i for i, _ in device_ids(cfg)]
    sample = ids[:: max(1, len(ids) // args.sample)][: args.sample]
    results: dict[str, Any] = {"devices": args.devices, "cameras": args.cameras, "procs": cfg.worker_procs}
    with database(args.db, workdir) as db_url, MosquittoBroker(workdir / "broker") as broker:
        results["db"] = db_url.split(":", 1)[0]
        with _children() as procs:
            results.update(_run(args, broker, db_url, sample, workdir, procs))
    return results


def _run(
    args: argparse.Namespace,
    broker: MosquittoBroker,
    db_url: str,
    sample: list[str],
    workdir: Path,
    procs: list[Any],
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    token = create_token(db_url, "viewer", "bench-scale", "1d")
    fleet, base = _fleet(broker.url, db_url, workdir, procs)
    api = Api(base, token)
    probe = StatusProbe(broker.url, sample, Topics())
    assert broker.proc is not None
    sim = _sim(args, broker.url, workdir, procs)
    rss = RssSampler({"fleet": fleet.pid, "broker": broker.proc.pid, "sim": sim.pid})
    try:
        started = time.monotonic()
        online_s, seen = _wait_online(api, sim, args.devices, args.online_timeout)
        results["online_s"], results["online_seen"] = online_s, seen
        print(f"  online in the fleet: {seen}/{args.devices} after {online_s} s", flush=True)
        fresh = freshness(api, probe, sample, batch=10, timeout=30)
        results.update(fresh_api_s=fresh.api_s, fresh_raw_s=fresh.raw_s, fresh_missed=fresh.missed)
        time.sleep(max(0.0, args.steady - (time.monotonic() - started)))
        _stop(sim, signal.SIGINT, timeout=300)
        results["sim"] = summary = json.loads(sim.stdout.read() or "{}") if sim.stdout else {}
        acked = int(summary.get("events_acked", 0))
        print(
            f"  simulator stopped: {acked} events acknowledged; waiting for the fleet to store them",
            flush=True,
        )
        stored, drain_s = _drain(api, acked, args.drain_timeout)
        results.update(events_acked=acked, events_stored=stored, drain_s=drain_s)
        rss.sample()
        results["rss_peak"], results["rss_end"] = rss.peak, rss.last
    finally:
        rss.stop()
        probe.close()
        api.close()
    return results


def report(results: dict[str, Any]) -> bool:
    mb = 1024 * 1024
    sim = results["sim"]
    print(f"{results['devices']} devices ({results['cameras']} cameras), fleet on {results['db']}, "
          f"simulator in {sim.get('procs')} processes")  # fmt: skip
    online, ramp = results["online_s"], sim.get("ramp_s")
    print(f"  all online in /api/overview: {online if online is None else round(online, 1)} s "
          f"after the simulator started (target < {TARGET_ONLINE_S:.0f} s)")  # fmt: skip
    if online is not None and ramp:
        print(
            f"  baseline: the simulator's own ramp (all connected): {ramp:.1f} s; ratio {online / ramp:.2f}"
        )
    api_s, raw_s = results["fresh_api_s"], results["fresh_raw_s"]
    if api_s and raw_s:
        print(
            f"  status freshness via the API: p50 {percentile(api_s, 0.5):.3f} s, p99 "
            f"{percentile(api_s, 0.99):.3f} s over {len(api_s)} devices (target p99 < {TARGET_FRESH_P99_S} s)"
        )
        print(f"  baseline: raw paho subscriber: p50 {percentile(raw_s, 0.5):.3f} s, "
              f"p99 {percentile(raw_s, 0.99):.3f} s; ratio of p99s "
              f"{percentile(api_s, 0.99) / max(percentile(raw_s, 0.99), 1e-3):.1f}")  # fmt: skip
    if results["fresh_missed"]:
        print(f"  not seen in the API within 30 s: {len(results['fresh_missed'])} devices")
    acked, stored = results["events_acked"], results["events_stored"]
    print(f"  events acknowledged by the broker: {acked}; stored by the fleet: {stored} "
          f"(after {results['drain_s']:.1f} s of drain); lost: {acked - stored}; "
          f"ratio stored/acked {stored / max(acked, 1):.4f}")  # fmt: skip
    peak = results["rss_peak"]
    print(f"  peak RSS: fleet (with its writer) {peak['fleet'] / mb:.0f} MB, "
          f"broker {peak['broker'] / mb:.0f} MB, "
          f"simulator {peak['sim'] / mb:.0f} MB")  # fmt: skip
    ok = online is not None and online < TARGET_ONLINE_S and acked == stored and acked > 0
    return ok and bool(api_s) and percentile(api_s, 0.99) < TARGET_FRESH_P99_S and not results["fresh_missed"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="City scale: simulated devices against one broker and fleet.")
    p.add_argument("--devices", type=int, default=None, help="simulated devices (default: as many as fit)")
    p.add_argument("--cameras", type=int, default=None, help="how many are cameras (default 85 %%)")
    p.add_argument("--procs", type=int, default=0, help="simulator processes (default: one per 5,000)")
    p.add_argument("--db", default="postgresql", help="postgresql (throwaway cluster), sqlite, or a URL")
    p.add_argument("--steady", type=float, default=150.0, help="seconds from the start to the stop")
    p.add_argument("--sample", type=int, default=100, help="devices timed for status freshness")
    p.add_argument("--online-timeout", type=float, default=240.0)
    p.add_argument("--drain-timeout", type=float, default=300.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    common.exit_on_sigterm()
    limit = max_devices()
    args.devices = args.devices or min(20_000, limit)
    if args.devices > limit:
        print(f"{args.devices} devices need {args.devices + FD_MARGIN} open files in mosquitto; this "
              f"machine's limit is {limit + FD_MARGIN} (ulimit -Hn): use --devices {limit} or fewer",
              file=sys.stderr)  # fmt: skip
        return 2
    args.cameras = round(0.85 * args.devices) if args.cameras is None else args.cameras
    with tempfile.TemporaryDirectory(prefix="cityedge-bench-scale-") as tmp:
        results = measure(args, Path(tmp))
    ok = report(results)
    if args.json:
        print(json.dumps(results))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
