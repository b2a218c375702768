"""The fleet database: batch writes from ingest, command rows, and the queries the API needs."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, false, func, or_, select, text
from sqlalchemy.dialects import postgresql, sqlite

from fleet.apply import BatchOutcome, apply_batch
from fleet.db import (
    commands,
    create_schema,
    device_revocations,
    devices,
    events,
    evidence,
    gaps,
    ingest_errors,
    make_engine,
)
from fleet.inbound import Inbound
from fleet.pki_store import DeviceRevocation

Row = dict[str, Any]

_revoked = device_revocations.c.revoked_at.is_not(None)
_REGISTRY = select(
    *[c for c in devices.c if c.name != "online"],
    and_(devices.c.online, device_revocations.c.revoked_at.is_(None)).label("online"),
    _revoked.label("revoked"),
    device_revocations.c.revoked_at,
    device_revocations.c.reason.label("revocation_reason"),
).select_from(devices.outerjoin(device_revocations, device_revocations.c.device == devices.c.id))
"""Device rows as the registry shows them: a revoked device is never online."""


class Store:
    """SQLAlchemy Core access to one database (SQLite file or PostgreSQL)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.writer: Engine = make_engine(url, immediate=True)
        self.reader: Engine = make_engine(url) if self.writer.dialect.name == "sqlite" else self.writer
        self._known_devices: set[str] = set()  # registered device ids (used by the writer thread)

    @property
    def dialect(self) -> str:
        return self.writer.dialect.name

    def create_schema(self) -> None:
        create_schema(self.writer)

    def dispose(self) -> None:
        self.writer.dispose()
        self.reader.dispose()

    def ping(self) -> None:
        with self.reader.connect() as conn:
            conn.execute(text("SELECT 1"))

    # -- writes ---------------------------------------------------------------------------------

    def apply(self, items: list[Inbound], *, retained_floor: datetime | None = None) -> BatchOutcome:
        """Commit ``items`` in one transaction (raises SQLAlchemyError; nothing is kept then)."""
        with self.writer.begin() as conn:
            return apply_batch(conn, items, retained_floor=retained_floor, known=self._known_devices)

    def insert_command(self, row: Row) -> None:
        with self.writer.begin() as conn:
            conn.execute(commands.insert().values(**row))

    def expire_commands(self, before: datetime) -> int:
        """Mark pending commands that expired before ``before``; return how many."""
        with self.writer.begin() as conn:
            result = conn.execute(
                commands.update()
                .where(commands.c.status == "pending", commands.c.expires_at < before)
                .values(status="expired")
            )
            return int(result.rowcount or 0)

    # -- reads ----------------------------------------------------------------------------------

    def devices(self, *, role: str | None = None, online: bool | None = None) -> list[Row]:
        """The registry (``revoked`` devices are shown offline, with when and why)."""
        query = _REGISTRY.order_by(devices.c.id)
        if role is not None:
            query = query.where(devices.c.role == role)
        if online is True:
            query = query.where(devices.c.online, ~_revoked)
        elif online is False:
            query = query.where(or_(devices.c.online == false(), _revoked))
        with self.reader.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def device(self, device_id: str) -> Row | None:
        with self.reader.connect() as conn:
            row = conn.execute(_REGISTRY.where(devices.c.id == device_id)).mappings().first()
            return dict(row) if row is not None else None

    def set_revocations(self, revoked: Iterable[DeviceRevocation]) -> None:
        """Make ``device_revocations`` hold exactly ``revoked`` (copied from the PKI inventory)."""
        rows = [{"device": r.device, "revoked_at": r.revoked_at, "reason": r.reason} for r in revoked]
        with self.writer.begin() as conn:
            keep = [r["device"] for r in rows]
            conn.execute(device_revocations.delete().where(device_revocations.c.device.not_in(keep)))
            if rows:
                module: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
                stmt = module.insert(device_revocations)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["device"],
                    set_={"revoked_at": stmt.excluded.revoked_at, "reason": stmt.excluded.reason},
                )
                conn.execute(stmt, rows)

    def evidence(self, event_id: str) -> Row | None:
        """How a violation was verified at arrival (None: not verified evidence)."""
        with self.reader.connect() as conn:
            row = conn.execute(select(evidence).where(evidence.c.event_id == event_id)).mappings().first()
            return dict(row) if row is not None else None

    def events(
        self,
        device: str | None = None,
        *,
        limit: int = 100,
        kind: str | None = None,
        since: datetime | None = None,
    ) -> list[Row]:
        """Events newest first: of one device by seq, or of all devices by arrival."""
        query = select(events).limit(limit)
        if device is not None:
            query = query.where(events.c.device == device).order_by(events.c.seq.desc())
        else:
            query = query.order_by(events.c.received_at.desc(), events.c.id.desc())
        if kind is not None:
            query = query.where(events.c.kind == kind)
        if since is not None:
            query = query.where(events.c.ts >= since)
        with self.reader.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def event(self, event_id: str) -> Row | None:
        """One event by id, or None."""
        with self.reader.connect() as conn:
            row = conn.execute(select(events).where(events.c.id == event_id)).mappings().first()
        return dict(row) if row is not None else None

    def gaps(self, device: str, *, open_only: bool = False) -> list[Row]:
        query = select(gaps).where(gaps.c.device == device).order_by(gaps.c.first_seq)
        if open_only:
            query = query.where(gaps.c.closed_at.is_(None))
        with self.reader.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def command(self, command_id: str) -> Row | None:
        with self.reader.connect() as conn:
            row = conn.execute(select(commands).where(commands.c.id == command_id)).mappings().first()
            return dict(row) if row is not None else None

    def ingest_errors(self) -> list[Row]:
        query = select(ingest_errors).order_by(ingest_errors.c.reason, ingest_errors.c.family)
        with self.reader.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def counts(self) -> Row:
        """Totals for /api/stats and the metrics."""
        with self.reader.connect() as conn:
            registry = _REGISTRY.subquery()
            online_rows = conn.execute(select(registry.c.online, func.count()).group_by(registry.c.online))
            by_online = {bool(row[0]): int(row[1]) for row in online_rows}
            status_rows = conn.execute(select(commands.c.status, func.count()).group_by(commands.c.status))
            by_status = {str(row[0]): int(row[1]) for row in status_rows}
            return {
                "devices": sum(by_online.values()),
                "devices_online": by_online.get(True, 0),
                "events": conn.execute(select(func.count()).select_from(events)).scalar_one(),
                "gaps_open": conn.execute(
                    select(func.count()).select_from(gaps).where(gaps.c.closed_at.is_(None))
                ).scalar_one(),
                "commands": by_status,
            }
