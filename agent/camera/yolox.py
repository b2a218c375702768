"""YOLOX pre- and post-processing in numpy: letterbox, grid decoding, class-aware NMS.

The model takes a BGR image letterboxed into ``size`` (scaled by ``r = min(W/w, H/h)``, placed at the
top-left, padded with 114) and outputs, for each anchor point of the stride-8/16/32 grids,
``(dx, dy, log w, log h, objectness, class scores...)``. ``decode`` turns these into boxes in
letterbox pixels; ``Letterbox.to_source`` maps boxes back to source pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.camera.cvlib import cv2 as _cv2

FloatArray = npt.NDArray[np.float32]
STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class Letterbox:
    """Geometry of one letterbox: scale and the resized size inside the padded input."""

    scale: float
    width: int
    height: int
    resized_w: int
    resized_h: int

    def to_source(self, boxes: FloatArray) -> FloatArray:
        """Map (N, 4) x1,y1,x2,y2 boxes from input pixels back to source pixels."""
        return (boxes / self.scale).astype(np.float32)

    def to_input(self, boxes: FloatArray) -> FloatArray:
        return (boxes * self.scale).astype(np.float32)


def letterbox(
    image: npt.NDArray[np.uint8], width: int, height: int, pad: int = 114
) -> tuple[npt.NDArray[np.uint8], Letterbox]:
    """Resize keeping aspect ratio (as YOLOX does) and pad bottom/right to width x height."""
    cv2 = _cv2()

    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    rw, rh = max(1, int(w * scale)), max(1, int(h * scale))
    out = np.full((height, width, 3), pad, dtype=np.uint8)
    resized = image if (rw, rh) == (w, h) else cv2.resize(image, (rw, rh), interpolation=cv2.INTER_LINEAR)
    out[:rh, :rw] = resized
    return out, Letterbox(scale=scale, width=width, height=height, resized_w=rw, resized_h=rh)


_GRID_CACHE: dict[tuple[int, int], tuple[FloatArray, FloatArray]] = {}


def _grids(width: int, height: int) -> tuple[FloatArray, FloatArray]:
    key = (width, height)
    if key not in _GRID_CACHE:
        grids, strides = [], []
        for stride in STRIDES:
            ny, nx = height // stride, width // stride
            yv, xv = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
            grids.append(np.stack((xv, yv), axis=2).reshape(-1, 2))
            strides.append(np.full((ny * nx, 1), stride))
        _GRID_CACHE[key] = (
            np.concatenate(grids).astype(np.float32),
            np.concatenate(strides).astype(np.float32),
        )
    return _GRID_CACHE[key]


def decode(raw: npt.NDArray[Any], width: int, height: int, min_objectness: float | None = None) -> FloatArray:
    """Decode (N, 5+C) raw outputs into (M, 5+C) with x1,y1,x2,y2 in input pixels.

    With ``min_objectness`` only anchors at or above it are decoded (a detection's score,
    objectness x class score, can never exceed its objectness), which skips most of the work.
    """
    grid, stride = _grids(width, height)
    if raw.shape[0] != grid.shape[0]:
        raise ValueError(
            f"model output has {raw.shape[0]} anchors but a {width}x{height} input with strides "
            f"{STRIDES} needs {grid.shape[0]}: wrong input size for this model"
        )
    if min_objectness is not None:
        keep = np.nonzero(raw[:, 4] >= min_objectness)[0]
        raw, grid, stride = raw[keep], grid[keep], stride[keep]
    out = np.array(raw, dtype=np.float32, copy=True)
    centre = (out[:, :2] + grid) * stride
    size = np.exp(np.clip(out[:, 2:4], -20.0, 20.0)) * stride
    out[:, 0:2] = centre - size / 2
    out[:, 2:4] = centre + size / 2
    return out


def iou_matrix(a: FloatArray, b: FloatArray) -> FloatArray:
    """Pairwise IoU of (N, 4) and (M, 4) x1,y1,x2,y2 boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float32)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    result: FloatArray = (inter / np.maximum(union, 1e-9)).astype(np.float32)
    return result


def nms(boxes: FloatArray, scores: FloatArray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression; indices of kept boxes, best first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        if order.size == 1:
            break
        ious = iou_matrix(boxes[best : best + 1], boxes[order[1:]])[0]
        order = order[1:][ious <= iou_threshold]
    return keep


def class_aware_nms(
    boxes: FloatArray, scores: FloatArray, classes: npt.NDArray[np.int64], iou_threshold: float
) -> list[int]:
    """NMS within each class only (boxes of different classes never suppress each other)."""
    if len(boxes) == 0:
        return []
    offset = float(max(boxes[:, 2].max(), boxes[:, 3].max())) + 1.0
    shifted = boxes + (classes.astype(np.float32) * offset)[:, None]
    return nms(shifted.astype(np.float32), scores, iou_threshold)


def postprocess(
    decoded: FloatArray, score_threshold: float, iou_threshold: float, keep_classes: set[int] | None = None
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.int64]]:
    """Best class per anchor (objectness x class score), threshold, class-aware NMS."""
    if len(decoded) == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    class_scores = decoded[:, 5:] * decoded[:, 4:5]
    classes = class_scores.argmax(axis=1).astype(np.int64)
    scores = class_scores[np.arange(len(classes)), classes].astype(np.float32)
    mask = scores >= score_threshold
    if keep_classes is not None:
        mask &= np.isin(classes, np.fromiter(keep_classes, dtype=np.int64, count=len(keep_classes)))
    boxes, scores, classes = decoded[mask, :4], scores[mask], classes[mask]
    keep = class_aware_nms(boxes, scores, classes, iou_threshold)
    return boxes[keep], scores[keep], classes[keep]
