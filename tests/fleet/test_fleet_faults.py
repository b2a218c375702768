"""Database faults: retried without acknowledging, refused rows isolated, real PostgreSQL outage."""

from __future__ import annotations

import threading

import pytest
from fleet_helpers import FleetFactory, MakeDevice, wait_for
from fleet_pg import PgCluster
from sqlalchemy.exc import OperationalError

from fleet.apply import BatchOutcome
from fleet.inbound import Inbound
from fleet.store import Store


class FlakyStore(Store):
    """A store whose commits fail while ``down`` is set, as when the database is unreachable."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.down = threading.Event()
        self.failures = 0

    def apply(self, items: list[Inbound], **kwargs: object) -> BatchOutcome:
        if self.down.is_set():
            self.failures += 1
            raise OperationalError("INSERT", {}, Exception("database is unreachable"))
        return super().apply(items, **kwargs)  # type: ignore[arg-type]


def test_db_errors_are_retried_then_committed(
    db_url: str, make_fleet: FleetFactory, make_device: MakeDevice
) -> None:
    store = FlakyStore(db_url)
    store.down.set()
    fleet = make_fleet(store=store)
    device = make_device("cam-flt-0001").connect(announce=False)
    for _ in range(20):
        device.event()
    wait_for(lambda: fleet.stats.db_retries >= 3, what="retries")
    assert fleet.stats.committed == 0 and fleet.writer.alive
    store.down.clear()
    wait_for(lambda: fleet.store.counts()["events"] == 20, timeout=15, what="events after recovery")


def test_nothing_is_acknowledged_while_the_db_fails(
    db_url: str, make_fleet: FleetFactory, make_device: MakeDevice
) -> None:
    store = FlakyStore(db_url)
    store.down.set()
    failing = make_fleet(store=store, worker_id="fleet-flaky")
    device = make_device("cam-flt-0002").connect(announce=False)
    for _ in range(30):
        device.event()
    wait_for(lambda: store.failures >= 2, what="failing commits")
    failing.abort()  # dies during the outage: had it acknowledged anything, it would be lost
    healthy = make_fleet(worker_id="fleet-flaky")
    wait_for(lambda: healthy.store.counts()["events"] == 30, timeout=15, what="all events redelivered")


POSTGRES_ONLY = pytest.mark.parametrize(
    "db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


@POSTGRES_ONLY
def test_postgres_outage(pg_cluster: PgCluster, make_fleet: FleetFactory, make_device: MakeDevice) -> None:
    fleet = make_fleet()
    device = make_device("cam-flt-0003").connect(announce=False)
    for _ in range(10):
        device.event()
    wait_for(lambda: fleet.store.counts()["events"] == 10, what="first events")
    stopped = threading.Event()

    def outage() -> None:
        pg_cluster.outage(1.5)
        stopped.set()

    thread = threading.Thread(target=outage)
    thread.start()
    for _ in range(40):
        device.event()
    thread.join(60)
    assert stopped.is_set()
    wait_for(lambda: fleet.store.counts()["events"] == 50, timeout=30, what="events after the outage")
    assert fleet.stats.db_retries >= 1
    assert fleet.health()["ok"]


@POSTGRES_ONLY
def test_row_refused_by_postgres_is_counted_and_the_batch_kept(
    make_fleet: FleetFactory, make_device: MakeDevice
) -> None:
    fleet = make_fleet(batch_interval_s=0.3, batch_idle_s=0.3)
    device = make_device("cam-flt-0004").connect(announce=False)
    device.event(n=1)
    device.event(text="nul \u0000 byte")  # valid JSON, but PostgreSQL text cannot hold U+0000
    device.event(n=3)
    wait_for(lambda: fleet.store.counts()["events"] == 2, what="the two good events")
    wait_for(lambda: fleet.store.ingest_errors(), what="refused row counted")
    [error] = fleet.store.ingest_errors()
    assert (error["reason"], error["family"], error["count"]) == ("db_rejected", "events", 1)
    assert fleet.writer.alive
