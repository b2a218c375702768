"""The device listing at city scale: ``GET /api/devices`` pages with 20,000 devices in the store.

    python -m bench.fleet_devices [--devices 20000] [--requests 40] [--runs 3] [--db-url URL]

Fills a fresh store (SQLite file by default; ``--db-url`` for PostgreSQL, whose database must be
empty) with a synthetic city (fleet/synthetic.py: 85 % cameras in 20 wards, some offline, silent,
hot), serves the fleet app in uvicorn on loopback and times, with a bearer token, the queries the
operations dashboard makes: first page, a sort, filters by state, ward, version and open alert, and
an id search, each ``limit=100``. Printed: p95 and median per query, and the ratio of the worst p95
to the baseline measured in the same run: the whole registry read unpaged (what ``GET
/api/devices`` answered before it was paged). Target: every ``/api/devices`` p95 < 100 ms (the
overview, one request per dashboard load, is shown beside them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench import common
from bench.fleet_auth import serving, timed
from fleet.api import create_app
from fleet.auth.tokens import issue
from fleet.config import FleetConfig
from fleet.service import FleetService
from fleet.synthetic import fill

TARGET_MS = 100.0
QUERIES: tuple[tuple[str, dict[str, str]], ...] = (
    ("first page", {"limit": "100"}),
    ("sorted by last seen, desc", {"limit": "100", "sort": "-last_seen"}),
    ("page 50", {"limit": "100", "offset": "5000"}),
    ("silent devices", {"limit": "100", "status": "silent"}),
    ("ward + role", {"limit": "100", "site": "hn-gbt", "role": "camera"}),
    ("version", {"limit": "100", "version": "1.3.2", "sort": "site"}),
    ("id search", {"limit": "100", "q": "gbt-0012"}),
    ("open overheat alert", {"limit": "100", "health": "overheat"}),
    ("overview by site and version", {}),
)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-fleet-devices-") as tmp:
        url = args.db_url or f"sqlite:///{Path(tmp) / 'fleet.db'}"
        service = FleetService(FleetConfig(broker_url="mqtt://127.0.0.1:1", db_url=url))
        service.store.create_schema()  # never started: only its store and app are used
        fill(service.store, args.devices)
        from fleet.alerts import AlertEngine

        AlertEngine(service.store).evaluate()  # the alerts a running fleet would hold
        token, _ = issue(service.store.writer, name="bench", role="viewer", expires=None)
        auth = {"Authorization": f"Bearer {token}"}
        results: dict[str, Any] = {"devices": args.devices, "db": service.store.dialect, "queries": {}}
        with serving(create_app(service)) as base, httpx.Client(timeout=120) as client:
            full: list[float] = []
            for _ in range(args.runs):
                full += timed(client, f"{base}/api/devices", {"limit": "1000"}, auth, 0)  # warm-up
                full.append(_unpaged_ms(service))
            results["unpaged_ms"] = full
            for label, params in QUERIES:
                path = "/api/overview" if label.startswith("overview") else "/api/devices"
                samples: list[float] = []
                for _ in range(args.runs):
                    samples += timed(client, f"{base}{path}", params, auth, args.requests)
                results["queries"][label] = samples
        service.store.dispose()
    return results


def _unpaged_ms(service: FleetService) -> float:
    """The old answer: every device read and serialised (the store part of it, in-process)."""
    import time

    from fleet.apimodels import DeviceOut

    start = time.perf_counter()
    rows = service.store.devices()
    body = json.dumps([DeviceOut.model_validate(r).model_dump(mode="json") for r in rows])
    elapsed = (time.perf_counter() - start) * 1000
    assert len(body) > len(rows)
    return elapsed


def main() -> int:
    p = common.parser("GET /api/devices pages with 20,000 devices", runs=3)
    p.add_argument("--devices", type=int, default=20_000)
    p.add_argument("--requests", type=int, default=40, help="requests per query and run")
    p.add_argument("--db-url", default=None, help="empty database to fill (default: a SQLite file)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    common.exit_on_sigterm()
    results = measure(args)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    worst = 0.0
    print(f"{args.devices} devices on {results['db']}, {args.runs} × {args.requests} requests per query")
    for label, samples in results["queries"].items():
        if not label.startswith("overview"):
            worst = max(worst, p95(samples))
        print(f"  {label:32} p95 {p95(samples):7.1f} ms   median {statistics.median(samples):7.1f} ms")
    unpaged = statistics.median(results["unpaged_ms"])
    print(f"  baseline: whole registry unpaged (store + JSON): median {unpaged:.0f} ms")
    print(
        f"  worst p95 {worst:.1f} ms (target < {TARGET_MS:.0f} ms); "
        f"ratio worst p95 / unpaged: {worst / unpaged:.3f}"
    )
    return 0 if worst < TARGET_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
