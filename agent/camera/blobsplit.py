"""Splitting merged motion blobs with the tracker's predictions.

Two vehicles that touch on screen (adjacent lanes, overtaking, a motorbike weaving past a car) form
one foreground blob. When the predicted boxes of two or more live tracks lie mostly inside one
blob, the blob is replaced by one box per track: the foreground inside that track's predicted box.
When a single track owns a blob much larger than itself, the foreground outside the track's box
becomes a candidate of its own (a vehicle that arrived touching another).
"""

from __future__ import annotations

from agent.camera.geometry import Box, overlap_of
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


def split_blobs(motion: MotionResult, predicted: list[Box], min_area: float) -> list[Box]:
    """Blobs of ``motion`` with merged ones split along the tracks' predicted boxes."""
    out: list[Box] = []
    for blob in motion.blobs:
        owners = [p for p in predicted if _area(p) > 0 and overlap_of(p, blob) >= OWN]
        if len(owners) >= 2:
            out.extend(_part(motion, p, blob) for p in owners)
            continue
        if len(owners) == 1 and _area(blob) > GROW * _area(owners[0]):
            out.append(_part(motion, owners[0], blob))
            rest = _remainder(motion, blob, owners[0], min_area)
            if rest is not None:
                out.append(rest)
            continue
        out.append(blob)
    return out
