"""The audit trail: append-only, hash-chained entries in table ``audit_trail`` of the fleet store.

Each entry holds who (subject, role, kind), what (action, devices), when (ts), from where (source)
and the outcome ("allowed" or "denied: <reason>"), plus ``prev_hash`` (the hash of the entry before
it; 64 zeros for the first) and ``hash`` = sha256 of the canonical JSON of the entry including
``prev_hash``. Sequence numbers start at 1 and have no gaps. ``verify`` recomputes the chain, so an
edited, reordered or deleted entry shows; an auditor keeps the head (seq and hash) ``verify`` prints
and passes it as ``anchor`` later, which also catches entries cut off at the end.

``append`` is serialised so the chain never forks, on SQLite (the write lock is taken before the
last entry is read) and on PostgreSQL (a transaction-level advisory lock); ``seq`` is the primary
key besides, so two writers can never both add the same entry number.
"""

from __future__ import annotations

import getpass
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.exc import IntegrityError, OperationalError

from fleet.db import audit_trail
from protocol.timefmt import utc_now

GENESIS = "0" * 64
FIELDS = ("seq", "ts", "subject", "role", "kind", "action", "devices", "source", "outcome", "prev_hash")
"""What the hash covers (everything but the hash itself)."""

_PG_LOCK_KEY = 0x6369747965646765  # "cityedge": the advisory lock that serialises appends
_APPEND_ATTEMPTS = 5


@dataclass(frozen=True)
class TrailEntry:
    """One thing to record (``append`` adds seq, ts when not given, and the hashes)."""

    subject: str
    role: str
    kind: str
    action: str
    outcome: str
    source: str = "cli"
    devices: list[str] = field(default_factory=list)
    ts: datetime | None = None


def cli_actor() -> TrailEntry:
    """A template entry for actions taken with the CLI on this host (subject: the OS user)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (containers)
        user = "unknown"
    return TrailEntry(subject=f"cli:{user}", role="local", kind="cli", action="", outcome="allowed")


def format_time(moment: datetime) -> str:
    """The form a time takes in the hashed JSON (UTC, microseconds: what both databases keep)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(row: dict[str, Any]) -> bytes:
    """Canonical JSON of an entry (the fields of FIELDS, sorted keys, no spaces, UTF-8)."""
    doc = {name: row[name] for name in FIELDS}
    doc["ts"] = format_time(row["ts"])
    doc["devices"] = list(row["devices"])
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def entry_hash(row: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(row)).hexdigest()


def _lock(conn: Connection) -> None:
    """Take the lock that serialises appends, before the last entry is read."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        # A write statement takes SQLite's write lock (waiting on busy_timeout) even when it changes
        # nothing; reading first would let two appends read the same last entry.
        conn.execute(audit_trail.update().where(audit_trail.c.seq < 0).values(seq=audit_trail.c.seq))


def append(engine: Engine, entry: TrailEntry) -> int:
    """Add ``entry`` at the end of the chain in its own transaction; returns its seq."""
    last_error: Exception | None = None
    for _attempt in range(_APPEND_ATTEMPTS):
        try:
            with engine.begin() as conn:
                return append_in(conn, entry)
        except (IntegrityError, OperationalError) as exc:  # another writer won the race: read again
            last_error = exc
    assert last_error is not None
    raise last_error


def record_cli_action(db_url: str, action: str, devices: Sequence[str] = (), outcome: str = "allowed") -> int:
    """Append what a CLI command did on this host (e.g. ``device.revoke``, ``claim.create``) to the
    trail in the fleet database at ``db_url`` (schema created when missing); returns its seq."""
    from fleet.db import create_schema, make_engine

    actor = cli_actor()
    engine = make_engine(db_url, immediate=True)
    try:
        create_schema(engine)
        entry = TrailEntry(
            subject=actor.subject,
            role=actor.role,
            kind=actor.kind,
            action=action,
            outcome=outcome,
            devices=list(devices),
        )
        return append(engine, entry)
    finally:
        engine.dispose()


def append_in(conn: Connection, entry: TrailEntry) -> int:
    """Add ``entry`` inside the caller's transaction (committed with it)."""
    _lock(conn)
    last = conn.execute(
        select(audit_trail.c.seq, audit_trail.c.hash).order_by(audit_trail.c.seq.desc()).limit(1)
    ).first()
    seq = 1 if last is None else int(last.seq) + 1
    ts = entry.ts or utc_now()
    row: dict[str, Any] = {
        "seq": seq,
        "ts": ts,
        "subject": entry.subject,
        "role": entry.role,
        "kind": entry.kind,
        "action": entry.action,
        "devices": list(entry.devices),
        "source": entry.source,
        "outcome": entry.outcome,
        "prev_hash": GENESIS if last is None else str(last.hash),
    }
    row["hash"] = entry_hash(row)
    conn.execute(audit_trail.insert().values(**row))
    return seq


def _rows(
    engine: Engine, since: datetime | None = None, after_seq: int | None = None
) -> Iterator[dict[str, Any]]:
    query = select(audit_trail).order_by(audit_trail.c.seq)
    if since is not None:
        query = query.where(audit_trail.c.ts >= since)
    if after_seq is not None:
        query = query.where(audit_trail.c.seq > after_seq)
    with engine.connect() as conn:
        for row in conn.execution_options(yield_per=1000).execute(query).mappings():
            yield dict(row)


def read(
    engine: Engine, since: datetime | None = None, *, after_seq: int | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Entries in seq order: at or after ``since``, after entry ``after_seq``, at most ``limit``."""
    query = select(audit_trail).order_by(audit_trail.c.seq)
    if since is not None:
        query = query.where(audit_trail.c.ts >= since)
    if after_seq is not None:
        query = query.where(audit_trail.c.seq > after_seq)
    if limit is not None:
        query = query.limit(limit)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def read_after(engine: Engine, seq: int) -> list[dict[str, Any]]:
    """Entries after entry ``seq``, in order (for a follower that keeps its place by seq)."""
    return list(_rows(engine, after_seq=seq))


def to_json(row: dict[str, Any]) -> dict[str, Any]:
    """An entry as JSON-ready values (ts as RFC 3339 text)."""
    out = {name: row[name] for name in (*FIELDS, "hash")}
    out["ts"] = format_time(row["ts"])
    out["devices"] = list(row["devices"])
    return out


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str


def verify(engine: Engine, *, anchor: Head | None = None) -> list[str]:
    """Every problem found in the chain (an empty list: intact).

    ``anchor`` is a head noted earlier: the entry ``anchor.seq`` must still exist with that hash
    (finds entries cut off at the end, which the chain alone cannot show).
    """
    problems, _head = verify_chain(engine, anchor=anchor)
    return problems


def verify_chain(engine: Engine, *, anchor: Head | None = None) -> tuple[list[str], Head | None]:
    """``verify``, also returning the last entry (the head an auditor keeps for next time)."""
    problems: list[str] = []
    expected_seq = 1
    prev = GENESIS
    head: Head | None = None
    anchor_seen = False
    for row in _rows(engine):
        seq = int(row["seq"])
        if seq != expected_seq:
            problems.append(
                f"entry {expected_seq}"
                + (f" to {seq - 1}" if seq - 1 > expected_seq else "")
                + " missing: deleted from the trail"
            )
        if row["prev_hash"] != prev:
            problems.append(
                f"entry {seq}: does not link to the entry before it "
                "(an entry before it was deleted, edited or moved)"
            )
        if entry_hash(row) != row["hash"]:
            problems.append(f"entry {seq}: its content does not match its hash (edited or moved)")
        if anchor is not None and seq == anchor.seq:
            anchor_seen = True
            if row["hash"] != anchor.hash:
                problems.append(f"entry {seq}: hash differs from the anchor {anchor.hash} noted earlier")
        prev = str(row["hash"])
        expected_seq = seq + 1
        head = Head(seq, prev)
    if anchor is not None and not anchor_seen:
        problems.append(
            f"entry {anchor.seq} of the anchor is gone: the trail ends at "
            f"{head.seq if head else 'nothing'} (entries were deleted from its end)"
        )
    return problems, head
