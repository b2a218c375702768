"""Fleet fixtures: a database URL per backend (SQLite file, throwaway PostgreSQL), fleet workers."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet_helpers import FakeDevice, FleetFactory, MakeDevice
from fleet_pg import PgCluster, find_bindir

from fleet.broker import MosquittoBroker
from fleet.config import FleetConfig
from fleet.service import FleetService
from fleet.store import Store

_ids = itertools.count(1)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One throwaway PostgreSQL for the session; skipped only when initdb is not installed."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb) not installed: sudo apt-get install postgresql")
    cluster = PgCluster(bindir).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file, or a fresh database in the throwaway cluster."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.db'}"
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return cluster.new_database()


def fleet_config(broker: MosquittoBroker, db_url: str, **overrides: Any) -> FleetConfig:
    settings: dict[str, Any] = {
        "broker_url": broker.url,
        "db_url": db_url,
        "worker_id": f"fleet-test-{next(_ids)}",
        "retained_sync_s": 0,
        "batch_interval_s": 0.02,
        "rpc_timeout_s": 2.0,
        "reconnect_max_s": 2,
    }
    settings.update(overrides)
    return FleetConfig(**settings)


@pytest.fixture
def make_fleet(broker: MosquittoBroker, db_url: str) -> Iterator[FleetFactory]:
    """Start fleet workers on the test broker and database; all are stopped afterwards."""
    started: list[FleetService] = []

    def make(
        *, signer: Any = None, rpc_registry: Any = None, store: Any = None, **overrides: Any
    ) -> FleetService:
        config = fleet_config(broker, db_url, **overrides)
        service = FleetService(config, signer=signer, rpc_registry=rpc_registry, store=store)
        started.append(service.start())
        return service

    yield make
    for service in started:
        service.stop()


@pytest.fixture
def fleet(make_fleet: FleetFactory) -> FleetService:
    return make_fleet()


@pytest.fixture
def make_device(broker: MosquittoBroker) -> Iterator[MakeDevice]:
    devices: list[FakeDevice] = []

    def make(device_id: str, **kwargs: Any) -> FakeDevice:
        device = FakeDevice(broker, device_id, **kwargs)
        devices.append(device)
        return device

    yield make
    for device in devices:
        device.close()


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A store with its schema on the test's database (no fleet worker)."""
    s = Store(db_url)
    s.create_schema()
    yield s
    s.dispose()
