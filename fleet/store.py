"""The fleet database: batch writes from ingest, command rows, and the queries the API needs."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select, text
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
from fleet.devicequery import (
    STATES,
    DeviceFilter,
    alerting_by_site,
    count_query,
    cutoff_for,
    overview_queries,
    page_query,
    registry,
)
from fleet.inbound import Inbound
from fleet.pki_store import DeviceRevocation
from fleet.snapshots import image_of, without_image
from fleet.telemetryhist import history
from protocol.timefmt import utc_now

Row = dict[str, Any]


class Store:
    """SQLAlchemy Core access to one database (SQLite file or PostgreSQL)."""

    def __init__(self, url: str, *, silent_after_s: float = 120.0) -> None:
        self.url = url
        self.silent_after_s = silent_after_s  # status online but nothing heard for longer: silent
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

    def cutoff(self) -> datetime:
        """Devices heard from before this moment are silent (see fleet/devicequery.py)."""
        return cutoff_for(utc_now(), self.silent_after_s)

    def devices(self, *, role: str | None = None, online: bool | None = None) -> list[Row]:
        """The whole registry by id (``revoked`` devices are shown offline, with when and why)."""
        return self.device_page(DeviceFilter(role=role, online=online, limit=None))[0]

    def device_page(self, flt: DeviceFilter, *, total: bool = True) -> tuple[list[Row], int | None]:
        """One page of the registry and (with ``total``) how many devices match the filter."""
        cutoff = self.cutoff()
        with self.reader.connect() as conn:
            rows = [dict(r) for r in conn.execute(page_query(flt, cutoff)).mappings()]
            count = conn.execute(count_query(flt, cutoff)).scalar_one() if total else None
        return rows, count

    def device(self, device_id: str) -> Row | None:
        with self.reader.connect() as conn:
            row = conn.execute(registry(self.cutoff()).where(devices.c.id == device_id)).mappings().first()
            return dict(row) if row is not None else None

    def roles(self) -> list[str]:
        """The roles devices reported (for the dashboard's filter)."""
        query = select(devices.c.role).where(devices.c.role.is_not(None)).distinct().order_by(devices.c.role)
        with self.reader.connect() as conn:
            return [str(r) for r in conn.execute(query).scalars()]

    def overview(self) -> Row:
        """Devices by site and by version, each split by state, plus alerting devices by site."""
        by_site, by_version = overview_queries(self.cutoff())
        sites: dict[str, dict[str, int]] = {}
        versions: dict[str, dict[str, int]] = {}
        with self.reader.connect() as conn:
            for site, state, count in conn.execute(by_site):
                sites.setdefault(site or "", {})[str(state)] = int(count)
            for version, state, count in conn.execute(by_version):
                versions.setdefault(version or "", {})[str(state)] = int(count)
            alerting = {site or "": int(count) for site, count in conn.execute(alerting_by_site())}
        site_rows = [
            {"site": site, **_state_counts(states), "alerting": alerting.get(site, 0)}
            for site, states in sorted(sites.items())
        ]
        version_rows = [{"version": v, **_state_counts(states)} for v, states in sorted(versions.items())]
        return {"sites": site_rows, "versions": version_rows}

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
        """One command with its result (a snapshot's picture left out: ``snapshot_image``)."""
        row = self._command(command_id)
        return without_image(row) if row is not None else None

    def snapshot_image(self, command_id: str) -> tuple[str, bytes] | None:
        """(device, JPEG) of a successful ``snapshot`` command (fleet/snapshots.py)."""
        row = self._command(command_id)
        image = image_of(row) if row is not None else None
        return (str(row["device"]), image) if row is not None and image is not None else None

    def _command(self, command_id: str) -> Row | None:
        with self.reader.connect() as conn:
            row = conn.execute(select(commands).where(commands.c.id == command_id)).mappings().first()
            return dict(row) if row is not None else None

    def commands_of(self, device: str, *, limit: int = 50) -> list[Row]:
        """Commands sent to ``device``, newest first, with their results."""
        query = (
            select(commands)
            .where(commands.c.device == device)
            .order_by(commands.c.issued_at.desc(), commands.c.id.desc())
            .limit(limit)
        )
        with self.reader.connect() as conn:
            return [without_image(dict(r)) for r in conn.execute(query).mappings()]

    def telemetry_history(self, device: str, *, hours: float = 24.0) -> list[Row]:
        """1-minute telemetry rollups of the last ``hours`` (fleet/telemetryhist.py)."""
        return history(self.reader, device, utc_now() - timedelta(hours=hours))

    def ingest_errors(self) -> list[Row]:
        query = select(ingest_errors).order_by(ingest_errors.c.reason, ingest_errors.c.family)
        with self.reader.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def counts(self) -> Row:
        """Totals for /api/stats and the metrics."""
        with self.reader.connect() as conn:
            listed = registry(self.cutoff()).subquery()
            state_rows = conn.execute(select(listed.c.state, func.count()).group_by(listed.c.state))
            by_state = {str(row[0]): int(row[1]) for row in state_rows}
            status_rows = conn.execute(select(commands.c.status, func.count()).group_by(commands.c.status))
            by_status = {str(row[0]): int(row[1]) for row in status_rows}
            return {
                "devices": sum(by_state.values()),
                "devices_online": by_state.get("online", 0),
                "devices_silent": by_state.get("silent", 0),
                "events": conn.execute(select(func.count()).select_from(events)).scalar_one(),
                "gaps_open": conn.execute(
                    select(func.count()).select_from(gaps).where(gaps.c.closed_at.is_(None))
                ).scalar_one(),
                "commands": by_status,
            }


def _state_counts(states: dict[str, int]) -> dict[str, int]:
    counts = {state: states.get(state, 0) for state in STATES}
    return {"total": sum(counts.values()), **counts}
