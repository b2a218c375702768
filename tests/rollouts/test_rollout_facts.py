"""Selection and OTA facts read from a real SQLite fleet database."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from fleet.db import create_schema, devices, make_engine
from fleet.otastate import record_ota
from fleet.rollouts.facts import device_facts, select_devices
from fleet.rollouts.plan import Selector, outcome

T0 = datetime(2026, 12, 5, 6, 0, tzinfo=timezone.utc)


def test_selection_and_facts(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    create_schema(engine)
    rows = [
        ("cam-1", "camera", "hn-btl-01", True),
        ("cam-2", "camera", "hn-btl-02", False),
        ("cam-3", "camera", "hcm-q1", True),
        ("kiosk-1", "kiosk", "hn-btl-01", True),
    ]
    with engine.begin() as conn:
        conn.execute(
            devices.insert(),
            [
                {
                    "id": name,
                    "role": role,
                    "version": "1.0.0",
                    "online": online,
                    "first_seen": T0,
                    "last_seen": T0,
                    "status": {"site": site},
                }
                for name, role, site, online in rows
            ],
        )
        record_ota(
            conn,
            [
                {
                    "device": "cam-1",
                    "seq": 5,
                    "kind": "ota.rolled_back",
                    "ts": T0,
                    "data": {"from": "1.0.0", "to": "1.1.0", "reason": "health check failed"},
                },
                {
                    "device": "cam-3",
                    "seq": 9,
                    "kind": "ota.committed",
                    "ts": T0,
                    "data": {"from": "0.9.0", "to": "1.0.0"},
                },
            ],
        )
    picked = select_devices(engine, Selector.parse("role=camera,site=hn-btl*"))
    assert picked == {"cam-1": "1.0.0", "cam-2": "1.0.0"}
    facts = device_facts(engine, "1.1.0", ["cam-1", "cam-2", "cam-3"])
    assert facts["cam-1"].ota_kind == "ota.rolled_back"
    assert facts["cam-1"].reason == "health check failed"
    assert not facts["cam-2"].online
    assert facts["cam-3"].online
    assert facts["cam-3"].ota_kind is None  # its report is about another release


def test_tick_all_reads_reports_from_the_database(tmp_path: Path) -> None:
    from datetime import timedelta

    from fleet.rollouts import store
    from fleet.rollouts.backend import OtaBackend
    from fleet.rollouts.driver import tick_all
    from fleet.rollouts.plan import Policy

    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    create_schema(engine)
    names = [f"cam-{i}" for i in range(10)]
    with engine.begin() as conn:
        conn.execute(
            devices.insert(),
            [
                {
                    "id": n,
                    "role": "camera",
                    "version": "1.0.0",
                    "online": True,
                    "first_seen": T0,
                    "last_seen": T0,
                }
                for n in names
            ],
        )
    policy = Policy(waves=(0.5, 1.0), min_executed=5, soak_s=0.0, deadline_s=60.0)
    store.create_rollout(engine, "r1", "1.1.0", "", policy, select_devices(engine, Selector()), T0)
    sent: list[str] = []

    class Recording(OtaBackend):
        def __init__(self) -> None:  # no desired-state service: the release goes to ``sent``
            self.engine = engine

        def set_release(self, device: str, release: str) -> None:
            sent.append(device)

        def set_releases(self, devices: Sequence[str], release: str) -> None:
            sent.extend(devices)

        def confirm(self, devices: Sequence[str]) -> bool:
            return True

    tick_all(engine, Recording(), T0)
    assert len(sent) == 5
    with engine.begin() as conn:
        record_ota(
            conn,
            [
                {"device": d, "seq": 1, "kind": "ota.committed", "ts": T0, "data": {"to": "1.1.0"}}
                for d in sent
            ],
        )
    later = T0 + timedelta(seconds=1)
    assert tick_all(engine, Recording(), later)["r1"].started_waves == 2
    assert sorted(sent) == names


def test_facts_say_since_when_a_device_is_online_and_count_one_running_the_release(tmp_path: Path) -> None:
    from datetime import timedelta

    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    create_schema(engine)
    back = T0 + timedelta(hours=2)
    with engine.begin() as conn:
        conn.execute(
            devices.insert(),
            [
                {"id": n, "version": v, "online": o, "status_at": at, "first_seen": T0, "last_seen": T0}
                for n, v, o, at in (
                    ("cam-back", "1.0.0", True, back),
                    ("cam-away", "1.0.0", False, back),
                    ("cam-done", "1.1.0", True, T0),
                )
            ],
        )
    facts = device_facts(engine, "1.1.0", ["cam-back", "cam-away", "cam-done"])
    assert facts["cam-back"].online_since == back.timestamp() and facts["cam-back"].ota_kind is None
    assert facts["cam-away"].online_since is None
    assert facts["cam-done"].ota_kind == "ota.committed"
    # a device that comes back long after it was targeted gets the whole deadline from then on
    assert outcome(facts["cam-back"], T0.timestamp(), back.timestamp() + 60, deadline_s=600) == "pending"
    assert outcome(facts["cam-back"], T0.timestamp(), back.timestamp() + 601, deadline_s=600) == "failed"
