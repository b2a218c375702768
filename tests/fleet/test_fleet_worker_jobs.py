"""Periodic jobs of several workers on one database: leases (one holder at a time, taken over when
it expires or is given back), and alert scans that stay right when another worker's batch commits
late."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timedelta

from fleet.alerts import AlertEngine, list_alerts, open_counts
from fleet.inbound import Inbound, classify
from fleet.leases import Leases
from fleet.store import Store
from protocol.timefmt import format_ts, utc_now
from protocol.topics import Topics

T = Topics()
DEVICE = "cam-hn-tho-0007"


def ev(kind: str, seq: int, at: datetime) -> Inbound:
    body = {
        "id": uuid.uuid4().hex,
        "seq": seq,
        "ts": format_ts(at),
        "device": DEVICE,
        "kind": kind,
        "data": {},
    }
    item = classify(
        T.event(DEVICE, kind),
        json.dumps(body).encode(),
        topics=T,
        received_at=at,
        max_bytes=lambda f, k: 1 << 16,
    )
    assert item.ok, item
    return item


def test_a_lease_has_one_holder_until_it_expires_or_is_given_back(store: Store) -> None:
    now = utc_now()
    a, b = Leases(store.writer, "fleet-a"), Leases(store.writer, "fleet-b")
    assert a.acquire("alerts", 30, now=now)
    assert not b.acquire("alerts", 30, now=now)
    assert a.acquire("alerts", 30, now=now + timedelta(seconds=10))  # renewed
    assert not b.acquire("alerts", 30, now=now + timedelta(seconds=35))
    assert b.acquire("alerts", 30, now=now + timedelta(seconds=41))  # a stopped renewing
    assert not a.acquire("alerts", 30, now=now + timedelta(seconds=42))
    assert b.holders()["alerts"][0] == "fleet-b"
    assert b.release_all(now=now + timedelta(seconds=43)) == 1
    assert a.acquire("alerts", 30, now=now + timedelta(seconds=44))


def test_racing_workers_never_both_hold_a_lease(store: Store) -> None:
    holders = [Leases(store.writer, f"fleet-{n}") for n in range(4)]
    won: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(len(holders))

    def race(lease: Leases) -> None:
        start.wait()
        for _ in range(10):
            if lease.acquire("rollouts", 60):
                with lock:
                    won.append(lease.holder)

    threads = [threading.Thread(target=race, args=(h,)) for h in holders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(set(won)) == 1 and len(won) == 10


def test_an_event_committed_late_by_another_worker_still_raises_its_alert(store: Store) -> None:
    now = utc_now()
    engine = AlertEngine(store)
    store.apply([ev("cabinet.overheat", 1, now)])  # worker B's batch, scanned at once
    assert engine.evaluate()["opened"] == 1
    store.apply([ev("cabinet.tamper", 0, now - timedelta(seconds=2))])  # worker A's, received earlier
    assert engine.evaluate()["opened"] == 1
    assert open_counts(store) == {"overheat": 1, "tamper": 1}
    assert engine.evaluate() == {"opened": 0, "resolved": 0}  # re-reading the overlap changes nothing


def test_re_reading_a_restore_does_not_resolve_a_later_outage(store: Store) -> None:
    now = utc_now()
    engine = AlertEngine(store)
    store.apply([ev("power.on_battery", 0, now - timedelta(seconds=20))])
    store.apply([ev("power.restored", 1, now - timedelta(seconds=10))])
    assert engine.evaluate() == {"opened": 1, "resolved": 1}
    store.apply([ev("power.on_battery", 2, now)])
    assert engine.evaluate()["opened"] == 1
    assert engine.evaluate() == {"opened": 0, "resolved": 0}
    assert open_counts(store) == {"on_battery": 1}
    opened, _ = list_alerts(store)
    assert [a["kind"] for a in opened] == ["on_battery"]
