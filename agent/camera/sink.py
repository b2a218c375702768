"""Where counts, violations and evidence images go.

- ``EventSink``: ``emit(kind, data, sign=...)`` and ``report_metrics`` — the agent's local API
  (``AgentSink``) or an in-memory list for tests (``MemorySink``, which can sign envelopes exactly as
  the agent does when given a key).
- ``EvidenceStore``: content-addressed image upload — the fleet's ``POST /api/evidence/{sha256}``
  (``HttpEvidenceStore``, with retries) or memory.

``publish_violation`` puts small images inline (base64) and uploads large ones; if the upload keeps
failing, the image is shrunk until it fits inline, so a violation is never lost for want of the
network. Either way the event ``data`` lists every image's sha256, and the agent's signature covers
them.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from agent.camera.cvlib import cv2 as _cv2
from agent.camera.errors import EvidenceError, SinkError
from agent.camera.evidence import EvidenceBundle, EvidenceImage, violation_data
from agent.camera.rules import Violation

log = logging.getLogger(__name__)


class EventSink(Protocol):
    def emit(self, kind: str, data: dict[str, Any], *, sign: bool = False) -> dict[str, Any]: ...

    def hold_update_lock(self, hold: bool) -> None: ...

    def report_metrics(self, metrics: dict[str, Any]) -> None: ...


class EvidenceStore(Protocol):
    def put(self, sha256: str, data: bytes, content_type: str = "image/jpeg") -> None:
        """Store ``data`` under its sha256; raise EvidenceError when it cannot be stored."""
        ...


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


class MemoryEvidenceStore:
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def put(self, sha256: str, data: bytes, content_type: str = "image/jpeg") -> None:
        if hashlib.sha256(data).hexdigest() != sha256:
            raise EvidenceError("evidence body does not match its sha256")
        self.blobs[sha256] = data

    def get(self, sha256: str) -> bytes | None:
        return self.blobs.get(sha256)


class HttpEvidenceStore:
    """POSTs images to the fleet evidence store, retrying with backoff."""

    def __init__(
        self,
        base_url: str,
        *,
        retries: int = 3,
        timeout_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries, self.timeout_s, self.sleep = retries, timeout_s, sleep

    def put(self, sha256: str, data: bytes, content_type: str = "image/jpeg") -> None:
        url = f"{self.base_url}/api/evidence/{sha256}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.sleep(min(8.0, 0.5 * 2 ** (attempt - 1)))
            request = urllib.request.Request(
                url, data=data, method="POST", headers={"Content-Type": content_type}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    if response.status in (200, 201):
                        return
                    last = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
                if 400 <= exc.code < 500 and exc.code != 429:
                    break  # the store refused this body; retrying will not help
            except (urllib.error.URLError, OSError) as exc:
                last = str(getattr(exc, "reason", exc))
        raise EvidenceError(
            f"evidence upload to {self.base_url} failed after {self.retries + 1} attempt(s): {last}"
        )


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


def place_image(image: EvidenceImage, store: EvidenceStore | None, inline_max: int) -> dict[str, Any]:
    """Inline if small, else upload; shrink to inline if the upload fails (never lose evidence)."""
    if len(image.data) <= inline_max:
        return _inline(image)
    if store is not None:
        try:
            store.put(image.sha256, image.data)
            return {**_describe(image), "store": "fleet"}
        except EvidenceError as exc:
            log.warning("camera: %s; sending a smaller copy inside the event", exc)
    cv2 = _cv2()

    from agent.camera.evidence import shrink_to_fit

    decoded: npt.NDArray[np.uint8] = cv2.imdecode(np.frombuffer(image.data, np.uint8), cv2.IMREAD_COLOR)
    small = shrink_to_fit(decoded, max(inline_max, 4096), 80)
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
    store: EvidenceStore | None,
    inline_max: int,
) -> dict[str, Any]:
    """Place the images, then hand the violation to the agent to be signed and sent."""
    images = [place_image(image, store, inline_max) for image in bundle.images]
    data = violation_data(violation, camera_id, bundle.plate, images)
    return sink.emit("traffic.violation", data, sign=True)
