"""Configuration of one fleet worker (pydantic, ``extra="forbid"``) and broker URL parsing."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from protocol.topics import DEFAULT_PREFIX


class FleetConfigError(ValueError):
    """A fleet setting is wrong (bad URL, unreadable file, impossible limit)."""


def default_worker_id() -> str:
    """A stable MQTT client id for this host, so the persistent session survives restarts."""
    host = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-") or "host"
    return f"fleet-{host}"[:63]


class FleetConfig(BaseModel):
    """Everything one fleet worker needs; the CLI builds it from its options."""

    model_config = ConfigDict(extra="forbid")

    broker_url: str = Field(
        default="mqtt://127.0.0.1:1883",
        description="Broker URL: mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS).",
    )
    db_url: str = Field(
        default="sqlite:///var/fleet.db",
        description="SQLAlchemy URL of the database (sqlite:///PATH or postgresql+psycopg://...).",
    )
    http_host: str = Field(default="127.0.0.1", description="Address the REST API and dashboard listen on.")
    http_port: int = Field(default=8080, ge=0, le=65535, description="Port of the REST API and dashboard.")
    share: bool = Field(
        default=False,
        description=(
            "Subscribe through $share/GROUP/... so several workers split the device messages. Off: one "
            "worker with an exclusive persistent subscription (mosquitto 2.0 keeps those across its own "
            "restarts, but not shared ones)."
        ),
    )
    group: str = Field(
        default="fleet",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Shared-subscription group (with share): workers in one group split the device messages.",
    )
    worker_id: str = Field(
        default_factory=default_worker_id,
        min_length=1,
        max_length=64,
        description="MQTT client id of this worker; keep it stable so its persistent session survives.",
    )
    data_dir: Path = Field(
        default=Path("var/fleet"), description="Fleet data directory (command-signing keys, CA) for plug-ins."
    )
    topic_prefix: str = Field(
        default=DEFAULT_PREFIX, min_length=1, description="Topic prefix of the contract."
    )
    ca_file: Path | None = Field(
        default=None, description="CA certificate that signed the broker's certificate."
    )
    cert_file: Path | None = Field(
        default=None, description="Certificate of the fleet's own identity (mTLS)."
    )
    key_file: Path | None = Field(default=None, description="Private key of the fleet's own identity (mTLS).")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive in seconds.")
    reconnect_max_s: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="Longest wait between reconnection attempts (doubling from 1 s).",
    )
    session_expiry_s: int = Field(
        default=86_400,
        ge=0,
        description="How long the broker keeps this worker's session (and its queue) offline.",
    )
    receive_maximum: int = Field(
        default=10_000,
        ge=1,
        le=65535,
        description="Unacknowledged QoS 1 messages the broker may send at once. Messages are acknowledged "
        "only after their batch committed, so this must hold several batches: the next ones arrive and "
        "are decoded while one commits (kept below queue_max, so receiving never blocks).",
    )
    max_payload_bytes: int = Field(
        default=256 * 1024, ge=1, description="Largest accepted payload, in bytes."
    )
    evidence_max_payload_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1,
        description="Largest accepted payload on evidence event topics, in bytes.",
    )
    evidence_kinds: tuple[str, ...] = Field(
        default=("traffic.violation",), description="Event kinds that carry evidence (larger size limit)."
    )
    writer_process: bool = Field(
        default=False,
        description="Decode and commit in a separate writer process, beside the MQTT thread "
        "(about twice the ingest rate on two or more cores); otherwise in a thread.",
    )
    batch_interval_s: float = Field(
        default=0.05,
        gt=0,
        le=5,
        description="Longest time a received message waits before its batch is committed.",
    )
    batch_idle_s: float = Field(
        default=0.005, gt=0, le=1, description="Commit early when no new message arrived for this long."
    )
    batch_max: int = Field(default=1000, ge=1, description="Most messages committed in one transaction.")
    queue_max: int = Field(default=20_000, ge=1, description="Messages held in memory before ingest pauses.")
    rpc_workers: int = Field(default=8, ge=1, le=256, description="Threads answering device RPC requests.")
    rpc_timeout_s: float = Field(
        default=5.0, gt=0, description="An RPC call that takes longer is answered 'timeout'."
    )
    command_ttl_s: float = Field(default=60.0, gt=0, description="Default lifetime of a command.")
    silent_after_s: float = Field(
        default=120.0,
        gt=0,
        description="A device whose status says online but that sent nothing for this long (a few "
        "telemetry periods) is shown as silent and not counted online.",
    )
    alert_interval_s: float = Field(
        default=30.0, gt=0, description="How often this worker evaluates the alert rules (fleet/alerts.py)."
    )
    event_retention_days: int = Field(
        default=90,
        ge=0,
        description="Days events are kept (PostgreSQL: whole day partitions are dropped, so up to one "
        "day more); 0 keeps them forever.",
    )
    telemetry_retention_days: int = Field(
        default=7, ge=1, description="Days the 1-minute telemetry rollups (device history charts) are kept."
    )
    housekeeping_s: float = Field(
        default=3600.0,
        gt=0,
        description="How often one worker creates partitions ahead and removes data past its retention.",
    )
    command_max_ttl_s: float = Field(
        default=86_400.0, gt=0, description="Longest lifetime a command may ask for."
    )
    command_grace_s: float = Field(
        default=5.0, ge=0, description="Unanswered commands are marked expired this long after they expire."
    )
    retained_sync_s: float = Field(
        default=1.0,
        ge=0,
        description="At start, read retained status/shadow for this long (brokers that follow MQTT 5 "
        "send no retained messages on shared subscriptions); 0 turns it off.",
    )
    pki_dir: Path | None = Field(
        default=None,
        description="City PKI directory (`fleet pki init`): evidence is verified against its inventory, "
        "revoked devices are shown as revoked, and its CRL is re-signed before it goes stale.",
    )
    pki_db_url: str | None = Field(
        default=None,
        description="Database of the PKI inventory when the PKI directory is not on this host "
        "(evidence checks and revocations only; the CRL is then kept fresh elsewhere).",
    )
    broker_dir: Path | None = Field(
        default=None,
        description="Broker directory (`fleet broker-config`): every CRL the service re-signs goes there.",
    )
    broker_reload: str | None = Field(
        default=None,
        pattern=r"^(pidfile|systemd):.+$",
        description="How the broker is told to re-read a new CRL: pidfile:PATH (SIGHUP) or systemd:UNIT.",
    )
    crl_check_s: float = Field(
        default=300.0,
        gt=0,
        description="How often the service checks the CRL; it re-signs it once half its lifetime has passed.",
    )

    rollout_backend: Literal["ota", "balena"] = Field(
        default="ota",
        description="How rollouts reach this fleet's devices: ota (signed desired state, our updater) "
        "or balena (balenaOS devices pinned to a release through balena-sdk).",
    )
    balena_fleet: str | None = Field(
        default=None,
        max_length=200,
        description="balenaCloud fleet (application) slug, e.g. myorg/kiosks (rollout_backend=balena).",
    )
    balena_host: str = Field(
        default="balena-cloud.com", description="balena API host (balenaCloud or an openBalena server)."
    )
    balena_token_file: Path | None = Field(
        default=None, description="File holding the balena API key (never on the command line)."
    )
    balena_poll_s: float = Field(
        default=30.0,
        ge=0,
        description="Read balena device status at most this often per rollout (API rate limits).",
    )

    @model_validator(mode="after")
    def _balena(self) -> FleetConfig:
        if self.rollout_backend == "balena" and (not self.balena_fleet or self.balena_token_file is None):
            raise FleetConfigError("rollout_backend balena needs balena_fleet and balena_token_file")
        return self

    @field_validator("broker_url")
    @classmethod
    def _broker(cls, value: str) -> str:
        BrokerUrl.parse(value)
        return value

    def broker(self) -> BrokerUrl:
        return BrokerUrl.parse(self.broker_url)

    def max_bytes_for(self, family: str, kind: str | None) -> int:
        if family == "events" and kind in self.evidence_kinds:
            return max(self.max_payload_bytes, self.evidence_max_payload_bytes)
        return self.max_payload_bytes


@dataclass(frozen=True)
class BrokerUrl:
    """``mqtt://[USER[:PASS]@]HOST[:PORT]`` or ``mqtts://...`` split into parts."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise FleetConfigError(f"broker URL {url!r} must start with mqtt:// or mqtts://")
        if not parts.hostname:
            raise FleetConfigError(f"broker URL {url!r} has no host name")
        try:
            port = parts.port
        except ValueError as exc:
            raise FleetConfigError(f"broker URL {url!r} has an invalid port") from exc
        tls = parts.scheme == "mqtts"
        return cls(
            host=parts.hostname,
            port=port if port is not None else (8883 if tls else 1883),
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )
