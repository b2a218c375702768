"""Motion gate: cheap frame differencing on a downscaled, blurred frame.

Two masks, both at ``MotionConfig.width`` pixels wide, using the largest per-channel difference
(a red motorbike on grey asphalt has almost the same grey level as the road, not the same colour):

- *motion*: |frame - previous frame| above the per-camera threshold. Enough of it means "something
  moves" and the detector runs.
- *foreground*: |frame - background| above the threshold, where the background is a running average
  that learns quickly where nothing is and slowly inside foreground boxes and moving areas. Its
  connected components that touch the motion mask are the moving blobs: whole vehicle silhouettes,
  passed to the tracker as candidates even when the detector does not recognise them.

Both differences have their median removed (and the background follows it), so a global exposure
change is not motion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.camera.config import MotionConfig
from agent.camera.cvlib import cv2 as _cv2
from agent.camera.geometry import Box

SLOW_FACTOR = 0.1
"""Background learning under foreground / motion, relative to ``bg_alpha`` (stopped vehicles fade
into the background after roughly 1 / (bg_alpha * SLOW_FACTOR) frames; the tracker holds them)."""


@dataclass
class MotionResult:
    """What the gate saw in one frame (boxes in source pixels)."""

    moving: bool
    fraction: float
    blobs: list[Box] = field(default_factory=list)
    roi: tuple[int, int, int, int] | None = None
    foreground: npt.NDArray[np.bool_] | None = None
    scale: tuple[float, float] = (1.0, 1.0)

    def foreground_box(self, region: Box) -> Box | None:
        """Bounding box (source pixels) of the foreground inside ``region``; None if empty."""
        if self.foreground is None:
            return None
        sx, sy = self.scale
        h, w = self.foreground.shape
        x1, y1 = max(0, int(region[0] / sx)), max(0, int(region[1] / sy))
        x2, y2 = min(w, int(np.ceil(region[2] / sx))), min(h, int(np.ceil(region[3] / sy)))
        if x2 <= x1 or y2 <= y1:
            return None
        ys, xs = np.nonzero(self.foreground[y1:y2, x1:x2])
        if xs.size == 0:
            return None
        return (
            (x1 + xs.min()) * sx,
            (y1 + ys.min()) * sy,
            (x1 + xs.max() + 1) * sx,
            (y1 + ys.max() + 1) * sy,
        )


def analysis_size(width: int, height: int, target: int) -> tuple[int, int]:
    """The downscaled size: an exact 1/k of the frame when one is near ``target`` (OpenCV's area
    resize is several times faster for integer factors), else ``target`` wide."""
    ideal = width / max(1, min(target, width))
    common = math.gcd(width, height)
    factors = [k for k in range(1, int(ideal) + 1) if common % k == 0]
    k = max(factors)
    if k >= 0.6 * ideal:
        return width // k, height // k
    small_w = min(target, width)
    return small_w, max(8, round(height * small_w / width))


DAYLIGHT_LEVEL = 90.0
"""Median grey level of a daylight road; darker backgrounds lower the motion threshold."""
LOW_LIGHT_MIN_GAIN = 0.3
LOW_LIGHT_FLOOR = 6.0
"""Lowest threshold (grey levels): sensor noise stays below it after the blur."""


class MotionGate:
    def __init__(self, config: MotionConfig, frame_size: tuple[int, int]) -> None:
        cv2 = _cv2()

        self._cv2: Any = cv2
        self.config = config
        self.frame_w, self.frame_h = frame_size
        self.width, self.height = analysis_size(self.frame_w, self.frame_h, config.width)
        self.sx = self.frame_w / self.width
        self.sy = self.frame_h / self.height
        self._prev: npt.NDArray[np.float32] | None = None
        self._bg: npt.NDArray[np.float32] | None = None
        self._close = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
        self._dilate = np.ones((5, 5), np.uint8)
        self._threshold = float(config.threshold)
        self._frames = 0

    def _small(self, image: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        cv2 = self._cv2
        small = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_AREA)
        return np.asarray(cv2.GaussianBlur(small, (5, 5), 0), dtype=np.float32)

    def _mask(
        self, current: npt.NDArray[np.float32], reference: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
        """0/1 mask: largest per-channel |current - reference| once each channel's median shift
        (an exposure change) is removed, above the threshold; and that shift. OpenCV ops: this
        runs on every frame."""
        cv2 = self._cv2
        shift = np.median((current[::3, ::3] - reference[::3, ::3]).reshape(-1, 3), axis=0).astype(np.float32)
        d = cv2.absdiff(current, cv2.add(reference, (float(shift[0]), float(shift[1]), float(shift[2]), 0.0)))
        c0, c1, c2 = cv2.split(d)
        largest = cv2.max(cv2.max(c0, c1), c2)
        return np.asarray(largest > self._threshold, dtype=np.uint8), shift

    def _adapt(self) -> None:
        """Scale the threshold with the background's brightness below daylight level: at night
        a rider differs from the road by a third of the daytime difference."""
        if not self.config.low_light or self._bg is None:
            self._threshold = float(self.config.threshold)
            return
        level = float(np.median(self._bg[::4, ::4]))
        gain = min(1.0, max(LOW_LIGHT_MIN_GAIN, level / DAYLIGHT_LEVEL))
        self._threshold = max(LOW_LIGHT_FLOOR, self.config.threshold * gain)

    def update(self, image: npt.NDArray[np.uint8]) -> MotionResult:
        small = self._small(image)
        if self._prev is None or self._bg is None:
            self._prev, self._bg = small, small.copy()
            return MotionResult(moving=False, fraction=0.0)
        cv2 = self._cv2
        if self._frames % 10 == 0:
            self._adapt()
        self._frames += 1
        motion, _ = self._mask(small, self._prev)
        foreground, shift = self._mask(small, self._bg)
        self._prev = small
        fg = cv2.morphologyEx(foreground, cv2.MORPH_CLOSE, self._close)
        moving_near = cv2.dilate(motion, self._dilate)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
        self._learn(small, shift, stats[1:count], moving_near)
        fraction = cv2.countNonZero(motion) / motion.size
        moving = fraction >= self.config.min_area and fraction > 0
        if not moving:
            return MotionResult(moving=False, fraction=fraction)
        blobs = self._blobs(labels, stats, count, moving_near) if self.config.blobs else []
        return MotionResult(
            moving=True,
            fraction=fraction,
            blobs=blobs,
            roi=self._roi(motion.astype(bool), blobs),
            foreground=fg.astype(bool),
            scale=(self.sx, self.sy),
        )

    def _learn(
        self,
        small: npt.NDArray[np.float32],
        shift: npt.NDArray[np.float32],
        stats: npt.NDArray[np.int32],
        moving: npt.NDArray[np.uint8],
    ) -> None:
        """Update the background fast where nothing is, slowly inside foreground boxes and motion.

        The whole background first follows the frame's exposure (median shift), so a camera's
        auto-exposure does not leave ghosts where the background learns slowly.
        """
        assert self._bg is not None
        cv2 = self._cv2
        self._bg += shift
        protect = moving.copy()
        for x, y, w, h, area in stats:
            if area >= 4:
                cv2.rectangle(protect, (int(x), int(y)), (int(x + w - 1), int(y + h - 1)), 1, -1)
        cv2.accumulateWeighted(small, self._bg, self.config.bg_alpha, mask=1 - protect)
        cv2.accumulateWeighted(small, self._bg, self.config.bg_alpha * SLOW_FACTOR, mask=protect)

    def _blobs(
        self,
        labels: npt.NDArray[np.int32],
        stats: npt.NDArray[np.int32],
        count: int,
        moving: npt.NDArray[np.uint8],
    ) -> list[Box]:
        min_area = self.config.min_blob_area * self.width * self.height
        blobs: list[Box] = []
        for index in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[index])
            if area < min_area:
                continue
            if not moving[y : y + h, x : x + w][labels[y : y + h, x : x + w] == index].any():
                continue
            blobs.append((x * self.sx, y * self.sy, (x + w) * self.sx, (y + h) * self.sy))
        return blobs

    def _roi(self, motion: npt.NDArray[np.bool_], blobs: list[Box]) -> tuple[int, int, int, int] | None:
        ys, xs = np.nonzero(motion)
        x1, y1 = xs.min() * self.sx, ys.min() * self.sy
        x2, y2 = (xs.max() + 1) * self.sx, (ys.max() + 1) * self.sy
        for b in blobs:
            x1, y1, x2, y2 = min(x1, b[0]), min(y1, b[1]), max(x2, b[2]), max(y2, b[3])
        margin = 0.25 * max(x2 - x1, y2 - y1) + 16
        x1, y1 = max(0.0, x1 - margin), max(0.0, y1 - margin)
        x2, y2 = min(float(self.frame_w), x2 + margin), min(float(self.frame_h), y2 + margin)
        if (x2 - x1) * (y2 - y1) > 0.5 * self.frame_w * self.frame_h:
            return None
        return int(x1), int(y1), int(x2), int(y2)
