"""Alerts computed by the fleet from what it already stores, kept in table ``alerts`` with state.

Two sources:

- **conditions** read from the registry every ``alert_interval_s`` by ``AlertEngine.evaluate``
  (pure rules in ``device_findings``): offline or silent longer than ``offline_after_s``, overheat
  (telemetry ``temp_c``), disk low (``disk_pct``), clock skew (telemetry ``ts`` against its arrival),
  outbox backlog (``outbox_depth``), on battery (telemetry ``on_battery``), camera detection quality
  low (telemetry ``detection_quality``, 0–1), open sequence gaps older than ``gap_age_s``. An alert
  opens when its condition holds and resolves by itself when it no longer does.
- **events** from the cabinet I/O board, read incrementally by arrival time (with an overlap,
  ``EVENT_OVERLAP``, for batches of other workers that commit late): ``cabinet.tamper`` and
  ``cabinet.overheat`` latch until a person acknowledges them; ``power.on_battery`` holds until
  ``power.restored``.

At most one alert per device and kind is open (``open_key`` is unique while open), so several
workers may evaluate side by side. Acknowledging (with a note) is a person's act: the route that
does it is on the audit trail; the alert stays open until its condition clears (or, when latched,
is resolved by the acknowledgement).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, bindparam, func, select

from fleet.db import alerts, events, gaps, insert_ignore
from fleet.devicequery import registry
from protocol.timefmt import parse_ts, utc_now

log = logging.getLogger(__name__)

KINDS = (
    "offline",
    "overheat",
    "tamper",
    "on_battery",
    "disk_low",
    "clock_skew",
    "certificate_expiring",
    "outbox_backlog",
    "sequence_gap",
    "detection_quality",
)
EVENT_KINDS = ("cabinet.tamper", "cabinet.overheat", "power.on_battery", "power.restored")
EVENT_OVERLAP = timedelta(seconds=120)
"""Each scan re-reads this much before the newest event it saw: with several workers, a batch
may commit after a later-received event of another worker was scanned. Re-reading is idempotent
(one alert per event id; a restore resolves only alerts opened before it)."""


@dataclass(frozen=True)
class AlertRules:
    offline_after_s: float = 600.0
    overheat_c: float = 75.0
    disk_low_pct: float = 90.0
    clock_skew_s: float = 60.0
    outbox_backlog: int = 1000
    gap_age_s: float = 300.0
    detection_quality_min: float = 0.5
    certificate_days: float = 14.0


@dataclass(frozen=True)
class Finding:
    device: str
    kind: str
    severity: str
    summary: str
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.device}/{self.kind}"


def _number(values: Mapping[str, Any] | None, key: str) -> float | None:
    value = (values or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _minutes(seconds: float) -> str:
    if seconds >= 7200:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 60:.0f} min"


def device_findings(row: Mapping[str, Any], now: datetime, rules: AlertRules) -> list[Finding]:
    """The condition alerts of one registry row (``fleet.devicequery.registry``)."""
    device = str(row["id"])
    out: list[Finding] = []
    if row["state"] in ("offline", "silent"):
        quiet = (now - row["last_seen"]).total_seconds()
        if quiet >= rules.offline_after_s:
            word = "silent" if row["state"] == "silent" else "offline"
            out.append(
                Finding(device, "offline", "critical", f"{word} for {_minutes(quiet)}", {"state": word})
            )
    if row["state"] != "online":
        return out  # a device's last telemetry says nothing of now
    telemetry: Mapping[str, Any] | None = row["telemetry"]
    temp = _number(telemetry, "temp_c")
    if temp is not None and temp >= rules.overheat_c:
        out.append(Finding(device, "overheat", "critical", f"{temp:.1f} °C", {"temp_c": temp}))
    disk = _number(telemetry, "disk_pct")
    if disk is not None and disk >= rules.disk_low_pct:
        out.append(Finding(device, "disk_low", "warning", f"disk {disk:.0f} % full", {"disk_pct": disk}))
    backlog = _number(telemetry, "outbox_depth")
    if backlog is not None and backlog >= rules.outbox_backlog:
        out.append(
            Finding(
                device,
                "outbox_backlog",
                "warning",
                f"{backlog:.0f} events waiting",
                {"outbox_depth": backlog},
            )
        )
    if (telemetry or {}).get("on_battery") is True:
        out.append(Finding(device, "on_battery", "warning", "running on battery", {"source": "telemetry"}))
    quality = _number(telemetry, "detection_quality")
    if quality is not None and quality < rules.detection_quality_min:
        out.append(
            Finding(
                device,
                "detection_quality",
                "warning",
                f"detection quality {quality:.2f}",
                {"quality": quality},
            )
        )
    sent = (telemetry or {}).get("ts")
    if isinstance(sent, str) and row.get("telemetry_at") is not None:
        try:
            skew = (parse_ts(sent) - row["telemetry_at"]).total_seconds()
        except ValueError:
            skew = None
        if skew is not None and abs(skew) >= rules.clock_skew_s:
            out.append(
                Finding(device, "clock_skew", "warning", f"clock off by {skew:+.0f} s", {"skew_s": skew})
            )
    return out


def gap_findings(rows: Iterable[tuple[str, int, int]]) -> list[Finding]:
    """(device, open gaps, missing events) of gaps open longer than the rule's age."""
    return [
        Finding(
            device,
            "sequence_gap",
            "warning",
            f"{missing} events missing ({count} gaps)",
            {"gaps": count, "missing": missing},
        )
        for device, count, missing in rows
    ]


def certificate_findings(expiry: Mapping[str, datetime], now: datetime, rules: AlertRules) -> list[Finding]:
    """Devices whose newest certificate expires within ``certificate_days``."""
    soon = now + timedelta(days=rules.certificate_days)
    return [
        Finding(
            device,
            "certificate_expiring",
            "critical" if not_after <= now else "warning",
            f"certificate {'expired' if not_after <= now else 'expires'} {not_after:%Y-%m-%d}",
            {"not_after": not_after.isoformat()},
        )
        for device, not_after in sorted(expiry.items())
        if not_after <= soon
    ]


CONDITION_KINDS = frozenset(KINDS) - {"tamper"}


class AlertEngine:
    """Evaluates the rules against the store and keeps table ``alerts`` in step."""

    def __init__(
        self,
        store: Any,
        rules: AlertRules | None = None,
        *,
        certificates: Callable[[], Mapping[str, datetime]] | None = None,
        event_lookback_s: float = 3600.0,
    ) -> None:
        self.store = store
        self.rules = rules or AlertRules()
        self.certificates = certificates
        self._events_after = utc_now() - timedelta(seconds=event_lookback_s)

    def evaluate(self, now: datetime | None = None) -> dict[str, int]:
        """One pass: returns how many alerts were opened and resolved."""
        now = now or utc_now()
        findings = self._conditions(now)
        with self.store.writer.begin() as conn:
            opened, resolved = self._sync_conditions(conn, findings, now)
            opened_ev, resolved_ev = self._scan_events(conn, now)
        return {"opened": opened + opened_ev, "resolved": resolved + resolved_ev}

    def _conditions(self, now: datetime) -> dict[str, Finding]:
        cutoff = now - timedelta(seconds=self.store.silent_after_s)
        listed = registry(cutoff).subquery()
        query = select(
            listed.c.id, listed.c.state, listed.c.last_seen, listed.c.telemetry, listed.c.telemetry_at
        ).where(listed.c.state != "revoked")
        old = now - timedelta(seconds=self.rules.gap_age_s)
        gap_query = (
            select(gaps.c.device, func.count(), func.sum(gaps.c.missing))
            .where(gaps.c.closed_at.is_(None), gaps.c.detected_at <= old)
            .group_by(gaps.c.device)
        )
        found: list[Finding] = []
        with self.store.reader.connect() as conn:
            for row in conn.execute(query).mappings():
                found += device_findings(row, now, self.rules)
            found += gap_findings((str(d), int(c), int(m or 0)) for d, c, m in conn.execute(gap_query))
        if self.certificates is not None:
            try:
                found += certificate_findings(self.certificates(), now, self.rules)
            except Exception:
                log.exception("certificate expiry could not be read")
        return {f.key: f for f in found}

    def _sync_conditions(
        self, conn: Connection, findings: dict[str, Finding], now: datetime
    ) -> tuple[int, int]:
        open_rows = {
            row["open_key"]: row
            for row in conn.execute(
                select(alerts.c.id, alerts.c.open_key, alerts.c.kind, alerts.c.summary).where(
                    alerts.c.resolved_at.is_(None),
                    alerts.c.kind.in_(CONDITION_KINDS),
                    alerts.c.event_id.is_(None),
                )
            ).mappings()
        }
        new = [f for key, f in findings.items() if key not in open_rows]
        if new:
            conn.execute(
                insert_ignore(alerts, conn.dialect),
                [
                    {
                        "device": f.device,
                        "kind": f.kind,
                        "severity": f.severity,
                        "summary": f.summary,
                        "detail": f.detail,
                        "started_at": now,
                        "updated_at": now,
                        "open_key": f.key,
                    }
                    for f in new
                ],
            )
        changed = [
            {"b_id": row["id"], "b_summary": findings[key].summary, "b_detail": findings[key].detail}
            for key, row in open_rows.items()
            if key in findings and findings[key].summary != row["summary"]
        ]
        if changed:
            conn.execute(
                alerts.update()
                .where(alerts.c.id == bindparam("b_id"))
                .values(summary=bindparam("b_summary"), detail=bindparam("b_detail"), updated_at=now),
                changed,
            )
        gone = [row["id"] for key, row in open_rows.items() if key not in findings]
        for part in range(0, len(gone), 500):
            conn.execute(
                alerts.update()
                .where(alerts.c.id.in_(gone[part : part + 500]))
                .values(resolved_at=now, updated_at=now, open_key=None)
            )
        return len(new), len(gone)

    def _scan_events(self, conn: Connection, now: datetime) -> tuple[int, int]:
        query = (
            select(events.c.id, events.c.device, events.c.kind, events.c.received_at, events.c.data)
            .where(events.c.received_at > self._events_after - EVENT_OVERLAP, events.c.kind.in_(EVENT_KINDS))
            .order_by(events.c.received_at, events.c.id)
        )
        opened = resolved = 0
        for row in conn.execute(query).mappings().all():
            self._events_after = max(self._events_after, row["received_at"])
            if row["kind"] == "power.restored":
                result = conn.execute(
                    alerts.update()
                    .where(
                        alerts.c.open_key == f"{row['device']}/on_battery",
                        alerts.c.started_at <= row["received_at"],  # not one a later event opened
                    )
                    .values(resolved_at=row["received_at"], updated_at=now, open_key=None)
                )
                resolved += int(result.rowcount or 0)
                continue
            kind = {
                "cabinet.tamper": "tamper",
                "cabinet.overheat": "overheat_event",
                "power.on_battery": "on_battery",
            }[row["kind"]]
            summary = {
                "tamper": "cabinet opened (tamper switch)",
                "overheat_event": "cabinet overheat reported by the I/O board",
                "on_battery": "mains lost: running on battery",
            }[kind]
            inserted = conn.execute(
                insert_ignore(alerts, conn.dialect).returning(alerts.c.id),
                {
                    "device": row["device"],
                    "kind": "overheat" if kind == "overheat_event" else kind,
                    "severity": "critical" if kind != "on_battery" else "warning",
                    "summary": summary,
                    "detail": {"event": row["kind"], "event_id": row["id"], **(row["data"] or {})},
                    "started_at": row["received_at"],
                    "updated_at": now,
                    "open_key": f"{row['device']}/{kind}",
                    "event_id": row["id"],
                },
            )
            opened += len(inserted.all())  # 0: this event's alert exists already
        return opened, resolved


def acknowledge(
    store: Any, alert_id: int, *, by: str, note: str, now: datetime | None = None
) -> dict[str, Any] | None:
    """Record who acknowledged alert ``alert_id`` and why; a latched alert is resolved by it."""
    now = now or utc_now()
    with store.writer.begin() as conn:
        row = conn.execute(select(alerts).where(alerts.c.id == alert_id)).mappings().first()
        if row is None:
            return None
        values: dict[str, Any] = {"acked_at": now, "acked_by": by, "ack_note": note, "updated_at": now}
        latched = (
            row["event_id"] is not None
            and row["open_key"] is not None
            and not row["open_key"].endswith("/on_battery")
        )
        if latched and row["resolved_at"] is None:
            values.update(resolved_at=now, open_key=None)
        conn.execute(alerts.update().where(alerts.c.id == alert_id).values(**values))
        updated = conn.execute(select(alerts).where(alerts.c.id == alert_id)).mappings().first()
    return dict(updated) if updated is not None else None


def list_alerts(
    store: Any,
    *,
    open_only: bool = True,
    device: str | None = None,
    kind: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """Alerts, newest first, and how many match."""
    where: list[ColumnElement[bool]] = []
    if open_only:
        where.append(alerts.c.resolved_at.is_(None))
    if device:
        where.append(alerts.c.device == device)
    if kind:
        where.append(alerts.c.kind == kind)
    query = select(alerts).where(*where).order_by(alerts.c.started_at.desc(), alerts.c.id.desc())
    with store.reader.connect() as conn:
        rows = [dict(r) for r in conn.execute(query.limit(limit).offset(offset)).mappings()]
        total = conn.execute(select(func.count()).select_from(alerts).where(*where)).scalar_one()
    return rows, int(total)


def open_counts(store: Any) -> dict[str, int]:
    """Open alerts by kind."""
    query = select(alerts.c.kind, func.count()).where(alerts.c.resolved_at.is_(None)).group_by(alerts.c.kind)
    with store.reader.connect() as conn:
        return {str(kind): int(count) for kind, count in conn.execute(query)}
