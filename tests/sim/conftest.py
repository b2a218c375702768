"""Simulator fixtures: simulators on their own loops in threads, and MQTT observers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet_process import FleetProcess
from sim_helpers import Observer, SimThread

from fleet.broker import MosquittoBroker
from hil.sim.config import SimConfig


@pytest.fixture
def observer_factory(broker: MosquittoBroker) -> Iterator[Callable[..., Observer]]:
    made: list[Observer] = []

    def make(topic_filter: str = "city/v1/devices/+/#", client_id: str | None = None) -> Observer:
        obs = Observer(broker, topic_filter, client_id or f"observer-{len(made)}")
        made.append(obs)
        return obs

    yield make
    for obs in made:
        obs.close()


@pytest.fixture
def sim_factory(broker: MosquittoBroker) -> Iterator[Callable[..., SimThread]]:
    made: list[SimThread] = []

    def make(**settings: Any) -> SimThread:
        settings.setdefault("broker", broker.url)
        settings.setdefault("reconnect_min_s", 0.2)
        settings.setdefault("reconnect_max_s", 2.0)
        runner = SimThread(SimConfig(**settings)).start()
        made.append(runner)
        return runner

    yield make
    for runner in made:
        runner.stop()


@pytest.fixture
def fleet_process(broker: MosquittoBroker, tmp_path: Path) -> Iterator[FleetProcess]:
    """``cityedge fleet serve`` as a process on the test broker (SQLite), not yet started."""
    proc = FleetProcess(broker, tmp_path)
    try:
        yield proc
    finally:
        proc.stop()
