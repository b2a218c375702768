"""Turn one received MQTT message into an ``Inbound`` item: decoded, or rejected with a reason.

No I/O: the writer side calls ``decode`` for every message (in the fleet process, or in the
writer process) and commits the result; nothing here raises on bad input.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from protocol.errors import TopicError
from protocol.models import (
    CommandResult,
    EventEnvelope,
    RpcRequest,
    ShadowReported,
    Status,
    Telemetry,
    WireModel,
)
from protocol.topics import Topics

log = logging.getLogger(__name__)

# Reasons a message is rejected (the ingest_errors counters are keyed on these).
OVERSIZED = "oversized"
NOT_UTF8 = "not_utf8"
NOT_JSON = "not_json"
NOT_OBJECT = "not_object"
INVALID = "invalid"
BAD_TOPIC = "bad_topic"
TOPIC_MISMATCH = "topic_mismatch"
BAD_EVIDENCE = "bad_evidence"
DB_REJECTED = "db_rejected"
INTERNAL = "internal"
REASONS = (
    OVERSIZED,
    NOT_UTF8,
    NOT_JSON,
    NOT_OBJECT,
    INVALID,
    BAD_TOPIC,
    TOPIC_MISMATCH,
    BAD_EVIDENCE,
    DB_REJECTED,
    INTERNAL,
)

MODELS: dict[str, type[WireModel]] = {
    "status": Status,
    "telemetry": Telemetry,
    "events": EventEnvelope,
    "shadow/reported": ShadowReported,
    "commands/res": CommandResult,
    "rpc/req": RpcRequest,
}


@dataclass(slots=True)
class Inbound:
    """One received message after decoding; ``error`` is set when it was rejected."""

    topic: str
    family: str
    device: str | None
    received_at: datetime
    body: dict[str, Any] | None = None
    error: str | None = None
    detail: str = ""
    retained: bool = False
    ack: Callable[[], None] | None = None
    evidence: dict[str, Any] | None = None
    """For a violation verified at arrival: its ``evidence`` row (``fleet.evidence.EvidenceIntake``)."""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class Received:
    """One message as the MQTT thread hands it on: raw, not decoded yet."""

    topic: str
    payload: bytes | bytearray
    received_at: datetime
    retained: bool = False
    ack: Callable[[], None] | None = None


def family_of(topic: str, prefix: str) -> str:
    """Cheap topic family for counters (``unknown`` outside the contract); no validation."""
    return _family_hint(topic, prefix)


def _family_hint(topic: str, prefix: str) -> str:
    """Best-effort family of a topic that did not parse, for the error counters."""
    rest = topic[len(prefix) :].split("/") if topic.startswith(prefix) else []
    if len(rest) >= 4 and rest[1] == "devices":
        tail = rest[3:]
        family = "events" if tail[0] == "events" else "/".join(tail)
        if family in MODELS:
            return family
    return "unknown"


def _parse_json(raw: bytes | bytearray) -> tuple[Any, str | None, str]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, NOT_UTF8, f"not UTF-8 (byte {exc.start})"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, NOT_JSON, f"not JSON ({exc.msg} at char {exc.pos})"
    except RecursionError:
        return None, NOT_JSON, "not JSON (nested too deeply)"
    if not isinstance(obj, dict):
        return None, NOT_OBJECT, f"expected a JSON object, got {type(obj).__name__}"
    return obj, None, ""


def _validate(model: type[BaseModel], obj: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    try:
        parsed = model.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(payload)"
        return None, f"field '{field}': {first['msg']}"
    except (ValueError, TypeError, RecursionError) as exc:
        return None, str(exc) or type(exc).__name__
    assert isinstance(parsed, WireModel)
    return parsed.to_dict(), ""


def classify(
    topic: str,
    payload: bytes | bytearray,
    *,
    topics: Topics,
    received_at: datetime,
    max_bytes: Callable[[str, str | None], int],
) -> Inbound:
    """Decode ``payload`` received on ``topic``; never raises."""
    try:
        parsed = topics.parse(topic)
    except TopicError as exc:
        family = _family_hint(topic, topics.prefix)
        return Inbound(topic, family, None, received_at, error=BAD_TOPIC, detail=str(exc))
    item = Inbound(topic, parsed.family, parsed.device, received_at)
    model = MODELS.get(parsed.family)
    if model is None:
        item.error, item.detail = BAD_TOPIC, f"devices do not publish on {parsed.family}"
        return item
    limit = max_bytes(parsed.family, parsed.kind)
    if len(payload) > limit:
        item.error, item.detail = OVERSIZED, f"{len(payload)} bytes is over the {limit}-byte limit"
        return item
    try:  # fast path: valid messages are parsed and validated in one go by pydantic-core
        body = model.model_validate_json(payload).to_dict()
    except (ValidationError, ValueError, TypeError, RecursionError):
        obj, reason, detail = _parse_json(payload)  # slow path: say exactly what is wrong
        if reason is not None:
            item.error, item.detail = reason, detail
            return item
        checked, detail = _validate(model, obj)
        if checked is None:
            item.error, item.detail = INVALID, detail
            return item
        body = checked
    if parsed.family == "events" and (body["device"] != parsed.device or body["kind"] != parsed.kind):
        item.error = TOPIC_MISMATCH
        item.detail = "envelope device/kind does not match the topic"
        return item
    if parsed.family == "events" and parsed.kind in EVIDENCE_KINDS:
        problem = evidence_problem(body)
        if problem is not None:
            item.error, item.detail = BAD_EVIDENCE, problem
            return item
    item.body = body
    return item


EVIDENCE_KINDS = frozenset({"traffic.violation"})
_SHA256_HEX = frozenset("0123456789abcdef")


def evidence_problem(envelope: dict[str, Any]) -> str | None:
    """What is wrong with an evidence envelope on arrival, or None.

    The contract requires a signature on evidence, and the envelope lists the sha256 of each image;
    images sent inline must hash to it. This is the cheap, key-less part; the signature is then
    checked against the device's certified key by the writer (``fleet.evidence.EvidenceIntake``).
    """
    if not isinstance(envelope.get("sig"), dict):
        return "evidence event is not signed (PROTOCOL.md: sig is required for traffic.violation)"
    data = envelope.get("data")
    images = data.get("images") if isinstance(data, dict) else None
    if images is None:
        return None
    if not isinstance(images, list):
        return "data.images must be a list"
    for n, image in enumerate(images):
        sha = image.get("sha256") if isinstance(image, dict) else None
        if not isinstance(sha, str) or len(sha) != 64 or not set(sha) <= _SHA256_HEX:
            return f"data.images[{n}] has no valid sha256"
        inline = image.get("data")
        if inline is None:
            continue
        try:
            raw = base64.b64decode(str(inline), validate=True)
        except (binascii.Error, ValueError):
            return f"data.images[{n}]: inline data is not valid base64"
        if hashlib.sha256(raw).hexdigest() != sha:
            return f"data.images[{n}]: inline image does not match its sha256 (altered or corrupt)"
    return None


def decode(received: Received, topics: Topics, max_bytes: Callable[[str, str | None], int]) -> Inbound:
    """``classify`` a received message and carry its retain flag and acknowledgement over."""
    try:
        item = classify(
            received.topic,
            received.payload,
            topics=topics,
            received_at=received.received_at,
            max_bytes=max_bytes,
        )
    except Exception as exc:  # supervisor boundary: one message must not stop ingest
        log.exception("could not decode a message on %r", received.topic)
        item = Inbound(received.topic, "unknown", None, received.received_at, error=INTERNAL)
        item.detail = type(exc).__name__
    item.retained = received.retained
    item.ack = received.ack
    return item


class RejectLog:
    """Logs rejected messages with topic and reason, at most ``burst`` per reason per ``window_s``."""

    def __init__(self, burst: int = 20, window_s: float = 10.0) -> None:
        self.burst = burst
        self.window_s = window_s
        self._seen: dict[str, tuple[float, int]] = {}

    def __call__(self, item: Inbound) -> None:
        now = time.monotonic()
        reason = str(item.error)
        start, count = self._seen.get(reason, (now, 0))
        if now - start > self.window_s:
            if count > self.burst:
                log.warning("%d more %s messages were not logged", count - self.burst, reason)
            start, count = now, 0
        self._seen[reason] = (start, count + 1)
        if count < self.burst:
            log.warning("rejected message on %s: %s (%s)", item.topic, item.error, item.detail)
