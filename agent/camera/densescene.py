"""Dense motorbike traffic with exact ground truth: riders abreast, overtaking, stop-and-go at a red
light, rain-like streaks and night-like contrast, at increasing density levels.

Harder than ``scenegen.traffic_scene``: riders ride in groups of up to ``abreast`` side by side
(their silhouettes touch, so the motion gate sees one wide blob), faster riders overtake slower
ones inside the same half of the road (their boxes overlap for a moment), every rider arriving at
the stop line while the light is red waits in a queue and leaves when it turns green, and the
higher levels add rain streaks and a dark, low-contrast image. Paths are piecewise linear, so
``Scene.true_crossings`` is exact.

Nothing here is needed on a device; it serves tests, benchmarks and the docs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.camera.cvlib import cv2 as _cv2
from agent.camera.geometry import Point
from agent.camera.scenegen import Actor, Image, Scene, road_background
from agent.camera.sprites import Sprite, motorcycle_sprite


@dataclass(frozen=True)
class DensityLevel:
    level: int
    riders: int
    abreast: int
    overtaking: float
    """Share of groups followed by a faster overtaking rider."""
    red: bool
    rain: int
    """Rain streaks per frame."""
    night: bool


LEVELS = {
    1: DensityLevel(1, riders=12, abreast=2, overtaking=0.0, red=False, rain=0, night=False),
    2: DensityLevel(2, riders=18, abreast=3, overtaking=0.3, red=True, rain=0, night=False),
    3: DensityLevel(3, riders=24, abreast=3, overtaking=0.4, red=True, rain=60, night=False),
    4: DensityLevel(4, riders=30, abreast=3, overtaking=0.5, red=True, rain=60, night=True),
}
"""Density levels of ``dense_scene`` (riders per 18 s scene in a 320x240 view)."""

WIDTH, HEIGHT = 320, 240
HALVES = ((30.0, 114.0), (126.0, 210.0))
"""y ranges of the rightward (upper) and leftward (lower) halves of the road."""
STOP_X = (118.0, 202.0)
"""Stop line x of the rightward and the leftward half."""
RED = (5.0, 9.0)
"""Red phase (s): riders arriving at the stop line inside it wait until it ends."""
RIDER_LENGTH = 40.0


@dataclass
class DenseScene(Scene):
    """A ``Scene`` whose frames get rain streaks and night-like contrast."""

    rain: int = 0
    night: bool = False

    def render(self, index: int) -> Image:
        out = super().render(index)
        if self.rain <= 0 and not self.night:
            return out
        cv2 = _cv2()
        rng = np.random.default_rng(self.seed * 7919 + index)
        if self.rain > 0:
            layer = np.zeros(out.shape[:2], np.uint8)
            xs = rng.integers(0, self.width, self.rain)
            ys = rng.integers(0, self.height, self.rain)
            lengths = rng.integers(6, 15, self.rain)
            for x, y, n in zip(xs, ys, lengths, strict=True):
                cv2.line(layer, (int(x), int(y)), (int(x) - int(n) // 3, int(y) + int(n)), 70, 1)
            out = cv2.add(out, cv2.merge([layer, layer, layer]))
            out = np.clip(out.astype(np.int16) + rng.normal(0, 4, out.shape).astype(np.int16), 0, 255).astype(
                np.uint8
            )
        if self.night:
            # Dark and flat: a third of the day's contrast, with sensor noise on top.
            dark = out.astype(np.float32) * 0.33 + 12.0
            dark += rng.normal(0, 3.0, out.shape).astype(np.float32)
            out = np.clip(dark, 0, 255).astype(np.uint8)
        return out


def _queue_path(
    start: float, x0: float, x1: float, y: float, v: float, stop_at: float, release: float
) -> list[tuple[float, float, float]]:
    arrive = start + abs(stop_at - x0) / v
    leave = release + abs(x1 - stop_at) / v
    return [(start, x0, y), (arrive, stop_at, y), (release, stop_at, y), (leave, x1, y)]


def dense_scene(seed: int, level: int, *, fps: float = 10.0, duration_s: float = 18.0) -> DenseScene:
    """Motorbikes only (Hanoi's rush hour) at density ``level`` (1-4, see ``LEVELS``)."""
    spec = LEVELS[level]
    rng = np.random.default_rng(1000 * level + seed)
    base = motorcycle_sprite()
    lanes = [HALVES[0][0] + 21, HALVES[0][1] - 21, HALVES[1][0] + 21, HALVES[1][1] - 21]
    scene = DenseScene(
        WIDTH,
        HEIGHT,
        fps,
        duration_s,
        road_background(WIDTH, HEIGHT, lanes, seed),
        seed=seed,
        rain=spec.rain,
        night=spec.night,
    )
    # Slots: lateral positions inside each half; a group abreast takes adjacent slots.
    slots_per_half = 3
    free = {(h, s): 0.0 for h in range(2) for s in range(slots_per_half)}
    speed_cap = {(h, s): 1e9 for h in range(2) for s in range(slots_per_half)}
    queued = {(h, s): 0 for h in range(2) for s in range(slots_per_half)}
    release_at = {(h, s): 0.0 for h in range(2) for s in range(slots_per_half)}
    placed = 0
    attempts = 0
    groups = max(1.0, spec.riders / ((spec.abreast + 1) / 2 + spec.overtaking))
    gap = duration_s * 0.6 / groups
    t_group = 0.0
    while placed < spec.riders and attempts < spec.riders * 8:
        attempts += 1
        half = int(rng.integers(0, 2))
        size = int(rng.integers(1, spec.abreast + 1))
        first = int(rng.integers(0, slots_per_half - size + 1))
        group = list(range(first, first + size))
        v_group = float(rng.uniform(40.0, 75.0))
        t_group += float(rng.exponential(gap))
        if t_group > duration_s * 0.65:
            t_group = float(rng.uniform(0.0, duration_s * 0.3))
        members: list[tuple[float, float, float]] = []  # slot (x.5 = between two), start, speed
        for s in group:
            v = min(v_group * float(rng.uniform(0.95, 1.05)), speed_cap[(half, s)])
            members.append((float(s), max(t_group + float(rng.uniform(-0.25, 0.25)), free[(half, s)]), v))
        if spec.overtaking > 0 and rng.random() < spec.overtaking:
            # The overtaker squeezes between two slots, partly hiding the riders on both sides.
            lane = int(rng.integers(0, slots_per_half - 1))
            members.append((lane + 0.5, t_group + 0.8, v_group * 1.5))
        for slot, start, v in members:
            if placed >= spec.riders:
                break
            if _add_rider(scene, spec, rng, base, half, slot, start, v, free, speed_cap, queued, release_at):
                placed += 1
    return scene


def _add_rider(
    scene: DenseScene,
    spec: DensityLevel,
    rng: np.random.Generator,
    base: Sprite,
    half: int,
    slot: float,
    start: float,
    v: float,
    free: dict[tuple[int, int], float],
    speed_cap: dict[tuple[int, int], float],
    queued: dict[tuple[int, int], int],
    release_at: dict[tuple[int, int], float],
) -> bool:
    between = slot != int(slot)
    key = (half, int(slot) + (10 if between else 0))
    free.setdefault(key, 0.0)
    speed_cap.setdefault(key, 1e9)
    start = max(start, free[key])
    v = min(v, speed_cap[key])
    sprite = base.scaled(RIDER_LENGTH * float(rng.uniform(0.92, 1.08)))
    rightwards = half == 0
    if not rightwards:
        sprite = sprite.flipped()
    lo, hi = HALVES[half]
    step = (hi - lo) / 3
    y = lo + step * (slot + 0.5) + float(rng.uniform(-2.5, 2.5))
    hw = sprite.mask.shape[1] / 2 + 2
    x0, x1 = (-hw, scene.width + hw) if rightwards else (scene.width + hw, -hw)
    travel = (scene.width + 2 * hw) / v
    path = [(start, x0, y), (start + travel, x1, y)]
    delay = 0.0
    if spec.red and not between:
        sign = 1.0 if rightwards else -1.0
        stop_at = STOP_X[half] - sign * (hw + queued[key] * (2 * hw + 3))
        arrive = start + abs(stop_at - x0) / v
        if RED[0] <= arrive < RED[1] or (queued[key] > 0 and arrive < release_at[key]):
            release = max(RED[1], release_at[key] + 0.5)
            path = _queue_path(start, x0, x1, y, v, stop_at, release)
            delay = release - arrive
            queued[key] += 1
            release_at[key] = release
    if path[-1][0] > scene.duration_s - 0.3:
        return False
    scene.actors.append(Actor(sprite, path))
    free[key] = start + delay + (2 * hw + 14) / v
    speed_cap[key] = v
    return True


def level_truth(scene: Scene, lines: list[tuple[Point, Point]]) -> int:
    """Ground-truth crossings of all ``lines`` together (both directions)."""
    return sum(sum(scene.true_crossings(a, b).values()) for a, b in lines)
