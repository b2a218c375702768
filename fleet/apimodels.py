"""Request and response models of the fleet REST API (they make up /openapi.json)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class DeviceOut(BaseModel):
    id: str = Field(description="Device id (MQTT client id, certificate CN).")
    role: str | None = Field(default=None, description="Role from the device status (kiosk, camera, ...).")
    version: str | None = Field(default=None, description="Agent version from the device status.")
    site: str | None = Field(
        default=None, description="Site/ward code taken from the id (cam-hn-gbt-0042: hn-gbt)."
    )
    online: bool = Field(
        description="Online: the retained status says so and the device was heard from lately "
        "(see state); never true for a revoked device."
    )
    state: str = Field(
        default="offline",
        description="online, silent (status online but nothing heard for longer than the fleet's "
        "silent_after_s), offline (status offline, e.g. its last will) or revoked.",
    )
    revoked: bool = Field(
        default=False, description="Every certificate of the device is revoked: it is cut off from the city."
    )
    revoked_at: datetime | None = Field(default=None, description="When its last certificate was revoked.")
    revocation_reason: str | None = Field(
        default=None, description="Why (RFC 5280 reason, e.g. key_compromise, cessation_of_operation)."
    )
    boot_id: str | None = Field(default=None, description="Boot id from the last status.")
    first_seen: datetime = Field(description="When the fleet first heard from the device.")
    last_seen: datetime = Field(description="When the device last sent anything (live).")
    status: dict[str, Any] | None = Field(default=None, description="Last status payload.")
    telemetry: dict[str, Any] | None = Field(default=None, description="Latest telemetry payload.")
    telemetry_at: datetime | None = Field(default=None, description="When the latest telemetry arrived.")
    shadow_reported: dict[str, Any] | None = Field(default=None, description="Last reported shadow.")
    shadow_desired: dict[str, Any] | None = Field(default=None, description="Desired shadow, when set.")
    last_seq: int | None = Field(default=None, description="Highest event seq received.")


class StateCounts(BaseModel):
    total: int
    online: int
    silent: int
    offline: int
    revoked: int


class SiteOverview(StateCounts):
    site: str = Field(description="Site/ward code ('' for devices whose id names none).")
    alerting: int = Field(description="Devices of the site with at least one open alert.")


class VersionOverview(StateCounts):
    version: str = Field(description="Agent version ('' when not reported yet).")


class OverviewOut(BaseModel):
    sites: list[SiteOverview]
    versions: list[VersionOverview]
    alerts: dict[str, int] = Field(default_factory=dict, description="Open alerts by kind.")


class AlertOut(BaseModel):
    id: int
    device: str
    kind: str = Field(description="offline, overheat, tamper, on_battery, disk_low, clock_skew, ...")
    severity: str = Field(description="critical or warning.")
    summary: str
    detail: dict[str, Any]
    started_at: datetime
    updated_at: datetime
    resolved_at: datetime | None = Field(default=None, description="Null while the alert is open.")
    acked_at: datetime | None = None
    acked_by: str | None = None
    ack_note: str | None = None


class TelemetryPoint(BaseModel):
    minute: datetime = Field(description="Start of the minute (UTC).")
    n: int = Field(description="Telemetry messages in that minute.")
    cpu_pct: float | None = None
    mem_pct: float | None = None
    disk_pct: float | None = None
    temp_c: float | None = None


class AckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str = Field(min_length=1, max_length=2000, description="What was done or why it can wait.")


class EventOut(BaseModel):
    id: str = Field(description="Unique event id (what duplicates are dropped on).")
    device: str
    seq: int
    kind: str
    ts: datetime = Field(description="Device time of the event.")
    received_at: datetime = Field(description="When the fleet received it.")
    data: dict[str, Any]
    sig: dict[str, Any] | None = None


class GapOut(BaseModel):
    first_seq: int = Field(description="First missing seq of the gap.")
    last_seq: int = Field(description="Last missing seq of the gap.")
    missing: int = Field(description="How many of those seqs are still missing.")
    detected_at: datetime
    closed_at: datetime | None = Field(default=None, description="When the last missing event arrived.")
    open: bool


class CommandIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="Command name, e.g. ping, reboot.")
    args: dict[str, Any] = Field(default_factory=dict, description="Command arguments.")
    ttl_s: float | None = Field(
        default=None, gt=0, description="Lifetime in seconds (default from the fleet)."
    )


class CommandCreated(BaseModel):
    id: str = Field(description="Command id; poll GET /api/commands/{id} for the result.")


class CommandOut(BaseModel):
    id: str
    device: str
    name: str
    args: dict[str, Any]
    issued_at: datetime
    expires_at: datetime
    status: str = Field(description="pending, ok, error, rejected or expired.")
    result: dict[str, Any] | None = None
    error: str | None = None
    answered_at: datetime | None = None


class IngestErrorOut(BaseModel):
    reason: str = Field(description="oversized, not_utf8, not_json, not_object, invalid, ...")
    family: str = Field(description="Topic family (status, telemetry, events, ...).")
    count: int
    last_at: datetime | None = None
    last_topic: str | None = None


class RejectedCount(BaseModel):
    reason: str
    family: str
    count: int


class IngestOut(BaseModel):
    worker_id: str
    group: str
    uptime_s: float
    received_total: int = Field(description="Messages this worker received since it started.")
    committed_total: int = Field(description="Messages this worker committed (and acknowledged).")
    rate_per_s: float = Field(description="Committed messages per second over the last 5 s.")
    rate_1m_per_s: float = Field(description="Committed messages per second over the last minute.")
    queue_depth: int
    batches: int
    mean_batch_ms: float
    db_retries: int
    events_new: int
    events_duplicate: int
    gaps_opened: int
    gaps_closed: int
    command_results: int
    commands_issued: int
    received: dict[str, int]
    rejected: list[RejectedCount] = Field(description="Rejected by this worker since it started.")
    rpc: list[dict[str, Any]] = Field(description="RPC answers by service and outcome.")


class StatsOut(BaseModel):
    devices: int
    devices_online: int
    devices_silent: int = Field(default=0, description="Status online but nothing heard lately.")
    events: int
    gaps_open: int
    commands: dict[str, int] = Field(description="Commands by status.")
    ingest_errors: list[IngestErrorOut] = Field(description="Rejected messages, all workers, all time.")
    malformed_total: int = Field(description="Rejected for any reason except oversized (all workers).")
    oversized_total: int = Field(description="Rejected for being over the size limit (all workers).")
    ingest: IngestOut
    db: str = Field(description="Database dialect (sqlite or postgresql).")


class HealthOut(BaseModel):
    ok: bool
    db: bool
    broker: bool
    writer: bool


class ReleaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, max_length=64, description="Release version to run, e.g. 1.4.2.")
    target: str | None = Field(
        default=None,
        max_length=512,
        description="TUF target name of the release manifest (default releases/VERSION/manifest.json).",
    )
    allow_downgrade: bool = Field(
        default=False, description="Install even if the device runs a newer version."
    )
    force: bool = Field(default=False, description="Ignore the device's update lock and install windows.")


class DesiredReleaseOut(BaseModel):
    version: str = Field(description="Release version the device must run.")
    target: str = Field(description="TUF target name of the release manifest.")
    allow_downgrade: bool = False
    force: bool = False


class DesiredOut(BaseModel):
    """The signed desired state exactly as published retained on shadow/desired."""

    model_config = ConfigDict(extra="allow")

    version: int = Field(description="Increases with every change; a device applies only a higher one.")
    device: str | None = Field(default=None, description="Device the state is signed for.")
    config: dict[str, Any] = Field(default_factory=dict, description="Desired configuration sections.")
    release: DesiredReleaseOut | None = Field(default=None, description="Release to run; null: stay.")
    issued_at: str | None = None
    expires_at: str | None = Field(default=None, description="The fleet re-signs well before this.")
    nonce: str | None = None
    sig: dict[str, Any] | None = Field(default=None, description="Fleet signature (absent when unsigned).")
    trust: dict[str, Any] | None = Field(default=None, description="Root-signed fleet key list.")


class OtaStateOut(BaseModel):
    kind: str = Field(description="Latest ota.* event kind, e.g. ota.committed.")
    seq: int
    ts: datetime = Field(description="Device time of that event.")
    data: dict[str, Any] = Field(description="from, to, reason, code, bytes_done, bytes_total.")
    label: str = Field(description="In words, e.g. 'committed 1.1.0' or 'rolled back: ...'.")


class DesiredView(BaseModel):
    device: str
    desired: DesiredOut | None = Field(description="Signed desired state; null when none was set.")
    running_version: str | None = Field(description="Version the device reports running (status).")
    applied_version: int | None = Field(description="Desired version the device reports applied.")
    ota: OtaStateOut | None = Field(description="Latest OTA progress event of the device.")
