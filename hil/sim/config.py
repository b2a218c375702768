"""Settings of one simulator run (many virtual kiosks and cameras, on one or more asyncio loops)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from hil.sim.ota import OtaSettings, parse_range
from protocol.topics import DEFAULT_PREFIX

DEVICES_PER_PROC = 5000
"""Devices one simulator process keeps busy without falling behind (``procs`` 0 = automatic)."""


class SimConfigError(ValueError):
    """A simulator setting is wrong (bad broker URL, impossible numbers)."""


def parse_broker_url(url: str) -> tuple[str, int]:
    """``mqtt://HOST:PORT`` → (host, port); port 1883 when left out."""
    parsed = urlparse(url)
    if parsed.scheme not in ("mqtt", "tcp") or not parsed.hostname:
        raise SimConfigError(
            f"broker URL {url!r} must look like mqtt://HOST:PORT (e.g. mqtt://127.0.0.1:1883)"
        )
    try:
        port = parsed.port or 1883
    except ValueError as exc:
        raise SimConfigError(f"broker URL {url!r} has an invalid port") from exc
    return parsed.hostname, port


class SimConfig(BaseModel):
    """Everything a simulator run needs; defaults give a realistic, quiet city."""

    model_config = ConfigDict(extra="forbid")

    broker: str = Field(description="Broker URL, mqtt://HOST:PORT.")
    devices: int = Field(default=30, ge=1, le=50_000, description="Number of simulated devices.")
    cameras: int | None = Field(
        default=None, ge=0, description="How many of them are cameras (the rest kiosks); default: half."
    )
    procs: int = Field(
        default=0,
        ge=0,
        le=64,
        description=f"Worker processes the devices are split over; 0: one per {DEVICES_PER_PROC:,} devices.",
    )
    prefix: str = Field(default=DEFAULT_PREFIX, min_length=1, description="Topic prefix (topic_prefix).")
    id_prefix: str = Field(
        default="sim", pattern=r"^[a-z0-9][a-z0-9-]{0,40}$", description="Middle part of the device ids."
    )
    duration_s: float | None = Field(default=None, gt=0, description="Stop after this many seconds.")
    telemetry_interval_s: float = Field(default=10.0, gt=0, description="Seconds between telemetry messages.")
    time_scale: float = Field(
        default=1.0, gt=0, description="Speed-up of scenario time (60: a traffic-count minute per second)."
    )
    seed: int = Field(default=0, description="Seed of the scenario randomness (reproducible runs).")
    version: str = Field(default="0.1.0-sim", description="Software version the devices report.")
    ramp_rate: float = Field(default=1000.0, gt=0, description="Connection attempts started per second.")
    max_connecting: int = Field(default=100, ge=1, description="Connection attempts in flight at once.")
    connect_timeout_s: float = Field(default=30.0, gt=0, description="Wait this long for a CONNACK.")
    keepalive_s: int = Field(default=60, ge=5, le=65535, description="MQTT keep-alive of each device.")
    session_expiry_s: int = Field(default=600, ge=0, description="MQTT v5 session expiry on the broker.")
    reconnect_min_s: float = Field(default=0.5, gt=0, description="First reconnect delay after a drop.")
    reconnect_max_s: float = Field(default=30.0, gt=0, description="Longest reconnect delay (backoff cap).")
    load_events: int = Field(
        default=0, ge=0, description="Extra events per device once all devices are connected (benchmark)."
    )
    load_rate: float = Field(
        default=0.0, ge=0, description="Total events/s of the load phase; 0 = as fast as possible."
    )

    ota_fail: float = Field(
        default=0.0, ge=0, le=1, description="Chance that an update fails before the switch (ota.failed)."
    )
    ota_rollback: float = Field(
        default=0.0, ge=0, le=1, description="Chance that an update fails its health gate (ota.rolled_back)."
    )
    ota_offline: float = Field(
        default=0.0, ge=0, le=1, description="Chance that a device drops off the network during a download."
    )
    ota_seconds: tuple[float, float] = Field(
        default=(5.0, 30.0), description="Download time of an update, LOW..HIGH seconds (drawn per device)."
    )
    ota_offline_seconds: tuple[float, float] = Field(
        default=(10.0, 60.0), description="How long a device dropping off mid-update stays away, LOW..HIGH."
    )

    trust: str | None = Field(
        default=None,
        description=(
            "Fleet key directory (the fleet's DATA_DIR/keys, made by `cityedge fleet keys init`): devices "
            "then run only commands and desired states signed by a key listed there, as enrolled agents. "
            "Default: they accept unsigned ones, as agents set up for development."
        ),
    )

    @field_validator("trust")
    @classmethod
    def _trust(cls, value: str | None) -> str | None:
        if value is not None:
            fleet_keys(value)
        return value

    @field_validator("ota_seconds", "ota_offline_seconds", mode="before")
    @classmethod
    def _range(cls, value: Any) -> Any:
        return parse_range(value) if isinstance(value, str) else value

    @field_validator("ota_seconds", "ota_offline_seconds")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] <= value[1]:
            raise ValueError(f"{value[0]}..{value[1]} must be LOW..HIGH seconds, LOW >= 0")
        return value

    @field_validator("ota_rollback")
    @classmethod
    def _chances(cls, value: float, info: ValidationInfo) -> float:
        if value + float(info.data.get("ota_fail", 0.0)) > 1.0:
            raise ValueError("ota_fail + ota_rollback must not exceed 1")
        return value

    @property
    def ota(self) -> OtaSettings:
        return OtaSettings(
            fail=self.ota_fail,
            rollback=self.ota_rollback,
            offline=self.ota_offline,
            seconds=self.ota_seconds,
            offline_seconds=self.ota_offline_seconds,
        )

    @field_validator("broker")
    @classmethod
    def _broker(cls, value: str) -> str:
        parse_broker_url(value)
        return value

    @model_validator(mode="after")
    def _cameras(self) -> SimConfig:
        if self.cameras is not None and self.cameras > self.devices:
            raise ValueError(f"cameras ({self.cameras}) cannot exceed devices ({self.devices})")
        return self

    @property
    def worker_procs(self) -> int:
        """The number of processes this run uses."""
        wanted = self.procs or math.ceil(self.devices / DEVICES_PER_PROC)
        return max(1, min(wanted, self.devices))

    @property
    def host(self) -> str:
        return parse_broker_url(self.broker)[0]

    @property
    def port(self) -> int:
        return parse_broker_url(self.broker)[1]


def fleet_keys(directory: str) -> dict[str, Ed25519PublicKey]:
    """The fleet command keys usable now (kid → key) from a fleet key directory: the root-signed key
    list checked against the root's public key, as an enrolled agent checks it."""
    from fleet.signer import KEY_LIST, ROOT_PUBLIC
    from protocol.timefmt import utc_now
    from protocol.trust import RootKey, TrustError, verify_key_list

    folder = Path(directory)
    try:
        root = RootKey.from_dict(json.loads((folder / ROOT_PUBLIC).read_text(encoding="utf-8")))
        key_list = verify_key_list(json.loads((folder / KEY_LIST).read_text(encoding="utf-8")), root)
    except (OSError, ValueError, TrustError) as exc:
        raise SimConfigError(
            f"fleet keys in {folder} cannot be used ({exc}); give the fleet's DATA_DIR/keys directory"
        ) from exc
    return key_list.active(utc_now())
