"""The device registry as the API and dashboard query it: liveness, filters, sorting and paging.

Liveness does not rest on the broker alone. A device whose retained status says online but that
has sent nothing for ``silent_after_s`` (a few telemetry periods) is **silent**: it is listed as
such, and is not counted online. This is computed in the query from ``last_seen`` (which ingest
keeps anyway), so nothing is written per message and nothing has to run to notice a silence.

States: ``online``, ``silent`` (status online, nothing heard lately), ``offline`` (status offline,
e.g. its last will) and ``revoked`` (every certificate revoked; never online).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, exists, false, func, literal, not_, select

from fleet.db import alerts, device_revocations, devices

STATES = ("online", "silent", "offline", "revoked")
SORTS = ("id", "site", "role", "version", "last_seen", "first_seen", "state")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

_revoked = device_revocations.c.revoked_at.is_not(None)


def _fresh(cutoff: datetime) -> ColumnElement[bool]:
    return devices.c.last_seen >= cutoff


def state_condition(state: str, cutoff: datetime) -> ColumnElement[bool]:
    """WHERE clause of one state (written so the (online, last_seen) index serves it)."""
    if state == "revoked":
        return _revoked
    if state == "online":
        return and_(devices.c.online, _fresh(cutoff), device_revocations.c.revoked_at.is_(None))
    if state == "silent":
        return and_(devices.c.online, devices.c.last_seen < cutoff, device_revocations.c.revoked_at.is_(None))
    if state == "offline":
        return and_(devices.c.online == false(), device_revocations.c.revoked_at.is_(None))
    raise ValueError(f"unknown state {state!r} (one of {', '.join(STATES)})")


def state_expr(cutoff: datetime) -> ColumnElement[str]:
    return case(
        (_revoked, literal("revoked")),
        (and_(devices.c.online, _fresh(cutoff)), literal("online")),
        (devices.c.online, literal("silent")),
        else_=literal("offline"),
    )


def registry(cutoff: datetime) -> Select[Any]:
    """Device rows as the registry shows them (``online`` only when live, never when revoked)."""
    live = and_(devices.c.online, _fresh(cutoff), device_revocations.c.revoked_at.is_(None))
    return select(
        *[c for c in devices.c if c.name != "online"],
        live.label("online"),
        state_expr(cutoff).label("state"),
        _revoked.label("revoked"),
        device_revocations.c.revoked_at,
        device_revocations.c.reason.label("revocation_reason"),
    ).select_from(devices.outerjoin(device_revocations, device_revocations.c.device == devices.c.id))


@dataclass(frozen=True)
class DeviceFilter:
    """What the device listing asks for. ``health`` names an alert kind that must be open
    (``any``: any open alert); ``q`` is a case-insensitive substring of the id."""

    role: str | None = None
    site: str | None = None
    state: str | None = None
    version: str | None = None
    health: str | None = None
    q: str | None = None
    online: bool | None = None
    sort: str = "id"
    descending: bool = False
    limit: int | None = DEFAULT_LIMIT
    offset: int = 0

    @staticmethod
    def parse_sort(text: str) -> tuple[str, bool]:
        """``last_seen`` ascending, ``-last_seen`` descending."""
        key = text.lstrip("-")
        if key not in SORTS:
            raise ValueError(f"cannot sort by {key!r} (one of {', '.join(SORTS)})")
        return key, text.startswith("-")


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def conditions(flt: DeviceFilter, cutoff: datetime) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if flt.role:
        where.append(devices.c.role == flt.role)
    if flt.site:
        where.append(devices.c.site == flt.site)
    if flt.version:
        where.append(devices.c.version == flt.version)
    if flt.state:
        where.append(state_condition(flt.state, cutoff))
    if flt.online is True:
        where.append(state_condition("online", cutoff))
    elif flt.online is False:
        where.append(not_(state_condition("online", cutoff)))
    if flt.q:
        pattern = f"%{_escape_like(flt.q.strip().lower())}%"
        where.append(devices.c.id.like(pattern, escape="\\"))
    if flt.health:
        open_alert = and_(alerts.c.device == devices.c.id, alerts.c.resolved_at.is_(None))
        if flt.health != "any":
            open_alert = and_(open_alert, alerts.c.kind == flt.health)
        where.append(exists().where(open_alert))
    return where


def _order(flt: DeviceFilter, cutoff: datetime) -> list[Any]:
    column: Any = state_expr(cutoff) if flt.sort == "state" else devices.c[flt.sort]
    keys = [column.desc() if flt.descending else column.asc()]
    if flt.sort != "id":
        keys.append(devices.c.id.desc() if flt.descending else devices.c.id.asc())
    return keys


def page_query(flt: DeviceFilter, cutoff: datetime) -> Select[Any]:
    query = registry(cutoff).where(*conditions(flt, cutoff)).order_by(*_order(flt, cutoff))
    if flt.limit is not None:
        query = query.limit(flt.limit).offset(flt.offset)
    return query


def count_query(flt: DeviceFilter, cutoff: datetime) -> Select[Any]:
    base = devices.outerjoin(device_revocations, device_revocations.c.device == devices.c.id)
    return select(func.count()).select_from(base).where(*conditions(flt, cutoff))


def overview_queries(cutoff: datetime) -> tuple[Select[Any], Select[Any]]:
    """Counts by (site, state) and by (version, state): the fleet overview."""
    base = devices.outerjoin(device_revocations, device_revocations.c.device == devices.c.id)
    state = state_expr(cutoff)
    by_site = select(devices.c.site, state, func.count()).select_from(base).group_by(devices.c.site, state)
    by_version = (
        select(devices.c.version, state, func.count()).select_from(base).group_by(devices.c.version, state)
    )
    return by_site, by_version


def alerting_by_site() -> Select[Any]:
    """Devices with at least one open alert, by site."""
    open_devices = select(alerts.c.device).where(alerts.c.resolved_at.is_(None)).distinct().subquery()
    return (
        select(devices.c.site, func.count())
        .select_from(devices.join(open_devices, open_devices.c.device == devices.c.id))
        .group_by(devices.c.site)
    )


def cutoff_for(now: datetime, silent_after_s: float) -> datetime:
    return now - timedelta(seconds=silent_after_s)
