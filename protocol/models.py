"""Pydantic models for every payload of contract version 1.

Wire models accept unknown fields (``extra="allow"``): the contract grows only by optional
fields, so an old reader must not refuse a newer writer. ``decode`` turns bytes into a model and
raises ``PayloadError`` naming the first wrong field.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from protocol.errors import PayloadError
from protocol.timefmt import parse_ts
from protocol.topics import check_device_id, check_event_kind

DEFAULT_MAX_PAYLOAD = 256 * 1024
"""Largest payload (bytes) a receiver accepts unless configured otherwise."""


def _check_ts(value: str) -> str:
    parse_ts(value)
    return value


class WireModel(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=False)

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False)


class Signature(WireModel):
    alg: Literal["ed25519"] = Field(description="Signature algorithm; only ed25519 in v1.")
    kid: str = Field(min_length=1, max_length=128, description="Key id of the signing key.")
    value: str = Field(min_length=1, max_length=256, description="Base64 signature.")


class Status(WireModel):
    online: bool
    ts: str
    role: str | None = None
    version: str | None = None
    boot_id: str | None = None

    _ts = field_validator("ts")(_check_ts)


class Telemetry(WireModel):
    ts: str
    seq: int = Field(ge=0)
    uptime_s: float = Field(ge=0)
    cpu_pct: float = Field(ge=0, le=100)
    mem_pct: float = Field(ge=0, le=100)
    disk_pct: float = Field(ge=0, le=100)
    temp_c: float | None = None

    _ts = field_validator("ts")(_check_ts)


class EventEnvelope(WireModel):
    id: str = Field(min_length=1, max_length=64)
    seq: int = Field(ge=0)
    ts: str
    device: str
    kind: str
    data: dict[str, Any] = Field(default_factory=dict)
    sig: Signature | None = None

    _ts = field_validator("ts")(_check_ts)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return check_device_id(value)

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        return check_event_kind(value)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class ShadowReported(WireModel):
    ts: str
    config_version: int = Field(ge=0)
    software: dict[str, Any] = Field(default_factory=dict)
    peripherals: dict[str, Any] = Field(default_factory=dict)
    local_overrides: dict[str, Any] = Field(default_factory=dict)
    local_revision: int = Field(default=0, ge=0)

    _ts = field_validator("ts")(_check_ts)


class ShadowDesired(WireModel):
    version: int = Field(ge=0)
    config: dict[str, Any] = Field(default_factory=dict)
    release: dict[str, Any] | None = None
    issued_at: str | None = None
    expires_at: str | None = None
    nonce: str | None = None
    sig: Signature | None = None

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude_none=True)
        data.setdefault("release", None)
        return data


class Command(WireModel):
    id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=64)
    args: dict[str, Any] = Field(default_factory=dict)
    issued_at: str
    expires_at: str
    nonce: str = Field(min_length=1, max_length=128)
    sig: Signature | None = None

    _issued = field_validator("issued_at")(_check_ts)
    _expires = field_validator("expires_at")(_check_ts)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


CommandStatus = Literal["ok", "error", "rejected"]


class CommandResult(WireModel):
    id: str = Field(min_length=1, max_length=64)
    status: CommandStatus
    result: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class RpcRequest(WireModel):
    id: str = Field(min_length=1, max_length=64)
    service: str = Field(min_length=1, max_length=64)
    method: str = Field(min_length=1, max_length=64)
    params: dict[str, Any] = Field(default_factory=dict)


class RpcResponse(WireModel):
    id: str = Field(min_length=1, max_length=64)
    ok: bool
    result: dict[str, Any] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


M = TypeVar("M", bound=BaseModel)


def _describe(exc: ValidationError) -> tuple[str, str]:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(payload)"
    return field, f"field '{field}': {first['msg']}"


def decode(
    model: type[M],
    payload: bytes | str,
    *,
    topic: str | None = None,
    max_bytes: int = DEFAULT_MAX_PAYLOAD,
) -> M:
    """Parse a UTF-8 JSON object into ``model``.

    Raises PayloadError saying what was wrong: too large, not UTF-8, not JSON, not an object, or
    which field failed validation.
    """
    raw = payload.encode() if isinstance(payload, str) else payload
    if len(raw) > max_bytes:
        raise PayloadError(f"{len(raw)} bytes is over the {max_bytes}-byte limit", topic=topic)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"not UTF-8 (byte {exc.start})", topic=topic) from exc
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"not JSON ({exc.msg} at char {exc.pos})", topic=topic) from exc
    if not isinstance(obj, dict):
        raise PayloadError(f"expected a JSON object, got {type(obj).__name__}", topic=topic)
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        field, message = _describe(exc)
        raise PayloadError(message, topic=topic, field=field) from exc
    except ValueError as exc:  # validators raising TopicError/ValueError outside pydantic wrapping
        raise PayloadError(str(exc), topic=topic) from exc
