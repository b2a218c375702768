"""Synthetic traffic scenes with exact ground truth, for tests, benchmarks and the demo.

Real object imagery (``agent.camera.sprites``: the motorcycle photo of scikit-image, cars cut from
the real clip, drawn shapes) is composited along known trajectories over a generated road.
Because every actor's path is known, every line crossing is known: ``Scene.true_crossings`` is
the ground truth.

Nothing here is needed on a device in production; it is imported only for ``synthetic`` sources.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from agent.camera.cvlib import cv2 as _cv2
from agent.camera.geometry import Point, crossing_param, signed_distance
from agent.camera.sprites import (
    Sprite,
    add_plate,
    clip_car_sprites,
    drawn_vehicle,
    motorcycle_sprite,
    person_sprite,
    traffic_dir,
)

Image = npt.NDArray[np.uint8]
__all__ = [
    "Sprite",
    "add_plate",
    "clip_car_sprites",
    "drawn_vehicle",
    "motorcycle_sprite",
    "person_sprite",
    "traffic_dir",
]


def road_background(width: int, height: int, lanes: list[float], seed: int = 0) -> Image:
    """Asphalt texture with dashed lane markings between horizontal lanes (centre y of each lane)."""
    cv2 = _cv2()

    rng = np.random.default_rng(seed)
    base = rng.normal(92, 6, (height // 4 + 1, width // 4 + 1)).astype(np.float32)
    base = cv2.resize(base, (width, height), interpolation=cv2.INTER_CUBIC)
    base += rng.normal(0, 3, (height, width)).astype(np.float32)
    image: Image = np.clip(np.dstack([base, base + 2, base + 4]), 0, 255).astype(np.uint8)
    centres = sorted(lanes)
    for a, b in itertools.pairwise(centres):
        y = int((a + b) / 2)
        for x in range(0, width, 28):
            cv2.line(image, (x, y), (x + 14, y), (210, 210, 210), 2)
    return image


@dataclass
class Actor:
    """A sprite following a piecewise-linear path of (t, x, y) centre positions."""

    sprite: Sprite
    path: list[tuple[float, float, float]]

    def position(self, t: float) -> Point | None:
        if t < self.path[0][0] or t > self.path[-1][0]:
            return None
        for (t0, x0, y0), (t1, x1, y1) in itertools.pairwise(self.path):
            if t0 <= t <= t1:
                f = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
                return (x0 + f * (x1 - x0), y0 + f * (y1 - y0))
        return (self.path[-1][1], self.path[-1][2])


@dataclass
class Scene:
    width: int
    height: int
    fps: float
    duration_s: float
    background: Image
    actors: list[Actor] = field(default_factory=list)
    noise: float = 2.0
    seed: int = 0

    @property
    def frames(self) -> int:
        return int(self.duration_s * self.fps)

    def render(self, index: int) -> Image:
        t = index / self.fps
        out = self.background.astype(np.int16)
        for actor in self.actors:
            pos = actor.position(t)
            if pos is not None:
                _paste(out, actor.sprite, pos)
        if self.noise > 0:
            rng = np.random.default_rng(self.seed * 100003 + index)
            out += rng.normal(0, self.noise, out.shape).astype(np.int16)
        return np.clip(out, 0, 255).astype(np.uint8)

    def true_crossings(self, a: Point, b: Point) -> dict[str, int]:
        """Ground truth: how many actors cross segment A→B in each direction (from their paths)."""
        counts = {"left_to_right": 0, "right_to_left": 0}
        for _index, direction, _t in self.crossing_events(a, b):
            counts[direction] += 1
        return counts

    def true_crossings_by_kind(self, a: Point, b: Point) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for index, direction, _t in self.crossing_events(a, b):
            kind = self.actors[index].sprite.kind
            out.setdefault(direction, {}).setdefault(kind, 0)
            out[direction][kind] += 1
        return out

    def crossing_events(self, a: Point, b: Point) -> list[tuple[int, str, float]]:
        """(actor index, direction, time of the first frame past the line) for each crossing actor."""
        events = []
        for index, actor in enumerate(self.actors):
            found = _first_crossing(actor, a, b, self.fps, self.frames)
            if found is not None:
                events.append((index, found[0], found[1]))
        return events


def _first_crossing(actor: Actor, a: Point, b: Point, fps: float, frames: int) -> tuple[str, float] | None:
    previous: Point | None = None
    for index in range(frames):
        pos = actor.position(index / fps)
        if pos is None:
            continue
        if previous is not None:
            d0, d1 = signed_distance(a, b, previous), signed_distance(a, b, pos)
            if d0 * d1 < 0:
                where = crossing_param(a, b, previous, pos)
                if where is not None and 0 <= where <= 1:
                    return ("left_to_right" if d1 > 0 else "right_to_left", index / fps)
        previous = pos
    return None


def _paste(out: npt.NDArray[np.int16], sprite: Sprite, centre: Point) -> None:
    h, w = sprite.mask.shape
    x0, y0 = round(centre[0] - w / 2), round(centre[1] - h / 2)
    x1, y1 = max(0, x0), max(0, y0)
    x2, y2 = min(out.shape[1], x0 + w), min(out.shape[0], y0 + h)
    if x2 <= x1 or y2 <= y1:
        return
    m = sprite.mask[y1 - y0 : y2 - y0, x1 - x0 : x2 - x0, None] > 0
    region = out[y1:y2, x1:x2]
    region[:] = np.where(m, sprite.image[y1 - y0 : y2 - y0, x1 - x0 : x2 - x0], region)


def vehicle_pool(rng: np.random.Generator) -> list[Sprite]:
    """Real and drawn sprites, facing right, at their natural relative sizes (not yet scaled)."""
    pool = [motorcycle_sprite().scaled(60), motorcycle_sprite().scaled(54)]
    pool += [s.scaled(100) for s in clip_car_sprites()]
    pool += [drawn_vehicle(kind, rng) for kind in ("car", "bus", "truck", "bicycle")]
    return pool


LANE_LENGTHS = {"motorcycle": 0.95, "bicycle": 0.8, "car": 1.15, "truck": 2.2, "bus": 2.8, "person": 0.9}
"""Vehicle lengths in lane widths, chosen so that widths are realistic (a car with its shadow and
mirrors about 0.7 of a 3.5 m lane, a bus 0.7); motorbikes are a bit enlarged so that the
320x240 test scenes stay legible to the detector."""


def traffic_scene(
    seed: int,
    *,
    width: int = 320,
    height: int = 240,
    fps: float = 10.0,
    duration_s: float = 14.0,
    vehicles: int = 8,
    lanes: int = 4,
    speed: tuple[float, float] = (45.0, 90.0),
    drift: float = 0.35,
) -> Scene:
    """Mixed traffic on ``lanes`` horizontal lanes, upper half moving right, lower half left.

    Motorcycles are the most frequent class (as in Hanoi) and ride anywhere within ``drift`` lane
    widths of the lane centre, so they touch and partly hide vehicles in the neighbouring lane,
    including oncoming ones in the middle lanes. Vehicles in one lane never catch up with each other.
    """
    rng = np.random.default_rng(seed)
    pool = vehicle_pool(rng)
    weights = np.array([3.0 if s.kind == "motorcycle" else 1.0 for s in pool])
    margin = height * 0.12
    lane_w = (height - 2 * margin) / lanes
    centres = [margin + lane_w * (i + 0.5) for i in range(lanes)]
    scene = Scene(width, height, fps, duration_s, road_background(width, height, centres, seed), seed=seed)
    lane_free = [0.0] * lanes
    lane_speed = [1e9] * lanes
    for _ in range(vehicles):
        lane = int(rng.integers(0, lanes))
        rightwards = lane < lanes / 2
        base = pool[int(rng.choice(len(pool), p=weights / weights.sum()))]
        sprite = base.scaled(LANE_LENGTHS[base.kind] * lane_w * float(rng.uniform(0.9, 1.1)))
        if not rightwards:
            sprite = sprite.flipped()
        v = min(float(rng.uniform(*speed)), lane_speed[lane])  # never catch up with the one ahead
        half = sprite.mask.shape[1] / 2 + 2
        start = max(lane_free[lane], float(rng.uniform(0, duration_s * 0.45)))
        travel = (width + 2 * half) / v
        if start + travel > duration_s - 0.3:
            continue
        x0, x1 = (-half, width + half) if rightwards else (width + half, -half)
        offset = (
            float(rng.uniform(-drift, drift)) * lane_w
            if base.kind == "motorcycle"
            else float(rng.uniform(-2, 2))
        )
        y = centres[lane] + offset
        scene.actors.append(Actor(sprite, [(start, x0, y), (start + travel, x1, y)]))
        lane_free[lane] = start + (2 * half + 20) / v
        lane_speed[lane] = v
    return scene


def stop_and_go_scene(
    *,
    width: int = 320,
    height: int = 240,
    fps: float = 10.0,
    stop_s: float = 4.0,
    stop_x: float = 160.0,
    wrong_way: bool = False,
) -> Scene:
    """One car drives in, stops at ``stop_x`` for ``stop_s`` seconds, then leaves; one motorbike passes.

    With ``wrong_way`` the motorbike drives against the lane's direction (right to left in an
    upper, rightward lane).
    """
    rng = np.random.default_rng(5)
    lanes = [height * 0.35, height * 0.65]
    scene = Scene(width, height, fps, 6.0 + stop_s + 4.0, road_background(width, height, lanes, 5), seed=5)
    cars = clip_car_sprites() or (drawn_vehicle("car", rng),)
    car = cars[0].scaled(0.3 * width)
    y = lanes[1]
    half = car.mask.shape[1] / 2 + 2
    v = 60.0
    t_arrive = (stop_x + half) / v
    t_leave = t_arrive + stop_s
    scene.actors.append(
        Actor(
            car,
            [
                (0.5, -half, y),
                (0.5 + t_arrive, stop_x, y),
                (0.5 + t_leave, stop_x, y),
                (0.5 + t_leave + (width - stop_x + half) / v, width + half, y),
            ],
        )
    )
    bike = motorcycle_sprite().scaled(0.17 * width)
    hb = bike.mask.shape[1] / 2 + 2
    if wrong_way:
        bike = bike.flipped()
        scene.actors.append(
            Actor(bike, [(1.0, width + hb, lanes[0]), (1.0 + (width + 2 * hb) / 70, -hb, lanes[0])])
        )
    else:
        scene.actors.append(
            Actor(bike, [(1.0, -hb, lanes[0]), (1.0 + (width + 2 * hb) / 70, width + hb, lanes[0])])
        )
    return scene


def mostly_static_scene(
    *,
    width: int = 320,
    height: int = 240,
    fps: float = 10.0,
    duration_s: float = 60.0,
    vehicles: int = 3,
    seed: int = 11,
) -> Scene:
    """A long quiet scene: a few vehicles pass, evenly spread, the road is empty most of the time."""
    rng = np.random.default_rng(seed)
    lanes = [height * 0.35, height * 0.65]
    scene = Scene(width, height, fps, duration_s, road_background(width, height, lanes, seed), seed=seed)
    pool = vehicle_pool(rng)
    for i in range(vehicles):
        base = pool[i % len(pool)]
        sprite = base.scaled(LANE_LENGTHS[base.kind] * 0.2 * width)
        half = sprite.mask.shape[1] / 2 + 2
        v = 80.0
        start = (i + 0.5) * duration_s / vehicles - (width / v) / 2
        rightwards = i % 2 == 0
        if not rightwards:
            sprite = sprite.flipped()
        x0, x1 = (-half, width + half) if rightwards else (width + half, -half)
        y = lanes[0] if rightwards else lanes[1]
        scene.actors.append(Actor(sprite, [(start, x0, y), (start + (width + 2 * half) / v, x1, y)]))
    return scene


def named_scene(name: str, seed: int = 1) -> Scene:
    """Scenes for ``--source synthetic:NAME``: traffic (default), static, stop."""
    if name in ("", "traffic", "demo"):
        return traffic_scene(seed, duration_s=60.0, vehicles=40)
    if name == "static":
        return mostly_static_scene()
    if name == "stop":
        return stop_and_go_scene()
    raise ValueError(f"unknown synthetic scene {name!r}: use traffic, static or stop")


def speed_of(actor: Actor) -> float:
    (t0, x0, y0), (t1, x1, y1) = actor.path[0], actor.path[-1]
    return math.hypot(x1 - x0, y1 - y0) / max(t1 - t0, 1e-9)
