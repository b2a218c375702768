"""Apply one batch of inbound messages inside one database transaction.

Per batch: register the devices (insert-or-ignore, then lock their rows on PostgreSQL so that
several workers serialise per device), fold status/telemetry/shadow/last-seen into the device
rows, insert new events (de-duplicated by id) with the evidence rows of violations verified at
arrival, open and close sequence gaps, record command results, and add up the rejected messages
by reason and topic family.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, case, func, select

from fleet.db import (
    FAST_DIALECTS,
    UtcDateTime,
    add_error_counts,
    chunks,
    commands,
    devices,
    events,
    evidence,
    gaps,
    insert_events,
    insert_ignore,
    site_of,
    touch_devices,
)
from fleet.inbound import Inbound
from fleet.otastate import record_ota
from fleet.telemetryhist import record_telemetry
from protocol.timefmt import parse_ts


@dataclass
class BatchOutcome:
    """What one committed batch changed (for stats and logs)."""

    messages: int = 0
    events_new: int = 0
    events_duplicate: int = 0
    gaps_opened: int = 0
    gaps_closed: int = 0
    command_results: int = 0
    rejected: int = 0


def apply_batch(
    conn: Connection,
    items: Sequence[Inbound],
    *,
    retained_floor: datetime | None = None,
    known: set[str] | None = None,
) -> BatchOutcome:
    """Write ``items`` using ``conn`` (the caller owns the transaction).

    A retained message (an old value the broker replays on subscribe) does not overwrite a value
    received live at or after ``retained_floor`` (when this worker started). ``known`` caches the
    device ids already registered, so they are not inserted again on every batch.
    """
    out = BatchOutcome(messages=len(items))
    good = [i for i in items if i.ok and i.device is not None and i.body is not None]
    rejected = [i for i in items if not i.ok]
    if good:
        states = _lock_devices(conn, good, set() if known is None else known)
        for item in good:
            states[str(item.device)].fold(item, retained_floor)
        _store_events(conn, [i for i in good if i.family == "events"], states, out)
        _store_command_results(conn, [i for i in good if i.family == "commands/res"], out)
        record_telemetry(conn, [i for i in good if i.family == "telemetry"])  # 1-minute history
        _save_devices(conn, states)
    if rejected:
        _count_rejected(conn, rejected)
        out.rejected = len(rejected)
    return out


_STAMPS = {"status": "status_at", "telemetry": "telemetry_at", "shadow/reported": "shadow_reported_at"}
_TICK = timedelta(microseconds=1)
_SEEN_ONLY = {"last_seen", "last_seq"}
_SEEN = bindparam("b_last_seen", type_=UtcDateTime())
# last_seen only moves forward, whatever order batches of several workers commit in.
_LAST_SEEN = {
    "sqlite": func.max(devices.c.last_seen, _SEEN, type_=UtcDateTime()),  # scalar max() in SQLite
    "postgresql": func.greatest(devices.c.last_seen, _SEEN, type_=UtcDateTime()),
}


class DeviceState:
    """The columns of one device row this batch reads, and the ones it changes."""

    __slots__ = ("changed", "id", "values")

    def __init__(self, row: Mapping[Any, Any]) -> None:
        self.id: str = row["id"]
        self.values: dict[str, Any] = dict(row)
        self.changed: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.values[key] = value
        self.changed[key] = value

    def fold(self, item: Inbound, retained_floor: datetime | None) -> None:
        body = item.body or {}
        at = item.received_at
        stamp = self.values.get(_STAMPS.get(item.family, ""))
        if item.retained and stamp is not None and retained_floor is not None and stamp >= retained_floor:
            return
        is_will = item.family == "status" and not body.get("online", True)
        if not item.retained and not is_will and at > self.changed.get("last_seen", at - _TICK):
            self.changed["last_seen"] = at  # written as "the later of this and the stored value"
        if item.family == "status":
            self["online"] = bool(body["online"])
            self["status"], self["status_at"] = body, at
            for key in ("role", "version", "boot_id"):
                if body.get(key) is not None:
                    self[key] = body[key]
        elif item.family == "telemetry":
            self["telemetry"], self["telemetry_at"] = body, at
        elif item.family == "shadow/reported":
            self["shadow_reported"], self["shadow_reported_at"] = body, at


_PG_LOCK_DEVICES = "SELECT id, last_seq FROM devices WHERE id = ANY(%b::varchar[]) ORDER BY id FOR UPDATE"
_PG_EXISTING_EVENTS = "SELECT id FROM events WHERE id = ANY(%b::varchar[])"


def _select_locked(conn: Connection, ids: Sequence[str], states: dict[str, DeviceState]) -> None:
    """Read (and on PostgreSQL lock) the rows: only id and last_seq, which gap detection needs."""
    if conn.dialect.name == "postgresql":  # one array parameter: a short query text, parsed once
        for device, last_seq in conn.exec_driver_sql(_PG_LOCK_DEVICES, (list(ids),)):
            states[device] = DeviceState({"id": device, "last_seq": last_seq})
        return
    for part in chunks(ids):
        query = select(devices.c.id, devices.c.last_seq).where(devices.c.id.in_(part)).order_by(devices.c.id)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        for device, last_seq in conn.execute(query):
            states[device] = DeviceState({"id": device, "last_seq": last_seq})


def _read_stamps(conn: Connection, ids: Sequence[str], states: dict[str, DeviceState]) -> None:
    """When each value was last received live (only needed to weigh retained replays)."""
    columns = [devices.c[name] for name in _STAMPS.values()]
    for part in chunks(ids):
        for row in conn.execute(select(devices.c.id, *columns).where(devices.c.id.in_(part))).mappings():
            states[row["id"]].values.update({name: row[name] for name in _STAMPS.values()})


def _lock_devices(conn: Connection, items: Sequence[Inbound], known: set[str]) -> dict[str, DeviceState]:
    first: dict[str, datetime] = {}
    for item in items:
        device = str(item.device)
        if device not in first or item.received_at < first[device]:
            first[device] = item.received_at

    def register(ids: Sequence[str]) -> None:
        rows = [
            {"id": d, "online": False, "first_seen": first[d], "last_seen": first[d], "site": site_of(d)}
            for d in ids
        ]
        conn.execute(insert_ignore(devices, conn.dialect), rows)

    ids = sorted(first)
    new = [d for d in ids if d not in known]
    if new:
        register(new)
    states: dict[str, DeviceState] = {}
    _select_locked(conn, ids, states)
    missing = [d for d in ids if d not in states]
    if missing:  # the cache was stale (a rolled-back batch, a deleted row)
        register(missing)
        _select_locked(conn, missing, states)
    known.update(ids)
    replayed = sorted({str(item.device) for item in items if item.retained})
    if replayed:
        _read_stamps(conn, replayed, states)
    return states


def _later(conn: Connection) -> Any:
    default = case((devices.c.last_seen < _SEEN, _SEEN), else_=devices.c.last_seen)
    return _LAST_SEEN.get(conn.dialect.name, default)


def _save_devices(conn: Connection, states: dict[str, DeviceState]) -> None:
    """One executemany per set of changed columns (events only touch last_seen/last_seq)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    seen: list[tuple[str, datetime | None, int | None]] = []
    for device, state in sorted(states.items()):
        if state.changed and state.changed.keys() <= _SEEN_ONLY and conn.dialect.name in FAST_DIALECTS:
            seen.append((device, state.changed.get("last_seen"), state.changed.get("last_seq")))
        elif state.changed:
            names = tuple(sorted(state.changed))
            groups[names].append({"b_id": device, **{f"b_{n}": state.changed[n] for n in names}})
    if seen:
        touch_devices(conn, seen)
    for names, params in groups.items():
        stmt = (
            devices.update()
            .where(devices.c.id == bindparam("b_id"))
            .values({name: _later(conn) if name == "last_seen" else bindparam(f"b_{name}") for name in names})
        )
        conn.execute(stmt, params)


def _store_events(
    conn: Connection, items: Sequence[Inbound], states: dict[str, DeviceState], out: BatchOutcome
) -> None:
    if not items:
        return
    unique: dict[str, Inbound] = {}
    for item in items:
        unique.setdefault(str((item.body or {})["id"]), item)
    existing: set[str] = set()
    if conn.dialect.name == "postgresql":
        existing.update(row[0] for row in conn.exec_driver_sql(_PG_EXISTING_EVENTS, (list(unique),)))
    for part in chunks(list(unique)) if conn.dialect.name != "postgresql" else ():
        existing.update(conn.execute(select(events.c.id).where(events.c.id.in_(part))).scalars())
    new = [item for key, item in unique.items() if key not in existing]
    out.events_duplicate = len(items) - len(new)
    out.events_new = len(new)
    if not new:
        return
    rows = [_event_row(item) for item in new]
    insert_events(conn, rows)
    verified = [item.evidence for item in new if item.evidence is not None]
    if verified:  # violations verified at arrival (fleet/evidence.py)
        conn.execute(insert_ignore(evidence, conn.dialect), verified)
    record_ota(conn, rows)  # the latest ota.* event per device, for the dashboard
    per_device: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        per_device[row["device"]].append(row["seq"])
    late: dict[str, list[int]] = {}
    for device, seqs in per_device.items():
        opened, late_seqs = _advance(conn, device, states[device], sorted(set(seqs)), new[0].received_at)
        out.gaps_opened += opened
        if late_seqs:
            late[device] = late_seqs
    if late:
        out.gaps_closed += _close_gaps(conn, late, new[0].received_at)


def _event_row(item: Inbound) -> dict[str, Any]:
    body = item.body or {}
    return {
        "id": body["id"],
        "device": item.device,
        "seq": body["seq"],
        "kind": body["kind"],
        "ts": parse_ts(body["ts"]),
        "received_at": item.received_at,
        "data": body.get("data") or {},
        "sig": body.get("sig"),
    }


def _advance(
    conn: Connection, device: str, state: DeviceState, seqs: Iterable[int], now: datetime
) -> tuple[int, list[int]]:
    """Move the device's highest seq forward; record jumps as gaps; return (opened, late seqs)."""
    last = state["last_seq"]
    opened: list[dict[str, Any]] = []
    late: list[int] = []
    for seq in seqs:
        if last is None or seq == last + 1:
            last = seq
        elif seq > last + 1:
            opened.append(
                {
                    "device": device,
                    "first_seq": last + 1,
                    "last_seq": seq - 1,
                    "missing": seq - 1 - last,
                    "detected_at": now,
                    "closed_at": None,
                }
            )
            last = seq
        else:
            late.append(seq)
    state["last_seq"] = last
    if opened:
        conn.execute(gaps.insert(), opened)
    return len(opened), late


def _close_gaps(conn: Connection, late: dict[str, list[int]], now: datetime) -> int:
    """Recount the open gaps that late events fall into; close those with nothing missing."""
    closed = 0
    query = select(gaps).where(gaps.c.device.in_(list(late)), gaps.c.closed_at.is_(None))
    for gap in conn.execute(query).mappings().all():
        if not any(gap["first_seq"] <= s <= gap["last_seq"] for s in late[gap["device"]]):
            continue
        present = conn.execute(
            select(func.count(func.distinct(events.c.seq))).where(
                events.c.device == gap["device"],
                events.c.seq.between(gap["first_seq"], gap["last_seq"]),
            )
        ).scalar_one()
        missing = gap["last_seq"] - gap["first_seq"] + 1 - int(present)
        values: dict[str, Any] = {"missing": max(missing, 0)}
        if missing <= 0:
            values["closed_at"] = now
            closed += 1
        conn.execute(gaps.update().where(gaps.c.id == gap["id"]).values(values))
    return closed


def _store_command_results(conn: Connection, items: Sequence[Inbound], out: BatchOutcome) -> None:
    if not items:
        return
    stmt = (
        commands.update()
        .where(
            commands.c.id == bindparam("b_id"),
            commands.c.device == bindparam("b_device"),
            commands.c.status.in_(("pending", "expired")),
        )
        .values(
            status=bindparam("b_status"),
            result=bindparam("b_result"),
            error=bindparam("b_error"),
            answered_at=bindparam("b_at"),
        )
    )
    params = []
    for item in items:
        body = item.body or {}
        params.append(
            {
                "b_id": body["id"],
                "b_device": item.device,
                "b_status": body["status"],
                "b_result": body.get("result") or {},
                "b_error": body.get("error"),
                "b_at": item.received_at,
            }
        )
    conn.execute(stmt, params)
    out.command_results = len(params)


def _count_rejected(conn: Connection, items: Sequence[Inbound]) -> None:
    counts: dict[tuple[str, str], list[Any]] = {}
    for item in items:
        key = (str(item.error), item.family)
        entry = counts.setdefault(key, [0, item.received_at, item.topic])
        entry[0] += 1
        entry[1], entry[2] = max(entry[1], item.received_at), item.topic
    rows = [
        {"reason": r, "family": f, "count": n, "last_at": at, "last_topic": topic[:1024]}
        for (r, f), (n, at, topic) in sorted(counts.items())
    ]
    conn.execute(add_error_counts(conn.dialect), rows)
