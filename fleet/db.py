"""Database schema (SQLAlchemy Core) and engines: one schema for SQLite (WAL) and PostgreSQL.

Times are stored as timezone-aware UTC (``UtcDateTime``); JSON as ``JSON`` (``JSONB`` on
PostgreSQL). ``insert_ignore`` and ``upsert`` pick the dialect's ON CONFLICT form.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Dialect,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.sql.dml import Insert
from sqlalchemy.types import DateTime, TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every dialect (SQLite stores naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use protocol.timefmt.utc_now()")
        utc = value.astimezone(timezone.utc)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


JsonType = JSON().with_variant(postgresql.JSONB(), "postgresql")
ID = String(64)

metadata = MetaData()

devices = Table(
    "devices",
    metadata,
    Column("id", ID, primary_key=True),
    Column("role", Text),
    Column("version", Text),
    Column("online", Boolean, nullable=False, default=False),
    Column("boot_id", Text),
    Column("first_seen", UtcDateTime, nullable=False),
    Column("last_seen", UtcDateTime, nullable=False),
    Column("status", JsonType),
    Column("status_at", UtcDateTime),
    Column("telemetry", JsonType),
    Column("telemetry_at", UtcDateTime),
    Column("shadow_reported", JsonType),
    Column("shadow_reported_at", UtcDateTime),
    Column("shadow_desired", JsonType),
    Column("last_seq", BigInteger),
    Column("site", String(64)),
    Index("ix_devices_site", "site"),
    Index("ix_devices_role", "role"),
    Index("ix_devices_version", "version"),
    Index("ix_devices_last_seen", "last_seen"),
    Index("ix_devices_online_last_seen", "online", "last_seen"),
)
"""``site`` is the ward/site code (``site_of``); the indexes serve the device listing's filters and sorts."""

events = Table(
    "events",
    metadata,
    Column("id", ID, primary_key=True),
    Column("device", ID, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("ts", UtcDateTime, nullable=False),
    Column("received_at", UtcDateTime, nullable=False),
    Column("data", JsonType, nullable=False),
    Column("sig", JsonType),
    Index("ix_events_device_seq", "device", "seq"),
    Index("ix_events_received_at", "received_at"),
)

device_ota = Table(
    "device_ota",
    metadata,
    Column("device", ID, primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("ts", UtcDateTime, nullable=False),
    Column("data", JsonType, nullable=False),
)
"""The latest ``ota.*`` event of each device (highest seq), kept by the writer for the dashboard."""

rollouts = Table(
    "rollouts",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("release", String(128), nullable=False),
    Column("selector", String(500), nullable=False),
    Column("policy", JsonType, nullable=False),
    Column("state", String(16), nullable=False),
    Column("reason", String(500), nullable=False, default=""),
    Column("created_at", UtcDateTime, nullable=False),
    Column("wave_settled_at", UtcDateTime),
)
"""Staged rollouts (``fleet/rollouts``): state is running, paused, halted, aborted or complete."""

rollout_targets = Table(
    "rollout_targets",
    metadata,
    Column("rollout", String(64), primary_key=True),
    Column("device", ID, primary_key=True),
    Column("wave", Integer, nullable=False),
    Column("previous", String(128)),
    Column("targeted_at", UtcDateTime),
    Index("ix_rollout_targets_device", "device"),
)
"""Every device planned into a rollout with its wave; ``targeted_at`` is set once its desired state
carries the release, so a restarted worker neither re-targets nor skips it."""

gaps = Table(
    "seq_gaps",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device", ID, nullable=False, index=True),
    Column("first_seq", BigInteger, nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("missing", BigInteger, nullable=False),
    Column("detected_at", UtcDateTime, nullable=False),
    Column("closed_at", UtcDateTime),
)

commands = Table(
    "commands",
    metadata,
    Column("id", ID, primary_key=True),
    Column("device", ID, nullable=False, index=True),
    Column("name", String(64), nullable=False),
    Column("args", JsonType, nullable=False),
    Column("issued_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("nonce", String(128), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("result", JsonType),
    Column("error", Text),
    Column("answered_at", UtcDateTime),
)

ingest_errors = Table(
    "ingest_errors",
    metadata,
    Column("reason", String(32), nullable=False),
    Column("family", String(32), nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("last_at", UtcDateTime, nullable=False),
    Column("last_topic", Text),
    UniqueConstraint("reason", "family", name="uq_ingest_errors"),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("role", String(32), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),  # sha256 hex; never the token
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime),
    Column("revoked_at", UtcDateTime),
    Column("last_used_at", UtcDateTime),
)
"""API tokens for scripts (fleet/auth/tokens.py)."""

audit_trail = Table(
    "audit_trail",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("ts", UtcDateTime, nullable=False, index=True),
    Column("subject", Text, nullable=False),
    Column("role", String(32), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("action", Text, nullable=False),
    Column("devices", JsonType, nullable=False),
    Column("source", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)
"""The hash-chained, append-only audit trail (fleet/auth/trail.py)."""

evidence = Table(
    "evidence",
    metadata,
    Column("event_id", ID, primary_key=True),
    Column("device", ID, nullable=False, index=True),
    Column("kind", String(64), nullable=False),
    Column("verified_at", UtcDateTime, nullable=False),
    Column("cert_serial", String(64), nullable=False),
    Column("key_fingerprint", String(128), nullable=False),
    Column("images", JsonType, nullable=False),
)
"""Violations verified at arrival against the device's certified key (fleet/evidence.py): which
certificate, and the images (role, sha256, bytes) now in the evidence store."""

device_revocations = Table(
    "device_revocations",
    metadata,
    Column("device", ID, primary_key=True),
    Column("revoked_at", UtcDateTime, nullable=False),
    Column("reason", String(64)),
)
"""Devices whose every certificate is revoked, copied from the PKI inventory by the fleet service
(fleet/service.py); the registry shows them as revoked, never online."""


alerts = Table(
    "alerts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device", ID, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("summary", Text, nullable=False),
    Column("detail", JsonType, nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("resolved_at", UtcDateTime),
    Column("open_key", String(128), unique=True),  # "device/kind" while firing, NULL once resolved
    Column("event_id", ID, unique=True),  # the event that raised a latched alert (tamper, ...)
    Column("acked_at", UtcDateTime),
    Column("acked_by", Text),
    Column("ack_note", Text),
    Index("ix_alerts_device", "device"),
    Index("ix_alerts_open", "resolved_at", "kind"),
)
"""Alerts computed by the fleet (fleet/alerts.py): at most one open alert per device and kind."""


telemetry_1m = Table(
    "telemetry_1m",
    metadata,
    Column("device", ID, primary_key=True),
    Column("minute", UtcDateTime, primary_key=True),
    Column("n", Integer, nullable=False),
    Column("cpu_pct", Float),
    Column("mem_pct", Float),
    Column("disk_pct", Float),
    Column("temp_c", Float),
    Index("ix_telemetry_1m_minute", "minute"),
)
"""Telemetry of each device per minute: message count and sums (fleet/telemetryhist.py)."""


leases = Table(
    "leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("acquired_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
)
"""Periodic jobs of the fleet (alerts, rollouts, retention, ...) and the worker that runs each for
now (fleet/leases.py): with several workers on one database, one runs each job at a time."""


def _prepare_sqlite(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def make_engine(url: str, *, immediate: bool = False) -> Engine:
    """An engine for ``url``; with ``immediate`` SQLite write transactions start BEGIN IMMEDIATE.

    SQLite runs in WAL mode with ``synchronous=FULL`` (a commit survives a power cut, which an
    acknowledged message must; cheap because ingest commits in batches) and a busy timeout, so
    several workers and readers share one file.
    """
    if make_url(url).get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
    _prepare_sqlite(url)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


SCHEMA_LOCK = 0x6369_7479_6564_6765  # 'cityedge'
"""PostgreSQL advisory lock key held while the schema is created or upgraded."""


def create_schema(engine: Engine) -> None:
    """Create missing tables and bring older ones up to date.

    On PostgreSQL all of it runs in one transaction under an advisory lock, so workers that
    start together do it one after the other (DDL is transactional there), and ``events`` and
    ``telemetry_1m`` are partitioned by day (``fleet.partitions``)."""
    if engine.dialect.name != "postgresql":
        metadata.create_all(engine)
        upgrade_schema(engine)
        return
    from fleet.partitions import prepare

    with engine.begin() as conn:
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
        prepare(conn, datetime.now(timezone.utc).date())
        metadata.create_all(conn)
        _upgrade(conn, engine.dialect)


_ADDED_COLUMNS = {"devices": ("site",)}


def upgrade_schema(engine: Engine) -> None:
    """Bring a database made by an older release up to date: add new nullable columns, then create
    every index that is missing (``create_all`` creates indexes only with new tables)."""
    with engine.begin() as conn:
        _upgrade(conn, engine.dialect)


def _upgrade(conn: Connection, dialect: Dialect) -> None:
    from sqlalchemy import inspect

    inspector = inspect(conn)
    for table_name, names in _ADDED_COLUMNS.items():
        present = {c["name"] for c in inspector.get_columns(table_name)}
        for name in names:
            if name not in present:
                column = metadata.tables[table_name].c[name]
                kind = column.type.compile(dialect=dialect)
                conn.exec_driver_sql(f"ALTER TABLE {table_name} ADD COLUMN {name} {kind}")
    for table in metadata.sorted_tables:
        for index in table.indexes:
            index.create(conn, checkfirst=True)


def site_of(device_id: str) -> str | None:
    """The site/ward code inside a device id: ``cam-hn-gbt-0042`` → ``hn-gbt`` (None: no site part)."""
    parts = device_id.split("-")
    if len(parts) < 3:
        return None
    middle = parts[1:-1] if parts[-1].isdigit() else parts[1:]
    return "-".join(middle)[:64] or None


def insert_ignore(table: Table, dialect: Dialect) -> Insert:
    """INSERT that silently skips rows whose key already exists."""
    if dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise NotImplementedError(f"database {dialect.name!r} is not supported (use SQLite or PostgreSQL)")


def add_error_counts(dialect: Dialect) -> Insert:
    """INSERT into ingest_errors that adds to the existing counter of (reason, family)."""
    module: Any = postgresql if dialect.name == "postgresql" else sqlite
    stmt = module.insert(ingest_errors)
    return stmt.on_conflict_do_update(  # type: ignore[no-any-return]
        index_elements=["reason", "family"],
        set_={
            "count": ingest_errors.c.count + stmt.excluded.count,
            "last_at": stmt.excluded.last_at,
            "last_topic": stmt.excluded.last_topic,
        },
    )


_EVENT_COLUMNS = "id, device, seq, kind, ts, received_at, data, sig"
_EVENT_VALUES = {
    "sqlite": "(?, ?, ?, ?, ?, ?, ?, ?)",
}
_EVENT_ROWS_PER_STATEMENT = 100


def _sqlite_time(moment: datetime) -> str:
    """The text SQLAlchemy's SQLite DateTime stores (naive UTC, microseconds)."""
    if moment.tzinfo is not timezone.utc:
        moment = moment.astimezone(timezone.utc)
    return moment.isoformat(" ", "microseconds")[:26]  # without the "+00:00"


def insert_events(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert-or-ignore event rows: the ingest hot path.

    Values are prepared here once (same stored form as the Table types). SQLite gets multi-row
    INSERTs of 100 rows: per-row type processing and one statement per row (each releasing and
    re-taking the GIL while the MQTT thread runs) made this the bottleneck of ingest. PostgreSQL
    gets one statement per batch with one array per column (``unnest``): a short, constant query
    text (the driver parses and caches it once; a long multi-row VALUES text was parsed again on
    every batch), arrays sent in binary (no per-value text escaping) and one round trip.
    """
    dialect = conn.dialect.name
    if dialect == "postgresql":
        dumps = json.dumps
        columns: list[list[Any]] = [[], [], [], [], [], [], [], []]
        ids, devs, seqs, kinds, tss, ats, datas, sigs = columns
        for r in rows:
            ids.append(r["id"])
            devs.append(r["device"])
            seqs.append(r["seq"])
            kinds.append(r["kind"])
            tss.append(r["ts"])
            ats.append(r["received_at"])
            datas.append(dumps(r["data"]))
            sigs.append(None if r["sig"] is None else dumps(r["sig"]))
        conn.exec_driver_sql(_PG_EVENTS_SQL, tuple(columns))
        return
    if dialect not in _EVENT_VALUES:
        conn.execute(insert_ignore(events, conn.dialect), list(rows))
        return
    dumps = json.dumps
    for part in chunks(rows, _EVENT_ROWS_PER_STATEMENT):
        params: list[Any] = []
        for r in part:
            params += (
                r["id"],
                r["device"],
                r["seq"],
                r["kind"],
                _sqlite_time(r["ts"]),
                _sqlite_time(r["received_at"]),
                dumps(r["data"]),
                None if r["sig"] is None else dumps(r["sig"]),
            )
        values = ", ".join([_EVENT_VALUES[dialect]] * len(part))
        sql = f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES {values} ON CONFLICT DO NOTHING"
        conn.exec_driver_sql(sql, tuple(params))


_PG_EVENTS_SQL = (
    f"INSERT INTO events ({_EVENT_COLUMNS}) SELECT * FROM unnest(%b::varchar[], %b::varchar[], "
    "%b::bigint[], %b::varchar[], %b::timestamptz[], %b::timestamptz[], %b::jsonb[], %b::jsonb[]) "
    "ON CONFLICT DO NOTHING"
)
_PG_TOUCH_SQL = (
    "UPDATE devices AS d SET last_seen = GREATEST(d.last_seen, u.seen), "
    "last_seq = COALESCE(u.seq, d.last_seq) "
    "FROM unnest(%b::varchar[], %b::timestamptz[], %b::bigint[]) AS u(id, seen, seq) WHERE d.id = u.id"
)


_TOUCH_SQL = {
    "sqlite": "UPDATE devices SET last_seen = max(last_seen, coalesce(?, last_seen)), "
    "last_seq = coalesce(?, last_seq) WHERE id = ?",
    "postgresql": "UPDATE devices SET last_seen = GREATEST(last_seen, %s), "
    "last_seq = COALESCE(%s, last_seq) WHERE id = %s",
}
FAST_DIALECTS = frozenset(_TOUCH_SQL)


def touch_devices(conn: Connection, rows: Sequence[tuple[str, datetime | None, int | None]]) -> None:
    """For each (device, seen, seq): move last_seen forward to ``seen`` and set last_seq (None:
    keep). The other ingest hot path: every batch touches every device it heard from."""
    dialect = conn.dialect.name
    if dialect == "postgresql":  # one statement, one array per column (see insert_events)
        ids = [device for device, _seen, _seq in rows]
        seen = [at for _device, at, _seq in rows]
        seqs = [seq for _device, _seen, seq in rows]
        conn.exec_driver_sql(_PG_TOUCH_SQL, (ids, seen, seqs))
        return
    params = [(None if at is None else _sqlite_time(at), seq, device) for device, at, seq in rows]
    conn.exec_driver_sql(_TOUCH_SQL[dialect], params)


def chunks(items: Sequence[Any], size: int = 500) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
