"""Real object imagery for synthetic scenes: sprites (image + mask) cut from real photos and clips.

- the motorcycle of scikit-image's ``stereo_motorcycle`` (a real photo, cut out with GrabCut);
- a real person (scikit-image's ``astronaut``), for privacy-blur tests;
- top-down cars cut from the real clip ``car-detection.mp4`` when it is present
  (``CITYEDGE_TRAFFIC_DIR`` or ``../shared/traffic``; nothing is copied into the project);
- drawn shapes (buses, trucks, cars, bicycles) for variety, and number plates.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from agent.camera.cvlib import cv2 as _cv2

Image = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Sprite:
    image: Image
    mask: npt.NDArray[np.uint8]
    kind: str

    def scaled(self, length: float) -> Sprite:
        """Resized so that its longer side is ``length`` pixels."""
        cv2 = _cv2()

        h, w = self.mask.shape
        f = length / max(h, w)
        size = (max(2, round(w * f)), max(2, round(h * f)))
        return Sprite(
            cv2.resize(self.image, size, interpolation=cv2.INTER_AREA),
            cv2.resize(self.mask, size, interpolation=cv2.INTER_NEAREST),
            self.kind,
        )

    def flipped(self) -> Sprite:
        return Sprite(
            np.ascontiguousarray(self.image[:, ::-1]), np.ascontiguousarray(self.mask[:, ::-1]), self.kind
        )

    def rotated90(self) -> Sprite:
        return Sprite(
            np.ascontiguousarray(np.rot90(self.image)), np.ascontiguousarray(np.rot90(self.mask)), self.kind
        )


@functools.lru_cache(maxsize=1)
def motorcycle_sprite() -> Sprite:
    """The real motorcycle photo from scikit-image, cut out with GrabCut (side view, facing right)."""
    cv2 = _cv2()
    from skimage import data

    photo = data.stereo_motorcycle()[0]  # type: ignore[no-untyped-call]
    left = cv2.cvtColor(photo, cv2.COLOR_RGB2BGR)
    crop = np.ascontiguousarray(left[60:450, 100:715])
    small = cv2.resize(crop, (crop.shape[1] // 3, crop.shape[0] // 3), interpolation=cv2.INTER_AREA)
    mask = np.zeros(small.shape[:2], np.uint8)
    rect = (3, 3, small.shape[1] - 6, small.shape[0] - 6)
    bg, fg = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(7)
    cv2.grabCut(small, mask, rect, bg, fg, 4, cv2.GC_INIT_WITH_RECT)
    cut = np.where((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD), 255, 0).astype(np.uint8)
    cut = cv2.resize(cut, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_LINEAR)
    cut = np.where(cut > 127, 255, 0).astype(np.uint8)
    return Sprite(crop, cut, "motorcycle")


@functools.lru_cache(maxsize=1)
def person_sprite() -> Sprite:
    """A real person (scikit-image ``astronaut``), for privacy-blur tests."""
    cv2 = _cv2()
    from skimage import data

    photo = data.astronaut()  # type: ignore[no-untyped-call]
    image = cv2.cvtColor(photo, cv2.COLOR_RGB2BGR)[20:500, 150:400]
    return Sprite(np.ascontiguousarray(image), np.full(image.shape[:2], 255, np.uint8), "person")


def traffic_dir() -> Path:
    env = os.environ.get("CITYEDGE_TRAFFIC_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "traffic"


# (frame, x1, y1, x2, y2) of single cars in car-detection.mp4 (768x432), checked by eye.
CLIP_CARS = (
    (85, 240, 40, 470, 330),
    (203, 60, 0, 280, 280),
    (215, 290, 60, 490, 350),
    (333, 110, 40, 330, 420),
)


@functools.lru_cache(maxsize=1)
def clip_car_sprites() -> tuple[Sprite, ...]:
    """Top-down cars cut from the real clip (empty tuple if the clip is absent)."""
    cv2 = _cv2()

    path = traffic_dir() / "car-detection.mp4"
    if not path.is_file():
        return ()
    cap = cv2.VideoCapture(str(path))
    frames: dict[int, Image] = {}
    empty: list[Image] = []
    index = 0
    wanted = {c[0] for c in CLIP_CARS}
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if index < 40 and index % 4 == 0:
            empty.append(frame)
        if index in wanted:
            frames[index] = frame
        index += 1
    cap.release()
    if not empty or len(frames) != len(wanted):
        return ()
    background = np.median(np.stack(empty), axis=0).astype(np.int16)
    sprites = []
    for frame_no, x1, y1, x2, y2 in CLIP_CARS:
        frame = frames[frame_no]
        signed = frame.astype(np.int16) - background
        signed -= np.median(signed.reshape(-1, 3), axis=0).astype(np.int16)  # auto-exposure shift
        diff = np.abs(signed).max(axis=2)[y1:y2, x1:x2]
        mask = (diff > 40).astype(np.uint8) * 255
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((9, 9), np.uint8))
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
        if count < 2:
            continue
        biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        x, y, w, h = (int(v) for v in stats[biggest, :4])
        car = (labels[y : y + h, x : x + w] == biggest).astype(np.uint8) * 255
        car = cv2.morphologyEx(car, cv2.MORPH_CLOSE, np.ones((15, 15), np.uint8))
        contours, _ = cv2.findContours(car, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(car, contours, -1, 255, -1)  # fill windows that look like the road
        image = np.ascontiguousarray(frame[y1 + y : y1 + y + h, x1 + x : x1 + x + w])
        sprites.append(Sprite(image, car, "car").rotated90())
    return tuple(sprites)


def drawn_vehicle(kind: str, rng: np.random.Generator) -> Sprite:
    """A simple top-down vehicle drawing facing right: car, bus, truck or bicycle."""
    cv2 = _cv2()

    length, width = {"car": (90, 50), "bus": (200, 50), "truck": (160, 50), "bicycle": (60, 16)}[kind]
    colour = tuple(int(c) for c in rng.integers(40, 230, 3))
    image = np.zeros((width, length, 3), np.uint8)
    mask = np.zeros((width, length), np.uint8)
    cv2.rectangle(mask, (0, 0), (length - 1, width - 1), 255, -1)
    image[:] = colour
    if kind == "bicycle":
        image[:] = (30, 30, 30)
        cv2.circle(image, (10, width // 2), 7, (200, 200, 200), 2)
        cv2.circle(image, (length - 10, width // 2), 7, (200, 200, 200), 2)
    elif kind == "bus":
        for x in range(12, length - 20, 22):
            cv2.rectangle(image, (x, 4), (x + 14, width - 5), (60, 40, 30), -1)
    elif kind == "truck":
        cv2.rectangle(image, (length - 36, 2), (length - 3, width - 3), (90, 90, 160), -1)
        cv2.line(image, (length - 40, 0), (length - 40, width), (20, 20, 20), 3)
    else:
        cv2.rectangle(image, (int(length * 0.55), 5), (int(length * 0.75), width - 6), (40, 35, 30), -1)
        cv2.rectangle(image, (int(length * 0.12), 6), (int(length * 0.25), width - 7), (40, 35, 30), -1)
    return Sprite(image, mask, kind)


def add_plate(sprite: Sprite, text: str) -> Sprite:
    """A copy with a white number plate carrying ``text`` at the middle of its lower part."""
    cv2 = _cv2()
    image = sprite.image.copy()
    h, w = image.shape[:2]
    pw, ph = max(60, int(w * 0.8)), max(18, int(h * 0.12))
    x, y = (w - pw) // 2, h - ph - max(2, h // 20)
    cv2.rectangle(image, (x, y), (x + pw, y + ph), (255, 255, 255), -1)
    cv2.rectangle(image, (x, y), (x + pw, y + ph), (0, 0, 0), 1)
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), _ = cv2.getTextSize(text, font, 1.0, 2)
    scale = min((pw - 8) / tw, (ph * 0.7) / th)
    (tw, th), _ = cv2.getTextSize(text, font, scale, 2)
    org = (x + (pw - tw) // 2, y + (ph + th) // 2)
    cv2.putText(image, text, org, font, scale, (0, 0, 0), 2, cv2.LINE_AA)
    mask = sprite.mask.copy()
    mask[y : y + ph + 1, x : x + pw + 1] = 255
    return Sprite(image, mask, sprite.kind)
