"""Ramp-up of 2,000 devices on one loop, and the ``cityedge sim`` command line end to end."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sim_helpers import Observer, SimThread, wait_until

from fleet.broker import MosquittoBroker

CLI = [str(Path(sys.executable).with_name("cityedge"))]


def test_2000_devices_connect_on_one_loop(
    broker: MosquittoBroker, sim_factory: Callable[..., SimThread], observer_factory: Callable[..., Observer]
) -> None:
    # The observer comes first: paho's select() loop cannot watch descriptors above 1024, and the
    # simulator in this process opens thousands.
    obs = observer_factory("city/v1/devices/+/status")
    started = time.monotonic()
    sim = sim_factory(devices=2000, telemetry_interval_s=30)
    sim.wait_connected(timeout=60)
    ramp = time.monotonic() - started
    assert sim.stats.ramp_s is not None and ramp < 60
    obs.wait_for(lambda ms: len({m.topic for m in ms}) >= 2000, "/status", 30, "2,000 online statuses")
    assert all(m.json()["online"] for m in obs.snapshot())
    summary = sim.stop(timeout=60).summary()
    assert summary["connected_peak"] == 2000 and summary["failed_attempts"] == 0
    print(f"2,000 devices connected in {summary['ramp_s']:.1f} s")


def test_cli_runs_for_a_duration_and_prints_a_json_summary(broker: MosquittoBroker) -> None:
    out = subprocess.run(
        [*CLI, "sim", "--broker", broker.url, "--devices", "4", "--duration", "1.5", "--json", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["connected_peak"] == 4 and summary["connected"] == 0
    assert summary["messages_sent"] >= 4 * 3  # online, shadow, offline at least


def test_cli_stops_cleanly_on_sigint(
    broker: MosquittoBroker, observer_factory: Callable[..., Observer]
) -> None:
    obs = observer_factory("city/v1/devices/+/status")
    proc = subprocess.Popen(
        [*CLI, "sim", "--broker", broker.url, "--devices", "6", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        obs.wait_for(lambda ms: len(ms) >= 6, "/status", 20, "6 online statuses")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert json.loads(stdout)["connected_peak"] == 6
    wait_until(lambda: sum(not m.json()["online"] for m in obs.snapshot()) >= 6, 10, "6 offline statuses")


def test_cli_refuses_a_bad_broker_url() -> None:
    out = subprocess.run([*CLI, "sim", "--broker", "http://x"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "mqtt://HOST:PORT" in out.stderr


def test_cli_says_why_when_no_device_can_connect() -> None:
    from fleet.broker import free_port

    url = f"mqtt://127.0.0.1:{free_port()}"  # nobody listens there
    out = subprocess.run(
        [*CLI, "sim", "--broker", url, "--devices", "2", "--duration", "1.5", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1
    assert "no device could connect" in out.stderr and "Connection refused" in out.stderr
    assert json.loads(out.stdout)["failed_attempts"] >= 2
