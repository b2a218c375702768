"""The SQL side of the outbox: schema, per-class counters and the eviction policy.

Used by the outbox writer thread only, always inside its open transaction; the counters mirror the
table (reloaded from it after a failed transaction).
"""

from __future__ import annotations

import logging
import sqlite3
from enum import IntEnum
from pathlib import Path
from typing import NamedTuple

from agent.errors import OutboxFull

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    kind TEXT NOT NULL,
    cls INTEGER NOT NULL,
    size INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_cls_seq ON outbox (cls, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class EventClass(IntEnum):
    """Eviction classes, evicted in this order; EVIDENCE never."""

    TELEMETRY = 0
    ORDINARY = 1
    EVIDENCE = 2


class OutboxRow(NamedTuple):
    """One stored event, payload ready to publish (a tuple: read in batches on the send path)."""

    seq: int
    id: str
    kind: str
    payload: bytes


def open_db(path: Path, fsync: str) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={fsync.upper()}")
    conn.execute("PRAGMA journal_size_limit=16777216")
    conn.executescript(SCHEMA)
    return conn


def read_after(conn: sqlite3.Connection, seq: int, limit: int) -> list[OutboxRow]:
    cursor = conn.execute(
        "SELECT seq, id, kind, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
    )
    return list(map(OutboxRow._make, cursor))  # INTEGER, TEXT, TEXT, BLOB: already int, str, str, bytes


class OutboxTable:
    def __init__(self, conn: sqlite3.Connection, max_events: int, max_bytes: int) -> None:
        self.conn = conn
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.count = [0, 0, 0]
        self.bytes = [0, 0, 0]
        self.seq = 0
        self.evicted = 0
        self.load()

    @property
    def depth(self) -> int:
        return sum(self.count)

    @property
    def size_bytes(self) -> int:
        return sum(self.bytes)

    def load(self) -> None:
        """Counters and last seq from the table (at start and after a failed transaction)."""
        count, size = [0, 0, 0], [0, 0, 0]
        for cls, n, total in self.conn.execute(
            "SELECT cls, COUNT(*), COALESCE(SUM(size), 0) FROM outbox GROUP BY cls"
        ):
            count[int(cls)] = int(n)
            size[int(cls)] = int(total)
        self.count, self.bytes = count, size
        meta = self.conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
        top = self.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()
        self.seq = max(int(meta[0]) if meta else 0, int(top[0]))

    def insert(self, event_id: str, kind: str, cls: EventClass, payload: bytes) -> int:
        seq = self.seq + 1
        self.conn.execute(
            "INSERT INTO outbox (seq, id, kind, cls, size, payload) VALUES (?, ?, ?, ?, ?, ?)",
            (seq, event_id, kind, int(cls), len(payload), payload),
        )
        self.seq = seq
        self.count[cls] += 1
        self.bytes[cls] += len(payload)
        return seq

    def fits(self, events: int, size: int) -> bool:
        """Whether ``events`` more events of ``size`` bytes in all fit without eviction."""
        return self.depth + events <= self.max_events and self.size_bytes + size <= self.max_bytes

    def insert_many(self, rows: list[tuple[str, str, EventClass, bytes]]) -> None:
        """Insert (id, kind, class, payload) rows with the next seqs, in order."""
        first = self.seq + 1
        self.conn.executemany(
            "INSERT INTO outbox (seq, id, kind, cls, size, payload) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (first + i, eid, kind, int(cls), len(payload), payload)
                for i, (eid, kind, cls, payload) in enumerate(rows)
            ],
        )
        for _eid, _kind, cls, payload in rows:
            self.count[cls] += 1
            self.bytes[cls] += len(payload)
        self.seq = first + len(rows) - 1

    def save_seq(self) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('seq', ?)", (self.seq,))

    def delete(self, seqs: list[int]) -> None:
        for start in range(0, len(seqs), 500):
            chunk = seqs[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(f"SELECT cls, size FROM outbox WHERE seq IN ({marks})", chunk).fetchall()
            self.conn.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", chunk)
            for cls, size in rows:
                self.count[int(cls)] -= 1
                self.bytes[int(cls)] -= int(size)

    def make_room(self, kind: str, size: int) -> None:
        """Evict telemetry-class, then ordinary events (oldest first) until one of ``size`` fits."""
        for victim in (EventClass.TELEMETRY, EventClass.ORDINARY):
            while self._over(size) and self.count[victim] > 0:
                self._evict_oldest(victim, size)
        if self._over(size):
            raise OutboxFull(
                f"outbox is full ({self.count[EventClass.EVIDENCE]} evidence events, "
                f"{self.size_bytes} bytes waiting for the city); refusing new '{kind}' event"
            )

    def _over(self, size: int) -> bool:
        return self.depth + 1 > self.max_events or self.size_bytes + size > self.max_bytes

    def _evict_oldest(self, victim: EventClass, size: int) -> None:
        need_events = self.depth + 1 - self.max_events
        rows = self.conn.execute(
            "SELECT seq, size FROM outbox WHERE cls = ? ORDER BY seq LIMIT ?",
            (int(victim), max(need_events, 16)),
        ).fetchall()
        if not rows:  # counters out of step with the table: trust the table
            self.count[victim] = 0
            self.bytes[victim] = 0
            return
        doomed: list[int] = []
        for seq, row_size in rows:
            if not self._over(size):
                break
            doomed.append(int(seq))
            self.count[victim] -= 1
            self.bytes[victim] -= int(row_size)
        marks = ",".join("?" * len(doomed))
        self.conn.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", doomed)
        self.evicted += len(doomed)
        log.warning("outbox full: evicted %d oldest %s events", len(doomed), victim.name.lower())
