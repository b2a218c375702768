"""Command answers keyed by command id (SQLite, ``DATA_DIR/commands.db``), bounded retention.

``start`` records that a command began before it runs, so a command interrupted by a crash is
answered "interrupted" when re-delivered rather than run a second time. ``unsent`` lists answers
that could not be published yet (link down) so they go out on the next connect.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    name TEXT NOT NULL,
    payload BLOB,
    sent INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS results_ts ON results (ts);
"""

STARTED = None
"""A row without payload: the command started but has no answer yet."""


class ResultStore:
    def __init__(self, path: Path, retention: int) -> None:
        self.retention = retention
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)

    def lookup(self, command_id: str) -> tuple[bool, bytes | None]:
        """(known, answer): known=False for a new id; answer None if it started without answer."""
        with self._lock:
            row = self._conn.execute("SELECT payload FROM results WHERE id = ?", (command_id,)).fetchone()
        if row is None:
            return False, None
        return True, None if row[0] is None else bytes(row[0])

    def start(self, command_id: str, name: str) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR IGNORE INTO results (id, ts, name, payload) VALUES (?, ?, ?, NULL)",
                (command_id, time.time(), name),
            )

    def put(self, command_id: str, name: str, payload: bytes) -> None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(
                "INSERT OR REPLACE INTO results (id, ts, name, payload, sent) VALUES (?, ?, ?, ?, 0)",
                (command_id, time.time(), name, payload),
            )
            self._conn.execute(
                "DELETE FROM results WHERE id IN (SELECT id FROM results ORDER BY ts DESC LIMIT -1 OFFSET ?)",
                (self.retention,),
            )
            self._conn.execute("COMMIT")

    def mark_sent(self, command_id: str) -> None:
        with self._lock:
            self._conn.execute("UPDATE results SET sent = 1 WHERE id = ?", (command_id,))

    def unsent(self, limit: int = 100) -> list[tuple[str, bytes]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, payload FROM results WHERE sent = 0 AND payload IS NOT NULL ORDER BY ts LIMIT ?",
                (limit,),
            ).fetchall()
        return [(str(r[0]), bytes(r[1])) for r in rows]

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
