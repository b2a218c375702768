"""What authentication costs a request: ``GET /api/devices`` with 20,000 devices in the store,
with a bearer API token (the fleet's app, ``create_app``) against the same route without
authentication (a bare app with the same handler), served side by side in the same run.

    python -m bench.fleet_auth [--devices 20000] [--requests 30] [--runs 5] [--json]

Both apps run in uvicorn on loopback over one SQLite store; one httpx client alternates runs of
``--requests`` requests to each (first request of each run discarded). Printed: median latency of
each and their ratio (target: authenticated ≤ 1.10 × unauthenticated), for a page of 1000 devices and for
a filtered query that returns no device (where the check is most of the work).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Request

from bench import common
from fleet.api import create_app
from fleet.apimodels import DeviceOut
from fleet.auth.tokens import issue
from fleet.broker import free_port
from fleet.config import FleetConfig
from fleet.db import devices
from fleet.devicequery import DeviceFilter
from fleet.paging import device_filter
from fleet.service import FleetService
from protocol.timefmt import utc_now

TARGET = 1.10


def fill(service: FleetService, count: int) -> None:
    """``count`` devices with a status and telemetry, as a real registry holds."""
    now = utc_now()
    rows = [
        {
            "id": f"{'kiosk' if n % 3 else 'cam'}-hn-{n:05d}",
            "role": "kiosk" if n % 3 else "camera",
            "version": "1.4.2",
            "online": n % 7 != 0,
            "boot_id": f"b{n}",
            "first_seen": now,
            "last_seen": now,
            "status": {"online": n % 7 != 0, "version": "1.4.2", "role": "kiosk"},
            "status_at": now,
            "telemetry": {"cpu_pct": 21.0, "mem_pct": 43.0, "disk_pct": 10.0, "temp_c": 51.5},
            "telemetry_at": now,
            "last_seq": n,
        }
        for n in range(count)
    ]
    with service.store.writer.begin() as conn:
        for part in range(0, count, 2000):
            conn.execute(devices.insert(), rows[part : part + 2000])


def bare_app(service: FleetService) -> FastAPI:
    """The same route and handler, with no authentication (the baseline)."""
    app = FastAPI()
    app.state.fleet = service

    @app.get("/api/devices", response_model=list[DeviceOut])
    def list_devices(request: Request, flt: Annotated[DeviceFilter, Depends(device_filter)]) -> Any:
        return request.app.state.fleet.store.device_page(flt)[0]

    return app


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start within 30 s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def timed(
    client: httpx.Client, url: str, params: dict[str, str], headers: dict[str, str], n: int
) -> list[float]:
    """Latencies (ms) of ``n`` requests after one warm-up request."""
    out = []
    for i in range(n + 1):
        start = time.perf_counter()
        response = client.get(url, params=params, headers=headers)
        elapsed = (time.perf_counter() - start) * 1000
        if response.status_code != 200:
            raise RuntimeError(f"GET {url} answered {response.status_code}: {response.text[:200]}")
        if i:
            out.append(elapsed)
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-fleet-auth-") as tmp:
        config = FleetConfig(
            broker_url="mqtt://127.0.0.1:1",
            db_url=f"sqlite:///{Path(tmp) / 'fleet.db'}",
            writer_process=False,
        )
        service = FleetService(config)  # never started: only its store is used
        service.store.create_schema()
        fill(service, args.devices)
        token, _ = issue(service.store.writer, name="bench", role="viewer", expires=None)
        auth = {"Authorization": f"Bearer {token}"}
        results: dict[str, Any] = {"devices": args.devices}
        with (
            serving(create_app(service)) as secured,
            serving(bare_app(service)) as bare,
            httpx.Client(timeout=60) as client,
        ):
            for label, params in (("page of 1000", {"limit": "1000"}), ("empty result", {"role": "none"})):
                ours: list[float] = []
                base: list[float] = []
                for _ in range(args.runs):  # alternate, so drift hits both alike
                    base.append(
                        statistics.median(timed(client, f"{bare}/api/devices", params, {}, args.requests))
                    )
                    ours.append(
                        statistics.median(
                            timed(client, f"{secured}/api/devices", params, auth, args.requests)
                        )
                    )
                results[label] = {"bearer_ms": ours, "none_ms": base}
        service.store.dispose()
    return results


def main() -> int:
    p = common.parser("GET /api/devices with a bearer token vs without authentication", runs=5)
    p.add_argument("--devices", type=int, default=20_000)
    p.add_argument("--requests", type=int, default=30, help="requests per run and side")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    common.exit_on_sigterm()
    results = measure(args)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    ok = True
    for label in ("page of 1000", "empty result"):
        ours, base = results[label]["bearer_ms"], results[label]["none_ms"]
        ratio = common.report(
            f"GET /api/devices, {label}, {args.devices} devices, bearer token",
            "ms",
            ours,
            base,
            baseline_name="no authentication",
            target=f"<= {TARGET:.2f}" if label == "page of 1000" else "",
            digits=2,
        )
        print(f"  cost of the check: {common.median(ours) - common.median(base):.2f} ms per request")
        if label == "page of 1000":
            ok = ratio <= TARGET
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
