"""Document cameras: a V4L2 camera above the kiosk's document tray (real) and a simulated one.

Both return one BGR photo (``numpy`` uint8, H×W×3) per :meth:`DocumentCamera.capture`. The real
one opens ``/dev/videoN`` through OpenCV's V4L2 backend with fixed focus and exposure (a document
tray is at a fixed distance under fixed lighting, and autofocus hunting makes blurred pages). The
simulated one draws a printed page (text lines, a table, a stamp) on a dark desk, rotated and
tilted, with a soft shadow and optional blur, and remembers where the page corners really are so
tests can check the page finder.

Photos are personal data: neither class keeps one after returning it, logs it or writes it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    Image = NDArray[np.uint8]


class DocumentCameraError(Exception):
    """The camera cannot be opened or did not deliver a frame (the message says which)."""


class DocumentCamera(Protocol):
    def capture(self) -> Image:
        """One BGR photo of the tray."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class CameraSettings:
    width: int = 1920
    height: int = 1080
    focus: int = 40
    """V4L2 ``focus_absolute`` for the tray distance (driver units)."""
    exposure: int = 157
    """V4L2 ``exposure_time_absolute`` (100 µs units) under the kiosk's lamp."""
    warmup_frames: int = 3
    """Frames dropped after opening while the sensor settles."""


class V4L2DocumentCamera:
    """``V4L2DocumentCamera("/dev/video0")``: a UVC camera with manual focus and exposure."""

    def __init__(self, device: str = "/dev/video0", settings: CameraSettings | None = None) -> None:
        import cv2

        self.settings = settings or CameraSettings()
        index: int | str = int(device[len("/dev/video") :]) if device.startswith("/dev/video") else device
        self._cap = cv2.VideoCapture(index, cv2.CAP_V4L2)
        if not self._cap.isOpened():
            raise DocumentCameraError(f"cannot open document camera {device}")
        s = self.settings
        self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, s.width)
        self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, s.height)
        self._cap.set(cv2.CAP_PROP_AUTOFOCUS, 0)
        self._cap.set(cv2.CAP_PROP_FOCUS, s.focus)
        self._cap.set(cv2.CAP_PROP_AUTO_EXPOSURE, 1)  # V4L2: 1 = manual
        self._cap.set(cv2.CAP_PROP_EXPOSURE, s.exposure)
        for _ in range(s.warmup_frames):
            self._cap.read()

    def capture(self) -> Image:
        import numpy as np

        ok, frame = self._cap.read()
        if not ok or frame is None:
            raise DocumentCameraError("the document camera delivered no frame")
        return np.asarray(frame, dtype=np.uint8)

    def close(self) -> None:
        self._cap.release()


@dataclass
class SimulatedDocumentCamera:
    """Generated tray photos: a printed A4 page, skewed, shadowed, optionally blurred."""

    width: int = 1600
    height: int = 1200
    skew_deg: float = 12.0
    tilt: float = 0.06
    """Perspective: how much narrower the far edge looks (0 = camera straight above)."""
    shadow: float = 0.45
    """Darkening at the shadowed edge (0 = none)."""
    blur_sigma: float = 0.0
    glare: bool = False
    seed: int = 1
    corners: list[tuple[float, float]] = field(default_factory=list)
    """Where the page corners of the last photo are (top-left, top-right, bottom-right, bottom-left)."""

    def capture(self) -> Image:
        import cv2
        import numpy as np

        rng = random.Random(self.seed)
        page = self._page(rng)
        ph, pw = page.shape[:2]
        desk = np.full((self.height, self.width, 3), (48, 62, 84), np.uint8)
        noise = np.random.default_rng(self.seed).normal(0, 6, desk.shape)
        desk = np.clip(desk + noise, 0, 255).astype(np.uint8)
        # page outline: fit 75 % of the height, rotate by skew, tilt the far edge
        scale = 0.72 * self.height / ph
        w, h = pw * scale, ph * scale
        half = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
        squeeze = [(1 - self.tilt, 1.0), (1 - self.tilt, 1.0), (1.0, 1.0), (1.0, 1.0)]
        angle = math.radians(self.skew_deg)
        cx, cy = self.width / 2 + rng.uniform(-40, 40), self.height / 2 + rng.uniform(-30, 30)
        dst = []
        for (x, y), (sx, _) in zip(half, squeeze, strict=True):
            x *= sx
            dst.append(
                (
                    cx + x * math.cos(angle) - y * math.sin(angle),
                    cy + x * math.sin(angle) + y * math.cos(angle),
                )
            )
        self.corners = dst
        src = np.array([[0, 0], [pw, 0], [pw, ph], [0, ph]], dtype=np.float32)
        matrix = cv2.getPerspectiveTransform(src, np.array(dst, dtype=np.float32))
        warped = cv2.warpPerspective(page, matrix, (self.width, self.height), flags=cv2.INTER_AREA)
        mask = cv2.warpPerspective(np.full((ph, pw), 255, np.uint8), matrix, (self.width, self.height))
        photo = np.where(mask[..., None] > 127, warped, desk)
        # a soft shadow across one side (a hand or the kiosk's hood)
        if self.shadow:
            ramp = np.linspace(1.0 - self.shadow, 1.0, self.width, dtype=np.float32)
            photo = (photo.astype(np.float32) * ramp[None, :, None]).astype(np.uint8)
        if self.glare:
            gx, gy = int(cx + w * 0.1), int(cy - h * 0.1)
            cv2.ellipse(photo, (gx, gy), (int(w * 0.22), int(h * 0.12)), 20, 0, 360, (255, 255, 255), -1)
        if self.blur_sigma:
            photo = cv2.GaussianBlur(photo, (0, 0), self.blur_sigma)
        return np.asarray(photo, dtype=np.uint8)

    def _page(self, rng: random.Random) -> Image:
        import cv2
        import numpy as np

        pw, ph = 827, 1169  # A4 at 100 dpi
        page = np.full((ph, pw, 3), 238, np.uint8)
        font = cv2.FONT_HERSHEY_SIMPLEX
        cv2.putText(page, "CONG HOA XA HOI CHU NGHIA VIET NAM", (120, 80), font, 0.8, (20, 20, 20), 2)
        cv2.putText(page, "TO KHAI", (340, 150), font, 1.1, (20, 20, 20), 3)
        y = 220
        while y < ph - 160:
            length = rng.randint(300, 680)
            cv2.putText(page, "x" * (length // 14), (70, y), font, 0.55, (40, 40, 40), 1)
            y += 34
        cv2.rectangle(page, (70, ph - 150), (pw - 70, ph - 60), (30, 30, 30), 2)
        cv2.circle(page, (pw - 170, ph - 240), 60, (40, 40, 190), 3)
        return np.asarray(page, dtype=np.uint8)

    def close(self) -> None:
        self.corners = []
