"""Durable enqueue rate of the agent outbox vs raw sqlite3 inserts with the same fsync setting.

fsync policy measured (the default): SQLite WAL + ``synchronous=FULL``: every enqueue returns only
after the commit holding its event was fsync'd, so it survives kill -9 and power loss.

* ours: ``--threads`` emitters calling ``Outbox.enqueue`` concurrently (group commit: emitters that
  arrive during an fsync share the next one). Also shown: one emitter alone.
* baseline: one thread doing raw ``INSERT`` + ``COMMIT`` per event on a WAL database with the same
  ``synchronous`` setting (each event durable before the next, like a naive outbox).

    python -m bench.agent_enqueue [--runs 3] [--events 20000] [--threads 16] [--fsync full]
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

from agent.config import OutboxSection
from agent.outbox import Outbox
from bench.common import exit_on_sigterm, parser, report

DATA = {"rule": "red_light", "lane": 2, "speed_kmh": 41.5, "track": 1234, "frames": [1, 2, 3, 4, 5, 6, 7, 8]}


def run_ours(events: int, threads: int, fsync: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        settings = OutboxSection.model_validate({"fsync": fsync, "max_events": 10**7})
        box = Outbox(Path(tmp) / "outbox.db", "bench-device-01", settings, None)
        per_thread = events // threads

        def emitter() -> None:
            for _ in range(per_thread):
                box.enqueue("camera.count", DATA)

        workers = [threading.Thread(target=emitter) for _ in range(threads)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - start
        assert box.depth == per_thread * threads
        box.close()
    return per_thread * threads / elapsed


def run_baseline(events: int, fsync: str) -> float:
    payload = json.dumps({"id": "01J00000000000000000000000", "seq": 1, "data": DATA}).encode()
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(str(Path(tmp) / "raw.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={fsync.upper()}")
        conn.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, id TEXT, payload BLOB)")
        start = time.perf_counter()
        for i in range(events):
            conn.execute("BEGIN")
            conn.execute("INSERT INTO t (id, payload) VALUES (?, ?)", (str(i), payload))
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
        conn.close()
    return events / elapsed


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--threads", type=int, default=32)
    p.add_argument("--fsync", choices=["full", "normal", "off"], default="full")
    args = p.parse_args()
    exit_on_sigterm()
    print(f"durable enqueue, fsync policy: WAL + synchronous={args.fsync.upper()}")
    ours, single, base = [], [], []
    for _ in range(args.runs):
        ours.append(run_ours(args.events, args.threads, args.fsync))
        single.append(run_ours(min(args.events, 3000), 1, args.fsync))
        base.append(run_baseline(min(args.events, 3000), args.fsync))
    report(
        f"outbox enqueue, {args.threads} emitters",
        "events/s",
        ours,
        base,
        baseline_name="raw sqlite3 commit per insert",
        target=">= 5,000 events/s",
    )
    report(
        "outbox enqueue, 1 emitter", "events/s", single, base, baseline_name="raw sqlite3 commit per insert"
    )


if __name__ == "__main__":
    main()
