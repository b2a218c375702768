"""A synthetic city registry for benchmarks, screenshots and tests: N device rows written straight
into the store (as ingest would have left them), with a realistic spread of roles, wards, versions,
states and telemetry. Deterministic for a given ``seed``."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from fleet.db import chunks, devices, site_of
from fleet.store import Store
from protocol.timefmt import format_ts, utc_now

WARDS = (
    "hn-bdh", "hn-hkm", "hn-dda", "hn-hbt", "hn-cgy", "hn-tho", "hn-txu", "hn-hma", "hn-lbi", "hn-bti",
    "hn-ntl", "hn-hdo", "hn-gbt", "hn-tlm", "hn-dan", "hn-gla", "hn-slo", "hn-tti", "hn-mli", "hn-btl",
)  # fmt: skip
VERSIONS = ("1.3.2", "1.4.0", "1.4.1")


def synthetic_rows(
    count: int, *, cameras: float = 0.85, seed: int = 7, now: datetime | None = None
) -> list[dict[str, Any]]:
    """``count`` device rows: ``cameras`` of them cameras, the rest kiosks; about 3 % offline,
    2 % silent (status online, not heard for 10 min), 1 % hot, 1 % with a nearly full disk."""
    rng = random.Random(seed)
    now = now or utc_now()
    rows = []
    for n in range(count):
        camera = n < count * cameras
        ward = WARDS[n % len(WARDS)]
        device = f"{'cam' if camera else 'kiosk'}-{ward}-{n:05d}"
        roll = rng.random()
        online = roll >= 0.03
        heard = now - timedelta(seconds=rng.uniform(0, 30))
        if 0.03 <= roll < 0.05:
            heard = now - timedelta(minutes=10 + rng.uniform(0, 60))  # silent: ended without a will
        elif not online:
            heard = now - timedelta(hours=rng.uniform(1, 48))
        version = VERSIONS[0 if rng.random() < 0.1 else 1 if rng.random() < 0.3 else 2]
        hot = rng.random() < 0.01
        telemetry = {
            "ts": format_ts(heard),
            "seq": rng.randrange(1, 100_000),
            "uptime_s": round(rng.uniform(100, 1e6), 1),
            "cpu_pct": round(rng.uniform(3, 90), 1),
            "mem_pct": round(rng.uniform(20, 80), 1),
            "disk_pct": round(rng.uniform(96, 99) if rng.random() < 0.01 else rng.uniform(10, 70), 1),
            "temp_c": round(rng.uniform(78, 90) if hot else rng.uniform(35, 60), 1),
            "outbox_depth": rng.randrange(0, 5),
        }
        status = {
            "online": online,
            "ts": format_ts(heard),
            "role": "camera" if camera else "kiosk",
            "version": version,
            "boot_id": f"boot-{n}",
        }
        rows.append(
            {
                "id": device,
                "role": status["role"],
                "version": version,
                "online": online,
                "boot_id": status["boot_id"],
                "first_seen": now - timedelta(days=30),
                "last_seen": heard,
                "status": status,
                "status_at": heard,
                "telemetry": telemetry,
                "telemetry_at": heard,
                "last_seq": rng.randrange(0, 50_000),
                "site": site_of(device),
            }
        )
    return rows


def fill(store: Store, count: int, **options: Any) -> list[dict[str, Any]]:
    """Write ``synthetic_rows(count, ...)`` into ``store`` (its schema must exist); returns them."""
    rows = synthetic_rows(count, **options)
    with store.writer.begin() as conn:
        for part in chunks(rows, 1000):
            conn.execute(devices.insert(), list(part))
    return rows


def fill_history(store: Store, device: str, *, hours: int = 24, seed: int = 7) -> int:
    """A day of 1-minute telemetry rollups for ``device`` (two messages a minute, a daily cycle)."""
    import math

    from fleet.db import telemetry_1m

    rng = random.Random(seed)
    now = utc_now().replace(second=0, microsecond=0)
    rows = []
    for m in range(hours * 60, 0, -1):
        minute = now - timedelta(minutes=m)
        day = math.sin(2 * math.pi * (minute.hour * 60 + minute.minute) / 1440)
        values = {
            "cpu_pct": 30 + 15 * day + rng.uniform(-5, 5),
            "mem_pct": 52 + rng.uniform(-2, 2),
            "disk_pct": 61 + m * 0.0001,
            "temp_c": 62 + 14 * day + rng.uniform(-1, 1) + (12 if m < 90 else 0),
        }
        rows.append({"device": device, "minute": minute, "n": 2, **{k: 2 * v for k, v in values.items()}})
    with store.writer.begin() as conn:
        for part in chunks(rows, 1000):
            conn.execute(telemetry_1m.insert(), list(part))
    return len(rows)
