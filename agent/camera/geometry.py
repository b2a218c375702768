"""Plane geometry in image pixels (x right, y down) for lines, zones and headings."""

from __future__ import annotations

import math
from collections.abc import Sequence

Point = tuple[float, float]
Box = tuple[float, float, float, float]


def signed_distance(a: Point, b: Point, p: Point) -> float:
    """Distance of ``p`` from the infinite line A→B: negative on its left, positive on its right.

    "Left" is as seen on screen from A looking towards B (y grows downwards, so the cross product
    (B-A) x (P-A) is positive on the right).
    """
    dx, dy = b[0] - a[0], b[1] - a[1]
    cross = dx * (p[1] - a[1]) - dy * (p[0] - a[0])
    return cross / max(math.hypot(dx, dy), 1e-9)


def projection(a: Point, b: Point, p: Point) -> float:
    """Position of ``p`` projected on A→B: 0 at A, 1 at B."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    return ((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / max(dx * dx + dy * dy, 1e-9)


def crossing_param(a: Point, b: Point, p0: Point, p1: Point) -> float | None:
    """Where the move P0→P1 crosses the infinite line A→B, as a position along A→B (None if parallel)."""
    d0, d1 = signed_distance(a, b, p0), signed_distance(a, b, p1)
    if d0 == d1:
        return None
    t = d0 / (d0 - d1)
    x = p0[0] + t * (p1[0] - p0[0])
    y = p0[1] + t * (p1[1] - p0[1])
    return projection(a, b, (x, y))


def point_in_polygon(p: Point, polygon: Sequence[Point]) -> bool:
    """Even-odd rule; points on an edge may fall either way."""
    x, y = p
    inside = False
    n = len(polygon)
    for i in range(n):
        x1, y1 = polygon[i]
        x2, y2 = polygon[(i + 1) % n]
        if (y1 > y) != (y2 > y):
            x_cross = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
            if x < x_cross:
                inside = not inside
    return inside


def angle_between(u: Point, v: Point) -> float:
    """Angle in degrees (0..180) between two vectors; 0 if either is zero."""
    nu, nv = math.hypot(*u), math.hypot(*v)
    if nu == 0 or nv == 0:
        return 0.0
    cos = max(-1.0, min(1.0, (u[0] * v[0] + u[1] * v[1]) / (nu * nv)))
    return math.degrees(math.acos(cos))


def anchor_point(box: Box, anchor: str) -> Point:
    """The point of a box used for rules: its centre, or the middle of its bottom edge."""
    x1, y1, x2, y2 = box
    if anchor == "bottom":
        return ((x1 + x2) / 2, y2)
    return ((x1 + x2) / 2, (y1 + y2) / 2)


def box_iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def overlap_of(a: Box, b: Box) -> float:
    """Share of box ``a``'s area that lies inside box ``b``."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = (a[2] - a[0]) * (a[3] - a[1])
    return ix * iy / area if area > 0 else 0.0
