"""The ``snapshot`` command: a privacy-safe JPEG of the camera's current view.

Everyone in the picture is blurred and so is every vehicle's plate area (no offender exists here).
The result is small (at most ``max_width`` pixels wide) so that it fits in a command answer.

The agent runs commands in its own process. ``SnapshotTaker.handler`` is the command handler;
the camera process serves it through the agent's command relay (``register_with(client)``: the
local API's ``poll_command`` / ``command_result``, agent/rolerelay.py; docs/camera.md, "Agent hooks").
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
from typing import Any

import numpy as np

from agent.camera.cvlib import cv2 as _cv2
from agent.camera.detector import VEHICLE_CLASSES, Detector
from agent.camera.evidence import blur_region, encode_jpeg, plate_band
from hw.camera import Frame

log = logging.getLogger(__name__)


class SnapshotTaker:
    def __init__(
        self, detector: Detector | None, band: float, *, max_width: int = 640, quality: int = 80
    ) -> None:
        self.detector = detector
        self.band = band
        self.max_width = max_width
        self.quality = quality
        self._lock = threading.Lock()
        self._frame: Frame | None = None

    def update(self, frame: Frame) -> None:
        with self._lock:
            self._frame = frame

    def handler(self, args: dict[str, Any]) -> dict[str, Any]:
        """Command handler: ``{"content_type", "sha256", "width", "height", "data"}`` (base64 JPEG)."""
        cv2 = _cv2()

        with self._lock:
            frame = self._frame
        if frame is None:
            raise RuntimeError("no camera frame yet (camera starting or disconnected)")
        image = frame.image.copy()
        if self.detector is None:
            image[:] = cv2.GaussianBlur(image, (0, 0), sigmaX=6)  # nothing to tell people apart: blur all
        else:
            for det in self.detector.detect(frame.image):
                if det.label == "person":
                    blur_region(image, det.box)
                elif det.label in VEHICLE_CLASSES:
                    blur_region(image, plate_band(det.box, self.band), margin=0.05)
        h, w = image.shape[:2]
        if w > self.max_width:
            image = cv2.resize(
                image, (self.max_width, round(h * self.max_width / w)), interpolation=cv2.INTER_AREA
            )
        data = encode_jpeg(np.ascontiguousarray(image), self.quality)
        return {
            "content_type": "image/jpeg",
            "sha256": hashlib.sha256(data).hexdigest(),
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "frame_seq": frame.seq,
            "data": base64.b64encode(data).decode("ascii"),
        }


def register_with(client: Any, taker: SnapshotTaker, stop: threading.Event) -> threading.Thread | None:
    """Serve ``snapshot`` commands relayed by the agent, if its local API can relay them."""
    poll = getattr(client, "poll_command", None)
    answer = getattr(client, "command_result", None)
    if poll is None or answer is None:
        log.info("camera: the agent's local API has no command relay; 'snapshot' is not served")
        return None

    def loop() -> None:
        while not stop.is_set():
            try:
                command = poll(["snapshot"], timeout=5.0)
            except Exception as exc:  # agent restarting: try again shortly
                log.warning("camera: command relay unavailable (%s)", exc)
                stop.wait(5.0)
                continue
            if not command:
                continue
            try:
                answer(command["id"], "ok", taker.handler(dict(command.get("args") or {})), None)
            except Exception as exc:  # one bad command must not stop the relay
                answer(command["id"], "error", {}, str(exc))

    thread = threading.Thread(target=loop, name="camera-snapshot", daemon=True)
    thread.start()
    return thread
