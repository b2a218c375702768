"""Splitting merged motion blobs with the tracker's predictions.

Two vehicles that touch on screen (adjacent lanes, overtaking, a motorbike weaving past a car) form
one foreground blob. When the predicted boxes of two or more live tracks lie mostly inside one
blob, the blob is replaced by one box per track: the foreground inside that track's predicted box.
When a single track owns a blob much larger than itself, the foreground outside the track's box
becomes a candidate of its own (a vehicle that arrived touching another).

Riders abreast that *enter* the view together are one blob from the first frame, so no track
predicts them apart. ``SizePrior`` learns how large one vehicle is at each height of the image
(from single, unmerged observations: detector boxes and blobs with one owner of the same size) and
in which direction traffic moves there; a blob wider across the direction of travel than
``SPLIT_RATIO`` expected widths is cut into that many parts at the valleys of its foreground
profile. Blobs are never cut along the direction of travel (a bus is long, not several cars).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence

import numpy as np

from agent.camera.cvlib import cv2 as _cv2
from agent.camera.geometry import Box, Point, overlap_of
from agent.camera.motion import MotionResult

OWN = 0.5
"""Share of a predicted track box inside a blob for the track to own (part of) it."""
GROW = 2.0
"""A blob this many times larger than its only owner is checked for a second object."""


def _area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _expand(box: Box, share: float) -> Box:
    dx, dy = (box[2] - box[0]) * share, (box[3] - box[1]) * share
    return (box[0] - dx, box[1] - dy, box[2] + dx, box[3] + dy)


def _intersect(a: Box, b: Box) -> Box:
    return (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))


def _part(motion: MotionResult, predicted: Box, blob: Box) -> Box:
    region = _intersect(_expand(predicted, 0.1), blob)
    found = motion.foreground_box(region)
    return found if found is not None and _area(found) >= 0.3 * _area(predicted) else region


def _remainder(motion: MotionResult, blob: Box, owner: Box, min_area: float) -> Box | None:
    """Foreground of ``blob`` beside ``owner`` (the larger of the four side strips), if any."""
    grown = _expand(owner, 0.1)
    strips = [
        (blob[0], blob[1], min(blob[2], grown[0]), blob[3]),
        (max(blob[0], grown[2]), blob[1], blob[2], blob[3]),
        (blob[0], blob[1], blob[2], min(blob[3], grown[1])),
        (blob[0], max(blob[1], grown[3]), blob[2], blob[3]),
    ]
    best: Box | None = None
    for strip in strips:
        if strip[2] <= strip[0] or strip[3] <= strip[1]:
            continue
        found = motion.foreground_box(strip)
        if found is not None and _area(found) >= min_area and (best is None or _area(found) > _area(best)):
            best = found
    return best


SPLIT_RATIO = 1.85
"""A blob this many expected widths across the direction of travel holds more than one vehicle."""
BANDS = 8
SAMPLES = 60
MIN_SAMPLES = 8
QUANTILE = 35.0
"""Lower quantile of the observed sizes: merged blobs are larger, never smaller, than one vehicle."""


class SizePrior:
    """Expected size of one vehicle by image row, and the local direction of travel.

    ``calibration`` (``[y, width, height]`` points from the site survey) is used where given,
    interpolated by row; otherwise sizes are learned per horizontal band of the image.
    """

    def __init__(self, frame_h: int, calibration: Sequence[tuple[float, float, float]] = ()) -> None:
        self.frame_h = frame_h
        self.calibration = sorted(calibration)
        self._sizes: list[deque[tuple[float, float]]] = [deque(maxlen=SAMPLES) for _ in range(BANDS)]
        self._motion: list[deque[tuple[float, float]]] = [deque(maxlen=SAMPLES) for _ in range(BANDS)]

    def _band(self, y: float) -> int:
        return min(BANDS - 1, max(0, int(y / max(self.frame_h, 1) * BANDS)))

    def observe(self, box: Box) -> None:
        """One vehicle seen on its own (a detector box, or a blob its single track fits)."""
        w, h = box[2] - box[0], box[3] - box[1]
        if w > 2 and h > 2:
            self._sizes[self._band((box[1] + box[3]) / 2)].append((w, h))

    def observe_motion(self, centre: Point, velocity: Point) -> None:
        if abs(velocity[0]) + abs(velocity[1]) > 1.0:
            self._motion[self._band(centre[1])].append((abs(velocity[0]), abs(velocity[1])))

    def expected(self, y: float) -> tuple[float, float] | None:
        """(width, height) of one vehicle at row ``y``, or None while unknown."""
        if self.calibration:
            ys = [c[0] for c in self.calibration]
            return (
                float(np.interp(y, ys, [c[1] for c in self.calibration])),
                float(np.interp(y, ys, [c[2] for c in self.calibration])),
            )
        band = self._sizes[self._band(y)]
        if len(band) < MIN_SAMPLES:
            return None
        arr = np.array(band)
        return float(np.percentile(arr[:, 0], QUANTILE)), float(np.percentile(arr[:, 1], QUANTILE))

    def horizontal_travel(self, y: float) -> bool | None:
        """Does traffic at row ``y`` move mostly along x? None while unknown."""
        band = self._motion[self._band(y)]
        if len(band) < MIN_SAMPLES:
            return None
        arr = np.array(band)
        return bool(np.median(arr[:, 0]) >= np.median(arr[:, 1]))

    def parts_across(self, blob: Box) -> tuple[int, bool]:
        """How many vehicles abreast ``blob`` holds (1 = do not split), and whether it is cut in y."""
        cy = (blob[1] + blob[3]) / 2
        size = self.expected(cy)
        horizontal = self.horizontal_travel(cy)
        if size is None or horizontal is None:
            return 1, True
        across = (blob[3] - blob[1]) / size[1] if horizontal else (blob[2] - blob[0]) / size[0]
        if across < SPLIT_RATIO:
            return 1, horizontal
        return max(2, round(across)), horizontal


def cut_across(motion: MotionResult, blob: Box, parts: int, in_y: bool) -> list[Box]:
    """``blob`` cut into ``parts`` strips across the travel direction, at the foreground's valleys."""
    lo, hi = (blob[1], blob[3]) if in_y else (blob[0], blob[2])
    step = (hi - lo) / parts
    cuts = [lo + step * k for k in range(1, parts)]
    if motion.foreground is not None:
        sx, sy = motion.scale
        fx1, fy1 = int(blob[0] / sx), int(blob[1] / sy)
        fx2, fy2 = int(np.ceil(blob[2] / sx)), int(np.ceil(blob[3] / sy))
        region = motion.foreground[fy1:fy2, fx1:fx2]
        if region.size:
            profile = region.sum(axis=1 if in_y else 0).astype(np.float64)
            scale, origin = (sy, fy1) if in_y else (sx, fx1)
            refined = []
            for c in cuts:
                centre = c / scale - origin
                half = max(1, int(0.3 * step / scale))
                i0, i1 = max(0, int(centre) - half), min(len(profile), int(centre) + half + 1)
                refined.append((origin + i0 + int(np.argmin(profile[i0:i1]))) * scale if i1 > i0 else c)
            cuts = refined
    edges = [lo, *cuts, hi]
    out: list[Box] = []
    for lo_edge, hi_edge in itertools.pairwise(edges):
        if hi_edge - lo_edge < 2:
            continue
        strip = (blob[0], lo_edge, blob[2], hi_edge) if in_y else (lo_edge, blob[1], hi_edge, blob[3])
        found = motion.foreground_box(strip)
        out.append(found if found is not None and _area(found) >= 0.25 * _area(strip) else strip)
    return out


FAR = 0.85
"""Foreground further than this (in owner half-sizes, elliptic) from every owner is someone else."""


def share_blob(motion: MotionResult, blob: Box, owners: list[Box], min_area: float) -> list[Box]:
    """One box per owner: the foreground pixels nearest to that owner's predicted box (distance
    scaled by the box's size), so neighbours that touch never pull each other's box; and the
    largest clump of foreground far from every owner, when large enough (a rider who joined)."""
    if motion.foreground is None:
        return [_part(motion, p, blob) for p in owners]
    cv2 = _cv2()
    sx, sy = motion.scale
    fx1, fy1 = max(0, int(blob[0] / sx)), max(0, int(blob[1] / sy))
    fx2, fy2 = int(np.ceil(blob[2] / sx)), int(np.ceil(blob[3] / sy))
    region = motion.foreground[fy1:fy2, fx1:fx2]
    ys, xs = np.nonzero(region)
    if xs.size == 0:
        return [_part(motion, p, blob) for p in owners]
    px = (xs + fx1 + 0.5) * sx
    py = (ys + fy1 + 0.5) * sy
    dist = np.stack(
        [
            np.hypot(
                (px - (o[0] + o[2]) / 2) / max((o[2] - o[0]) / 2, 1.0),
                (py - (o[1] + o[3]) / 2) / max((o[3] - o[1]) / 2, 1.0),
            )
            for o in owners
        ]
    )
    nearest = np.argmin(dist, axis=0)
    near = dist.min(axis=0) <= 1.0 + FAR
    out: list[Box] = []
    for i, owner in enumerate(owners):
        mine = (nearest == i) & near
        if int(mine.sum()) * sx * sy < 0.2 * _area(owner):
            out.append(_intersect(owner, blob))
            continue
        box = (
            float(px[mine].min() - sx / 2),
            float(py[mine].min() - sy / 2),
            float(px[mine].max() + sx / 2),
            float(py[mine].max() + sy / 2),
        )
        out.append(box)
    far = ~near
    if far.any():
        mask = np.zeros(region.shape, np.uint8)
        mask[ys[far], xs[far]] = 1
        count, _labels, stats, _c = cv2.connectedComponentsWithStats(mask, connectivity=8)
        if count > 1:
            best = 1 + int(np.argmax(stats[1:, 4]))
            x, y, w, h, area = (int(v) for v in stats[best])
            if area * sx * sy >= min_area:
                out.append(((fx1 + x) * sx, (fy1 + y) * sy, (fx1 + x + w) * sx, (fy1 + y + h) * sy))
    return out


def split_blobs(
    motion: MotionResult,
    predicted: list[Box],
    min_area: float,
    prior: SizePrior | None = None,
    large: Sequence[Box] = (),
) -> list[Box]:
    """Blobs of ``motion`` with merged ones split along the tracks' predicted boxes, and blobs
    wider than ``prior``'s expected size across the direction of travel cut into parts, unless
    a car, bus or truck (``large``: detections and confirmed tracks) fills them."""
    out: list[Box] = []
    for blob in motion.blobs:
        owners = [p for p in predicted if _area(p) > 0 and overlap_of(p, blob) >= OWN]
        parts, in_y = prior.parts_across(blob) if prior is not None else (1, True)
        if parts >= 2 and any(overlap_of(b, blob) >= OWN for b in large):
            parts = 1
        if len(owners) >= 2 and len(owners) >= parts:
            out.extend(share_blob(motion, blob, owners, min_area))
            continue
        if parts >= 2:
            out.extend(cut_across(motion, blob, parts, in_y))
            continue
        if len(owners) == 1 and _area(blob) > GROW * _area(owners[0]):
            out.append(_part(motion, owners[0], blob))
            rest = _remainder(motion, blob, owners[0], min_area)
            if rest is not None:
                out.append(rest)
            continue
        out.append(blob)
    return out
