"""The simulator split over processes against a real fleet, and its connection retries.

Events acknowledged by the broker (PUBACK) must all be stored by the fleet: ``cityedge sim``
counts acknowledgements, not publications, so the two compare exactly.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from sim_helpers import SimThread, wait_until

from fleet.broker import BrokerConfig, MosquittoBroker, free_port
from fleet.config import FleetConfig
from fleet.service import FleetService

CLI = [str(Path(sys.executable).with_name("cityedge"))]


@pytest.fixture
def fleet(broker: MosquittoBroker, tmp_path: Path) -> Iterator[FleetService]:
    config = FleetConfig(
        broker_url=broker.url,
        db_url=f"sqlite:///{tmp_path / 'fleet.db'}",
        worker_id="fleet-sim-test",
        data_dir=tmp_path / "fleet",
        batch_interval_s=0.02,
        reconnect_max_s=2,
    )
    service = FleetService(config).start()
    try:
        yield service
    finally:
        service.stop()


def test_200_devices_over_2_processes_every_acknowledged_event_is_stored(
    broker: MosquittoBroker, fleet: FleetService
) -> None:
    # Scenario time x60: each camera counts traffic every real second, kiosks finish sessions.
    args = ["sim", "--broker", broker.url, "-n", "200", "--cameras", "170", "--procs", "2"]
    args += ["--time-scale", "60", "--telemetry-interval", "2", "--duration", "8", "--json"]
    out = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and "Bad file descriptor" not in out.stderr
    summary = json.loads(out.stdout)
    assert summary["procs"] == 2 and summary["ever_connected"] == 200 and summary["connected"] == 0
    assert summary["events_unacked"] == 0 and summary["events_acked"] > 200
    acked = summary["events_acked"]
    wait_until(lambda: fleet.store.counts()["events"] >= acked, 60, f"{acked} events stored")
    counts = fleet.store.counts()
    assert counts["events"] == acked  # nothing lost, nothing more
    assert counts["devices"] == 200
    roles = [d["role"] for d in fleet.store.devices()]
    assert roles.count("camera") == 170 and roles.count("kiosk") == 30
    wait_until(lambda: not fleet.store.devices(online=True), 30, "every device offline after goodbye")


def test_devices_retry_until_the_broker_appears(
    tmp_path: Path, sim_factory: Callable[..., SimThread]
) -> None:
    late = MosquittoBroker(tmp_path / "late", BrokerConfig(port=free_port()))
    sim = sim_factory(broker=late.url, devices=20, reconnect_min_s=0.1, reconnect_max_s=0.5)
    wait_until(lambda: sim.stats.failed_attempts >= 40, 60, "refused connection attempts")
    assert sim.stats.connected == 0 and "Connection refused" in sim.stats.last_error
    late.start()
    try:
        sim.wait_connected(timeout=60)
        summary = sim.stop().summary()
        assert summary["ever_connected"] == 20 and summary["reconnects"] == 0
    finally:
        late.stop()


def test_a_broker_that_never_answers_costs_no_sockets(sim_factory: Callable[..., SimThread]) -> None:
    # Something that accepts TCP connections (the kernel does, into the backlog) but never sends
    # a CONNACK: each attempt times out, and its socket must be closed before the next one.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(512)
        port = silent.getsockname()[1]
        sim = sim_factory(
            broker=f"mqtt://127.0.0.1:{port}",
            devices=4,
            connect_timeout_s=0.3,
            reconnect_min_s=0.05,
            reconnect_max_s=0.1,
        )
        wait_until(lambda: sim.stats.connect_timeouts >= 24, 60, "six timed-out attempts per device")

        def open_to_silent() -> int:
            conns = psutil.Process().net_connections(kind="tcp")
            return sum(1 for c in conns if c.raddr and c.raddr.port == port and c.status == "ESTABLISHED")

        assert open_to_silent() <= 4  # at most the attempts in flight now
        assert "timed out" in sim.stats.last_error
        summary = sim.stop().summary()
        assert summary["ever_connected"] == 0 and summary["failed_attempts"] >= 24
