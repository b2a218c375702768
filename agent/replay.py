"""The replay window of signed commands, persisted in SQLite so that a restart does not reopen it.

A nonce is kept until the command it came with can no longer pass the expiry check
(``expires_at`` + allowed skew); older entries are pruned, so the table stays as small as the
commands of one lifetime window. The desired-state version last accepted is kept here too
(a desired state older than it is a replay).
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, keep_until REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS nonces_keep_until ON nonces (keep_until);
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""


class ReplayStore:
    """Nonces seen within their validity window (``remember`` tells a second use apart)."""

    def __init__(self, path: Path, *, fsync: bool = True, prune_every: int = 64) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        self._db.executescript(_SCHEMA)
        self._prune_every = prune_every
        self._since_prune = prune_every  # prune on first use

    def remember(self, nonce: str, keep_until: datetime, now: datetime) -> bool:
        """Record ``nonce`` durably; False if it was already there (a replayed command)."""
        with self._lock:
            self._since_prune += 1
            if self._since_prune >= self._prune_every:
                self._db.execute("DELETE FROM nonces WHERE keep_until < ?", (now.timestamp(),))
                self._since_prune = 0
            try:
                self._db.execute(
                    "INSERT INTO nonces (nonce, keep_until) VALUES (?, ?)", (nonce, keep_until.timestamp())
                )
            except sqlite3.IntegrityError:
                return False
            return True

    def seen(self, nonce: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM nonces WHERE nonce = ?", (nonce,)).fetchone()
        return row is not None

    def prune(self, now: datetime) -> int:
        """Drop nonces whose command can no longer pass the expiry check; return how many."""
        with self._lock:
            cur = self._db.execute("DELETE FROM nonces WHERE keep_until < ?", (now.timestamp(),))
            self._since_prune = 0
            return cur.rowcount

    def __len__(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT count(*) FROM nonces").fetchone()
        return int(row[0])

    def desired_version(self) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM state WHERE name = 'desired_version'").fetchone()
        return None if row is None else int(row[0])

    def set_desired_version(self, version: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO state (name, value) VALUES ('desired_version', ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value WHERE excluded.value > state.value",
                (version,),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
