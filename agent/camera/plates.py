"""Number-plate reading with PP-OCR (rapidocr), models verified through the registry.

Plate text is personal data: it goes only into the signed violation event, never into logs,
metrics or files. rapidocr is imported when a reader is built (its models are the wheel's own
files, pinned by sha256 in ``models/registry.toml``; nothing is downloaded).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from agent.camera.cvlib import cv2 as _cv2
from agent.camera.errors import EvidenceError
from models.registry import ModelError, Registry

log = logging.getLogger(__name__)
PLATE_CHARS = re.compile(r"[^A-Z0-9.\-]")


@dataclass(frozen=True)
class PlateRead:
    text: str
    score: float


class PlateReader(Protocol):
    def read(self, crop: npt.NDArray[np.uint8]) -> PlateRead | None:
        """The plate text in a vehicle crop, or None when none is legible."""
        ...


def plate_text(fragments: list[tuple[float, float, str, float]], min_score: float) -> PlateRead | None:
    """Join plate-like OCR fragments (top, left, text, score) top-to-bottom (two-line moto plates)."""
    kept: list[tuple[float, float, str, float]] = []
    for top, left, text, score in fragments:
        cleaned = PLATE_CHARS.sub("", text.upper().replace(" ", ""))
        if (
            score >= min_score
            and len(re.sub(r"[.\-]", "", cleaned)) >= 2
            and any(c.isdigit() for c in cleaned)
        ):
            kept.append((top, left, cleaned, score))
    if not kept:
        return None
    kept.sort(key=lambda item: (round(item[0] / 8), item[1]))
    text = " ".join(item[2] for item in kept)
    if sum(c.isalnum() for c in text) < 4:
        return None
    return PlateRead(text=text, score=round(min(item[3] for item in kept), 3))


class RapidOcrPlateReader:
    """PP-OCR text detection + recognition on the offending vehicle's crop."""

    def __init__(self, registry: Registry, *, min_score: float = 0.6, threads: int = 1) -> None:
        try:
            det, rec, cls = (registry.path_for(n) for n in ("ppocr_det", "ppocr_rec", "ppocr_cls"))
        except ModelError as exc:
            raise EvidenceError(f"plate reader unavailable: {exc}") from exc
        try:
            from rapidocr import RapidOCR
        except ImportError as exc:
            raise EvidenceError(
                "plate reader unavailable: rapidocr is not installed (pip install 'cityedge[camera]')"
            ) from exc
        logging.getLogger("RapidOCR").setLevel(logging.ERROR)
        self.min_score = min_score
        self._ocr: Any = RapidOCR(
            params={
                "Global.log_level": "error",
                "Global.use_cls": False,
                "Det.model_path": str(det),
                "Rec.model_path": str(rec),
                "Cls.model_path": str(cls),
                "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            }
        )
        self._warm_up()

    def _warm_up(self) -> None:
        cv2 = _cv2()

        sample = np.full((48, 160, 3), 255, np.uint8)
        cv2.putText(sample, "12A-345", (6, 34), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (0, 0, 0), 2)
        self._ocr(sample)

    def read(self, crop: npt.NDArray[np.uint8]) -> PlateRead | None:
        if crop.size == 0:
            return None
        try:
            result = self._ocr(np.ascontiguousarray(crop))
        except Exception as exc:  # third-party OCR boundary; the text itself is never logged
            log.warning("plate reader failed on a crop (%s)", type(exc).__name__)
            return None
        boxes = getattr(result, "boxes", None)
        texts = getattr(result, "txts", None) or ()
        scores = getattr(result, "scores", None) or ()
        if boxes is None or not texts:
            return None
        fragments = [
            (float(np.min(box[:, 1])), float(np.min(box[:, 0])), str(text), float(score))
            for box, text, score in zip(np.asarray(boxes), texts, scores, strict=False)
        ]
        return plate_text(fragments, self.min_score)
