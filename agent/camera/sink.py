"""Where counts, violations and evidence images go.

- ``EventSink``: ``emit(kind, data, sign=...)`` and ``report_metrics`` — the agent's local API
  (``AgentSink``) or an in-memory list for tests (``MemorySink``, which can sign envelopes exactly as
  the agent does when given a key).

Evidence images travel only inside the signed ``traffic.violation`` event, over the agent's
device-authenticated MQTT link (mTLS; the fleet checks the signature against the device's
certificate at arrival): ``publish_violation`` puts every image inline (base64), shrinking one
that is larger than its share of the event (``inline_max`` bytes, and together at most
``EVENT_IMAGE_BUDGET``, so that the event fits one MQTT message and the agent's outbox, where
evidence is never evicted). The event ``data`` lists every image's sha256, and the agent's
signature covers the images themselves.
"""

from __future__ import annotations

import base64
import logging
import uuid
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from agent.camera.cvlib import cv2 as _cv2
from agent.camera.errors import SinkError
from agent.camera.evidence import EvidenceBundle, EvidenceImage, violation_data
from agent.camera.rules import Violation

log = logging.getLogger(__name__)


class EventSink(Protocol):
    def emit(self, kind: str, data: dict[str, Any], *, sign: bool = False) -> dict[str, Any]: ...

    def hold_update_lock(self, hold: bool) -> None: ...

    def report_metrics(self, metrics: dict[str, Any]) -> None: ...


class MemorySink:
    """Keeps events and metrics in memory; with ``key`` it builds signed envelopes like the agent."""

    def __init__(self, device: str = "cam-test-0001", key: Any = None, kid: str = "device") -> None:
        self.device, self.key, self.kid = device, key, kid
        self.events: list[tuple[str, dict[str, Any], bool]] = []
        self.envelopes: list[dict[str, Any]] = []
        self.metrics: list[dict[str, Any]] = []
        self.peripherals: list[dict[str, Any]] = []
        self.update_lock = False

    def emit(self, kind: str, data: dict[str, Any], *, sign: bool = False) -> dict[str, Any]:
        from protocol.signing import sign as sign_message
        from protocol.timefmt import now_ts

        sign = sign or kind == "traffic.violation"
        self.events.append((kind, data, sign))
        envelope: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "seq": len(self.envelopes) + 1,
            "ts": now_ts(),
            "device": self.device,
            "kind": kind,
            "data": data,
        }
        if sign and self.key is not None:
            envelope = sign_message(envelope, self.key, self.kid)
        self.envelopes.append(envelope)
        return {"id": envelope["id"], "seq": envelope["seq"]}

    def hold_update_lock(self, hold: bool) -> None:
        self.update_lock = hold

    def report_metrics(self, metrics: dict[str, Any]) -> None:
        self.metrics.append(dict(metrics))

    def report_peripherals(self, peripherals: dict[str, Any]) -> None:
        self.peripherals.append(dict(peripherals))

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [data for k, data, _ in self.events if k == kind]


UPDATE_LOCK_OWNER = "camera-evidence"
UPDATE_LOCK_TTL_S = 300.0


class AgentSink:
    """The agent's local API (Unix socket in its data dir)."""

    def __init__(self, data_dir: Path) -> None:
        try:
            from agent.localapi import LocalApiClient
        except ImportError as exc:
            raise SinkError("the agent's local API client (agent.localapi) is not installed") from exc
        self.client: Any = LocalApiClient(data_dir)

    def emit(self, kind: str, data: dict[str, Any], *, sign: bool = False) -> dict[str, Any]:
        try:
            return dict(self.client.emit(kind, data, sign=sign))
        except Exception as exc:  # the client raises LocalApiError / OSError; report in our terms
            raise SinkError(f"agent did not accept a {kind} event: {exc}") from exc

    def hold_update_lock(self, hold: bool) -> None:
        """Defer an update install while evidence is being written (docs/ota.md); best effort."""
        try:
            if hold:
                self.client.call("ota_lock", owner=UPDATE_LOCK_OWNER, ttl_s=UPDATE_LOCK_TTL_S)
            else:
                self.client.call("ota_unlock", owner=UPDATE_LOCK_OWNER)
        except Exception as exc:  # an advisory lock: never stop evidence for it
            log.debug("camera: update lock not changed (%s)", exc)

    def report_metrics(self, metrics: dict[str, Any]) -> None:
        try:
            self.client.report_metrics(metrics)
        except Exception as exc:  # metrics are best effort
            log.warning("camera: cannot report metrics to the agent (%s)", exc)

    def report_peripherals(self, peripherals: dict[str, Any]) -> None:
        try:
            self.client.report_peripherals(peripherals)
        except Exception as exc:  # best effort, like metrics
            log.warning("camera: cannot report the camera state to the agent (%s)", exc)

    def desired_config(self) -> dict[str, Any]:
        return dict(self.client.desired_config())


EVENT_IMAGE_BUDGET = 160 * 1024
"""Most image bytes in one violation (about 214 KiB once base64-encoded): the event stays under the
agent's 256 KiB event limit (``outbox.max_event_bytes``) and the broker's message size."""
MIN_IMAGE_BYTES = 4096


def _inline(image: EvidenceImage) -> dict[str, Any]:
    return {**_describe(image), "store": "inline", "data": base64.b64encode(image.data).decode("ascii")}


def _describe(image: EvidenceImage) -> dict[str, Any]:
    return {
        "role": image.role,
        "sha256": image.sha256,
        "content_type": "image/jpeg",
        "bytes": len(image.data),
        "width": image.width,
        "height": image.height,
    }


def image_limit(count: int, inline_max: int) -> int:
    """Largest size of each of ``count`` images of one violation."""
    share = EVENT_IMAGE_BUDGET // max(count, 1)
    return max(MIN_IMAGE_BYTES, min(inline_max, share))


def place_image(image: EvidenceImage, inline_max: int) -> dict[str, Any]:
    """The image inline (base64), shrunk first when it is larger than ``inline_max`` bytes."""
    limit = max(inline_max, MIN_IMAGE_BYTES)
    if len(image.data) <= limit:
        return _inline(image)
    cv2 = _cv2()

    from agent.camera.evidence import shrink_to_fit

    decoded: npt.NDArray[np.uint8] = cv2.imdecode(np.frombuffer(image.data, np.uint8), cv2.IMREAD_COLOR)
    small = shrink_to_fit(decoded, limit, 80)
    log.info(
        "camera: a %s image of %d bytes was shrunk to %d to fit the event",
        image.role,
        len(image.data),
        len(small),
    )
    return _inline(EvidenceImage(image.role, small, *_size(small)))


def _size(data: bytes) -> tuple[int, int]:
    cv2 = _cv2()

    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return int(decoded.shape[1]), int(decoded.shape[0])


def publish_violation(
    sink: EventSink,
    violation: Violation,
    bundle: EvidenceBundle,
    *,
    camera_id: str,
    inline_max: int,
) -> dict[str, Any]:
    """Put the images inline, then hand the violation to the agent to be signed and sent."""
    limit = image_limit(len(bundle.images), inline_max)
    images = [place_image(image, limit) for image in bundle.images]
    data = violation_data(violation, camera_id, bundle.plate, images)
    return sink.emit("traffic.violation", data, sign=True)
