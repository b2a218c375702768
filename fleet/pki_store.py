"""The PKI's inventory of issued certificates (SQLite file ``inventory.sqlite`` in the PKI dir).

One row per certificate ever issued: serial, subject (device id or service name), kind, validity,
key fingerprint and type, and revocation. The audit and the CRL are built from it; the CRL number
is kept here too so that concurrent signers never reuse one.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal, cast

from protocol.timefmt import format_ts, parse_ts

CertKind = Literal["device", "service", "server"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS certs (
    serial TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    kind TEXT NOT NULL,
    not_before TEXT NOT NULL,
    not_after TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    key_type TEXT NOT NULL,
    issued_at TEXT NOT NULL,
    revoked_at TEXT,
    revocation_reason TEXT,
    revocation_note TEXT
);
CREATE INDEX IF NOT EXISTS certs_subject ON certs(subject);
CREATE INDEX IF NOT EXISTS certs_fingerprint ON certs(fingerprint);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Atomic write with ``mode`` (keys 0600); safe against concurrent writers of the same file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (and threads) of this PKI."""
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@dataclass(frozen=True)
class IssuedCert:
    """One certificate the PKI issued (as the inventory remembers it)."""

    serial: int
    subject: str
    kind: CertKind
    not_before: datetime
    not_after: datetime
    fingerprint: str
    key_type: str
    issued_at: datetime
    revoked_at: datetime | None = None
    revocation_reason: str | None = None
    revocation_note: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def valid_at(self, moment: datetime) -> bool:
        return not self.revoked and self.not_before <= moment <= self.not_after

    def as_json(self) -> dict[str, object]:
        return {
            "serial": format(self.serial, "x"),
            "subject": self.subject,
            "kind": self.kind,
            "not_before": format_ts(self.not_before),
            "not_after": format_ts(self.not_after),
            "fingerprint": self.fingerprint,
            "key_type": self.key_type,
            "issued_at": format_ts(self.issued_at),
            "revoked": self.revoked,
            "revoked_at": format_ts(self.revoked_at) if self.revoked_at else None,
            "revocation_reason": self.revocation_reason,
        }


def _row(row: sqlite3.Row) -> IssuedCert:
    return IssuedCert(
        serial=int(row["serial"], 16),
        subject=row["subject"],
        kind=cast(CertKind, row["kind"]),
        not_before=parse_ts(row["not_before"]),
        not_after=parse_ts(row["not_after"]),
        fingerprint=row["fingerprint"],
        key_type=row["key_type"],
        issued_at=parse_ts(row["issued_at"]),
        revoked_at=parse_ts(row["revoked_at"]) if row["revoked_at"] else None,
        revocation_reason=row["revocation_reason"],
        revocation_note=row["revocation_note"],
    )


class Inventory:
    """Thread- and process-safe (SQLite) record of issued certificates."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with closing(sqlite3.connect(self.path, timeout=30)) as db:
            db.executescript(_SCHEMA)
        os.chmod(self.path, 0o600)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as db:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA busy_timeout = 30000")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def add(self, cert: IssuedCert) -> None:
        with self._db() as db:
            db.execute(
                "INSERT INTO certs (serial, subject, kind, not_before, not_after, fingerprint, key_type,"
                " issued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    format(cert.serial, "x"),
                    cert.subject,
                    cert.kind,
                    format_ts(cert.not_before),
                    format_ts(cert.not_after),
                    cert.fingerprint,
                    cert.key_type,
                    format_ts(cert.issued_at),
                ),
            )

    def get(self, serial: int) -> IssuedCert | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM certs WHERE serial = ?", (format(serial, "x"),)).fetchone()
        return _row(row) if row else None

    def by_subject(self, subject: str) -> list[IssuedCert]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM certs WHERE subject = ? ORDER BY issued_at", (subject,))
            return [_row(r) for r in rows.fetchall()]

    def by_fingerprint(self, fingerprint: str) -> list[IssuedCert]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM certs WHERE fingerprint = ? ORDER BY issued_at", (fingerprint,))
            return [_row(r) for r in rows.fetchall()]

    def all(self) -> list[IssuedCert]:
        with self._db() as db:
            return [_row(r) for r in db.execute("SELECT * FROM certs ORDER BY issued_at").fetchall()]

    def revoked(self) -> list[IssuedCert]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM certs WHERE revoked_at IS NOT NULL ORDER BY revoked_at")
            return [_row(r) for r in rows.fetchall()]

    def mark_revoked(self, serial: int, when: datetime, reason: str, note: str) -> bool:
        """Record a revocation; False if the serial was already revoked (first reason wins)."""
        with self._db() as db:
            cur = db.execute(
                "UPDATE certs SET revoked_at = ?, revocation_reason = ?, revocation_note = ?"
                " WHERE serial = ? AND revoked_at IS NULL",
                (format_ts(when), reason, note, format(serial, "x")),
            )
            return cur.rowcount == 1

    def next_crl_number(self) -> int:
        with self._db() as db:
            row = db.execute("SELECT value FROM meta WHERE name = 'crl_number'").fetchone()
            number = (int(row["value"]) if row else 0) + 1
            db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('crl_number', ?)", (number,))
            return number
