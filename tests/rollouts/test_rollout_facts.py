"""Selection and OTA facts read from a real SQLite fleet database."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from fleet.db import create_schema, devices, make_engine
from fleet.otastate import record_ota
from fleet.rollouts.facts import device_facts, select_devices
from fleet.rollouts.plan import Selector

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
