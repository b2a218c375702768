"""Time for a rollout wave to reach its devices, against raw paho publishing as many retained messages.

    python -m bench.rollout_wave [--devices 2000,20000] [--runs 3] [--json]

For each device count: a private mosquitto, ``cityedge fleet serve`` (SQLite, desired states signed
by its key ring) and ``cityedge sim`` (a separate process; updates take an hour, so none finishes
during the measurement). A host allows 20,000 open files per process, which caps one mosquitto
below 20,000 connections: above ``--max-online`` devices, the rest register once and go offline
(their desired states wait for them retained, as for any device that is away).

Each run starts a one-wave rollout (``--waves 100%``) of a new release over every device and times
from the first desired state on the wire (the wave's start) to the moment every online device has
reported, in its retained ``shadow/reported``, that it holds the new release. The baseline, in the
same run: one raw paho client publishes one retained desired state of the same shape to each online
device, timed the same way (first publish to last report). The rollout completes by itself (a one
second deadline, no failure limit), so the next run can start. Printed: medians and their ratio.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import common
from bench.fleet_ingest import CLI, BenchError, Lines, _children, _stop, _wait_http

MAX_ONLINE = 19_900
BASELINE_VERSION = 1_000_000
"""Desired version of the baseline's states: above anything the fleet has used, so devices apply them."""


@dataclass
class RunResult:
    wave_s: float  # first desired state of the wave on the wire -> every online device holds it
    start_s: float  # POST /api/rollouts -> every online device holds it
    targeting_s: float  # first -> last desired state of the wave on the wire
    baseline_s: float

    @property
    def ratio(self) -> float:
        return self.wave_s / self.baseline_s


class Watcher:
    """A paho client that notes the first desired state and each device's report of each release."""

    def __init__(self, broker_url: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from hil.sim.config import parse_broker_url

        self._lock = threading.Condition()
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.holding: dict[str, set[str]] = {}
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="bench-watcher", protocol=mqtt.MQTTv5
        )
        self.client.on_message = self._on_message
        host, port = parse_broker_url(broker_url)
        self.client.connect(host, port, keepalive=60)
        self.client.subscribe(
            [("city/v1/devices/+/shadow/desired", 1), ("city/v1/devices/+/shadow/reported", 1)]
        )
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        release = (body.get("release") or {}).get("version") if isinstance(body, dict) else None
        if not isinstance(release, str):
            return
        with self._lock:
            if msg.topic.endswith("/desired"):
                self.first.setdefault(release, time.monotonic())
                self.last[release] = time.monotonic()
            else:
                self.holding.setdefault(release, set()).add(msg.topic.split("/")[3])
                self._lock.notify_all()

    def wait_all(self, release: str, count: int, timeout: float) -> float:
        """Monotonic time when ``count`` devices report holding ``release``."""
        with self._lock:
            ok = self._lock.wait_for(lambda: len(self.holding.get(release, ())) >= count, timeout)
            if not ok:
                got = len(self.holding.get(release, ()))
                raise BenchError(f"{got} of {count} devices hold {release} after {timeout:.0f} s")
            return time.monotonic()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Api:
    def __init__(self, url: str, token: str) -> None:
        self.url, self.headers = url, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=self.headers)
        with urllib.request.urlopen(request, timeout=60) as resp:
            return json.load(resp)

    def wait(self, what: str, predicate: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, sqlite3.Error):
                value = predicate()
                if value:
                    return value
            time.sleep(0.5)
        raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")


def _online(db: Path) -> int:
    """Devices the fleet has stored as online (the API's count leaves out quiet ones)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        return int(conn.execute("SELECT count(*) FROM devices WHERE online").fetchone()[0])


def _applied_at_least(db: Path, version: int) -> int:
    """Devices whose stored reported shadow says they applied desired ``version`` or later."""
    query = "SELECT count(*) FROM devices WHERE json_extract(shadow_reported, '$.config_version') >= ?"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        return int(conn.execute(query, (version,)).fetchone()[0])


def _baseline(broker_url: str, devices: list[str], release: str, version: int) -> float:
    """Publish one retained desired state per device as fast as paho goes; monotonic start time."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from hil.sim.config import parse_broker_url

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(100)
    host, port = parse_broker_url(broker_url)
    client.connect(host, port, keepalive=60)
    client.loop_start()
    sig = {"alg": "ed25519", "kid": "bench", "value": "A" * 88}  # the size of a real signature
    started = time.monotonic()
    infos = []
    for device in devices:
        body = {"version": version, "device": device, "config": {}, "issued_at": "2026-12-05T00:00:00Z",
                "expires_at": "2027-01-04T00:00:00Z", "nonce": "0" * 32, "sig": sig,
                "release": {"version": release, "target": f"releases/{release}.json",
                            "allow_downgrade": False, "force": False}}  # fmt: skip
        infos.append(client.publish(f"city/v1/devices/{device}/shadow/desired", json.dumps(body), 1, True))
    for info in infos:
        info.wait_for_publish(120)
    client.disconnect()
    client.loop_stop()
    return started


def _start_fleet(broker_url: str, workdir: Path, procs: list[subprocess.Popen[Any]]) -> Api:
    from fleet.auth.tokens import create_token
    from fleet.broker import free_port
    from fleet.keys_cli import init_keys

    db = f"sqlite:///{workdir / 'fleet.db'}"
    init_keys(workdir / "fleet", workdir / "fleet-root.pem")
    token = create_token(db, "admin", "bench", "1d")
    http = f"127.0.0.1:{free_port()}"
    log_path = workdir / "fleet.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [CLI, "fleet", "serve", "--broker", broker_url, "--db", db, "--http", http,
             "--data-dir", str(workdir / "fleet"), "--worker-id", "fleet-bench",
             "--signer", "fleet.signer:load_fleet_signer", "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    procs.append(proc)
    _wait_http(f"http://{http}/healthz", proc, log_path)
    return Api(f"http://{http}", token)


def _sim(
    broker_url: str, devices: int, prefix: str, procs: list[subprocess.Popen[Any]]
) -> subprocess.Popen[Any]:
    proc = subprocess.Popen(
        [CLI, "sim", "--broker", broker_url, "--devices", str(devices), "--id-prefix", prefix,
         "--version", "1.0.0", "--telemetry-interval", "3600", "--time-scale", "0.0001",
         "--ota-seconds", "3000..3600", "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    procs.append(proc)
    assert proc.stderr is not None
    Lines(proc.stderr)  # drained, so the child never blocks on a full pipe
    return proc


def measure(devices: int, runs: int, max_online: int, workdir: Path) -> list[RunResult]:
    from fleet.broker import MosquittoBroker
    from hil.sim.config import SimConfig
    from hil.sim.swarm import device_ids

    online = min(devices, max_online)
    away = devices - online
    results: list[RunResult] = []
    with MosquittoBroker(workdir / "broker") as broker, _children() as procs:
        watcher = Watcher(broker.url)
        try:
            api = _start_fleet(broker.url, workdir, procs)

            if away:  # registered once, then gone
                gone = _sim(broker.url, away, "away", procs)
                api.wait(f"{away} devices registered", lambda: _online(workdir / "fleet.db") >= away, 300)
                _stop(gone, timeout=120)
            _sim(broker.url, online, "bench", procs)
            api.wait(f"{online} devices online", lambda: _online(workdir / "fleet.db") == online, 900)
            names = [
                d for d, _role in device_ids(SimConfig(broker=broker.url, devices=online, id_prefix="bench"))
            ]
            for run in range(runs):
                release = f"4.{run}.0"
                posted = time.monotonic()
                rollout = api.call(
                    "POST",
                    "/api/rollouts",
                    {"release": release, "waves": "100%", "deadline": "1s", "max_failure": "100%",
                     "min_executed": 1, "soak": "0s"},
                )  # fmt: skip
                if rollout["planned"] != devices:
                    raise BenchError(f"the rollout planned {rollout['planned']} devices, not {devices}")
                done = watcher.wait_all(release, online, 1800)
                wave_s, start_s = done - watcher.first[release], done - posted
                api.wait(
                    "the rollout to complete",
                    lambda rid=rollout["id"]: api.call("GET", f"/api/rollouts/{rid}")["state"] == "complete",
                    600,
                )
                base_release, base_version = f"5.{run}.0", BASELINE_VERSION * (run + 1)
                started = _baseline(broker.url, names, base_release, base_version)
                baseline_s = watcher.wait_all(base_release, online, 1800) - started
                # the fleet's next desired version must lie above what the devices applied
                api.wait(
                    "the fleet to store what the devices applied",
                    lambda v=base_version: _applied_at_least(workdir / "fleet.db", v) >= online,
                    600,
                )
                targeting_s = watcher.last[release] - watcher.first[release]
                results.append(RunResult(wave_s, start_s, targeting_s, baseline_s))
                print(f"  {devices} devices, run {run + 1}: wave {wave_s:.2f} s (desired states sent in "
                      f"{targeting_s:.2f} s; from the start request {start_s:.2f} s); "
                      f"raw paho {baseline_s:.2f} s", flush=True)  # fmt: skip
        finally:
            watcher.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = common.parser("Rollout wave: desired state on every online device, vs raw paho.")
    parser.add_argument("--devices", default="2000,20000", help="device counts (default 2000,20000)")
    parser.add_argument(
        "--max-online", type=int, default=MAX_ONLINE, help=f"most devices connected at once ({MAX_ONLINE})"
    )
    parser.add_argument("--json", action="store_true", help="also print the summary as JSON")
    args = parser.parse_args(argv)
    common.exit_on_sigterm()
    summary: dict[str, Any] = {}
    for devices in (int(n) for n in args.devices.split(",")):
        online = min(devices, args.max_online)
        print(f"rollout wave over {devices} devices ({online} online), {args.runs} runs", flush=True)
        workdir = Path(tempfile.mkdtemp(prefix="cityedge-bench-rollout-"))
        try:
            results = measure(devices, args.runs, args.max_online, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        wave = [r.wave_s for r in results]
        ratio = common.report(
            f"rollout wave, {devices} devices: start -> every online device holds its desired state",
            "s",
            wave,
            [r.baseline_s for r in results],
            baseline_name="raw paho, one retained message per device",
            digits=2,
        )
        from_request = common.median([r.start_s for r in results])
        print(f"  from the start request (includes the tick, at most 1 s later): {from_request:.2f} s")
        summary[str(devices)] = {
            "online": online,
            "runs": [asdict(r) | {"ratio": r.ratio} for r in results],
            "median_wave_s": common.median(wave),
            "median_baseline_s": common.median([r.baseline_s for r in results]),
            "ratio_of_medians": ratio,
        }
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
