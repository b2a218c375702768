"""Violation evidence: an annotated scene JPEG and a clean crop of the offending vehicle.

Privacy: in the scene image every person is blurred (faces of riders, pedestrians, bystanders,
including the offender's rider) and so is the plate area of every other vehicle (the lower
``plate_band`` share of its box — a heuristic for roadside views; see docs/camera.md). Only the
offender's crop is left untouched, because it is the evidence. The plate text read from that crop
goes into the signed event and nowhere else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from agent.camera.config import EvidenceConfig
from agent.camera.cvlib import cv2 as _cv2
from agent.camera.detector import VEHICLE_CLASSES, Detection, Detector
from agent.camera.geometry import Box, box_iou
from agent.camera.plates import PlateRead, PlateReader
from agent.camera.rules import Violation
from hw.camera import Frame
from protocol.timefmt import format_ts

Image = npt.NDArray[np.uint8]
ImageRole = Literal["scene", "vehicle"]


@dataclass(frozen=True)
class EvidenceImage:
    role: ImageRole
    data: bytes
    width: int
    height: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class EvidenceBundle:
    images: list[EvidenceImage]
    plate: PlateRead | None


def _clip(box: Box, width: int, height: int, margin: float = 0.0) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    return (
        max(0, int(x1 - mx)),
        max(0, int(y1 - my)),
        min(width, int(np.ceil(x2 + mx))),
        min(height, int(np.ceil(y2 + my))),
    )


def blur_region(image: Image, box: Box, margin: float = 0.1) -> None:
    """Irreversibly blur ``box`` in place: pixelate to ~8 px blocks, then a wide Gaussian."""
    cv2 = _cv2()

    x1, y1, x2, y2 = _clip(box, image.shape[1], image.shape[0], margin)
    w, h = x2 - x1, y2 - y1
    if w < 2 or h < 2:
        return
    region = image[y1:y2, x1:x2]
    small = cv2.resize(region, (max(1, w // 8), max(1, h // 8)), interpolation=cv2.INTER_AREA)
    coarse = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    sigma = max(2.0, min(w, h) / 4)
    image[y1:y2, x1:x2] = cv2.GaussianBlur(coarse, (0, 0), sigmaX=sigma)


def plate_band(box: Box, share: float) -> Box:
    x1, y1, x2, y2 = box
    return (x1, y2 - (y2 - y1) * share, x2, y2)


def redact_scene(image: Image, offender: Box, persons: list[Box], others: list[Box], band: float) -> Image:
    """Copy of ``image`` with other vehicles' plate areas and every person blurred."""
    out: Image = image.copy()
    for box in others:
        blur_region(out, plate_band(box, band), margin=0.05)
    x1, y1, x2, y2 = _clip(offender, out.shape[1], out.shape[0])
    out[y1:y2, x1:x2] = image[y1:y2, x1:x2]
    for box in persons:
        blur_region(out, box)
    return out


def annotate(image: Image, violation: Violation, camera_id: str) -> None:
    """Draw the offender's box and a caption (rule, camera, UTC time, track); never the plate."""
    cv2 = _cv2()

    x1, y1, x2, y2 = (int(v) for v in violation.box)
    cv2.rectangle(image, (x1, y1), (x2, y2), (0, 0, 255), 2)
    when = datetime.fromtimestamp(violation.wall, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    track = violation.track
    caption = f"{violation.rule} {violation.rule_id} | {camera_id} | {when}Z | track {track.id} {track.label}"
    scale = max(0.35, image.shape[1] / 1600)
    (tw, th), _ = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(image, (0, 0), (min(image.shape[1], tw + 8), th + 10), (0, 0, 0), -1)
    cv2.putText(image, caption, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def encode_jpeg(image: Image, quality: int) -> bytes:
    cv2 = _cv2()

    ok, buffer = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return bytes(buffer.tobytes())


def shrink_to_fit(image: Image, max_bytes: int, quality: int) -> bytes:
    """JPEG under ``max_bytes``: lower the quality, then halve the size, until it fits."""
    cv2 = _cv2()

    current = image
    for _ in range(6):
        for q in (quality, 70, 55, 40):
            data = encode_jpeg(current, min(q, quality))
            if len(data) <= max_bytes:
                return data
        h, w = current.shape[:2]
        current = cv2.resize(current, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)
    return encode_jpeg(current, 30)


class EvidenceBuilder:
    """Builds the evidence images (and reads the plate) for one violation."""

    def __init__(
        self,
        config: EvidenceConfig,
        camera_id: str,
        plate_reader: PlateReader | None = None,
        detector: Detector | None = None,
    ) -> None:
        self.config = config
        self.camera_id = camera_id
        self.plate_reader = plate_reader
        self.detector = detector

    def build(
        self, frame: Frame, violation: Violation, others: list[Box], detections: list[Detection]
    ) -> EvidenceBundle:
        """``others``: boxes of the other tracked vehicles; ``detections``: this frame's detections.

        With a detector, the whole frame is searched again so that no person escapes blurring.
        """
        if self.detector is not None:
            detections = [*detections, *self.detector.detect(frame.image)]
        offender = violation.box
        persons = [d.box for d in detections if d.label == "person"]
        others = list(others)
        others += [d.box for d in detections if d.label in VEHICLE_CLASSES and _not_offender(d.box, offender)]
        scene = redact_scene(frame.image, offender, persons, others, self.config.plate_band)
        annotate(scene, violation, self.camera_id)
        x1, y1, x2, y2 = _clip(offender, frame.image.shape[1], frame.image.shape[0], margin=0.12)
        crop = np.ascontiguousarray(frame.image[y1:y2, x1:x2])
        plate = self.plate_reader.read(crop) if (self.plate_reader is not None and self.config.ocr) else None
        q = self.config.jpeg_quality
        images = [
            EvidenceImage("scene", encode_jpeg(scene, q), scene.shape[1], scene.shape[0]),
            EvidenceImage("vehicle", encode_jpeg(crop, q), crop.shape[1], crop.shape[0]),
        ]
        return EvidenceBundle(images=images, plate=plate)


def _not_offender(box: Box, offender: Box) -> bool:
    return box_iou(box, offender) < 0.5


def violation_data(
    violation: Violation, camera_id: str, plate: PlateRead | None, images: list[dict[str, Any]]
) -> dict[str, Any]:
    """The ``data`` of a ``traffic.violation`` event (the agent signs the whole envelope)."""
    return {
        "camera": camera_id,
        "rule": violation.rule,
        "rule_id": violation.rule_id,
        "ts": format_ts(datetime.fromtimestamp(violation.wall, tz=timezone.utc)),
        "frame_seq": violation.seq,
        "track_id": violation.track.id,
        "class": violation.track.label,
        "confirmed": violation.track.confirmed,
        "box": [round(v, 1) for v in violation.box],
        "details": violation.details,
        "rule_params": violation.params,
        "plate": None if plate is None else {"text": plate.text, "score": plate.score},
        "images": images,
    }
