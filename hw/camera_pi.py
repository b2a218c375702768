"""Raspberry Pi camera (libcamera) through picamera2.

picamera2 exists only on Raspberry Pi OS; it is imported when the source is opened, never at import
time. Frames come as BGR arrays (picamera2's ``RGB888`` format is stored B, G, R in memory).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from hw.camera import Frame, SourceOpenError, SourceReadError


class Picamera2Source:
    """The Pi camera module (CSI) at a fixed size and frame rate."""

    def __init__(
        self, camera_num: int = 0, *, width: int = 1280, height: int = 720, fps: float = 15.0
    ) -> None:
        self.name = f"picamera2:{camera_num}"
        self.camera_num = camera_num
        self.width, self.height, self.fps = width, height, fps
        self._cam: Any = None
        self._index = 0

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise SourceOpenError(
                "picamera2 is not installed: the Pi camera works only on Raspberry Pi OS "
                "(apt install python3-picamera2, or pip install 'cityedge[pi]')"
            ) from exc
        try:
            cam = Picamera2(self.camera_num)
            config = cam.create_video_configuration(
                main={"size": (self.width, self.height), "format": "RGB888"},
                controls={"FrameRate": self.fps},
            )
            cam.configure(config)
            cam.start()
        except (RuntimeError, IndexError, OSError) as exc:
            raise SourceOpenError(f"cannot start Pi camera {self.camera_num}: {exc}") from exc
        self._cam = cam

    def read(self) -> Frame | None:
        if self._cam is None:
            raise SourceReadError(f"{self.name} is not open")
        try:
            array = self._cam.capture_array("main")
        except (RuntimeError, OSError) as exc:
            raise SourceReadError(f"Pi camera {self.camera_num} stopped: {exc}") from exc
        self._index += 1
        image = np.ascontiguousarray(np.asarray(array)[:, :, :3], dtype=np.uint8)
        return Frame(image=image, seq=self._index, t=time.monotonic(), wall=time.time())

    def close(self) -> None:
        if self._cam is not None:
            try:
                self._cam.stop()
                self._cam.close()
            finally:
                self._cam = None
