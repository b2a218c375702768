"""OpenCV frame sources: video files, V4L2 devices, GStreamer pipelines (Jetson) and RTSP/HTTP streams.

``cv2`` is imported inside the functions that need it so that importing this module stays cheap.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from hw.camera import CorruptVideoError, Frame, SourceOpenError, SourceReadError, SourceSpec


def _cv2() -> Any:
    import cv2

    return cv2


def _as_bgr(image: Any) -> np.ndarray[Any, np.dtype[np.uint8]]:
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.shape[2] == 4:
        array = array[:, :, :3]
    return np.ascontiguousarray(array, dtype=np.uint8)


class VideoFileSource:
    """A video clip read frame by frame. ``t`` is the position in the clip (frame / fps) and the
    wall-clock time is ``start_wall + t`` (``start_wall`` defaults to the time of ``open``).

    ``realtime=True`` paces reads at the clip's frame rate (for demos); ``loop=True`` restarts at the end.
    """

    def __init__(
        self, path: str | Path, *, loop: bool = False, realtime: bool = False, start_wall: float | None = None
    ) -> None:
        self.path = Path(path)
        self.name = f"file:{self.path.name}"
        self.loop = loop
        self.realtime = realtime
        self.start_wall = start_wall
        self.fps = 0.0
        self.frame_count = 0
        self._cap: Any = None
        self._index = 0
        self._loops = 0
        self._pending: Any = None
        self._started = 0.0

    def open(self) -> None:
        if not self.path.is_file():
            raise SourceOpenError(f"video file {self.path} does not exist")
        if not os.access(self.path, os.R_OK):
            raise SourceOpenError(f"video file {self.path} is not readable (permissions)")
        cv2 = _cv2()
        cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise CorruptVideoError(
                f"cannot decode video file {self.path}: it is corrupt, truncated or not a video "
                "format this build of OpenCV can read"
            )
        ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            raise CorruptVideoError(
                f"cannot decode video file {self.path}: no frame could be read (corrupt or empty video)"
            )
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0.5 < fps < 1000 else 25.0
        self.frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self._cap = cap
        self._pending = first
        self._index = 0
        self._started = time.monotonic()
        if self.start_wall is None:
            self.start_wall = time.time()

    def read(self) -> Frame | None:
        if self._cap is None:
            raise SourceReadError(f"{self.name} is not open")
        if self._pending is not None:
            image, self._pending = self._pending, None
        else:
            ok, image = self._cap.read()
            if not ok or image is None:
                if not self.loop:
                    return None
                self._cap.set(_cv2().CAP_PROP_POS_FRAMES, 0)
                self._loops += 1
                ok, image = self._cap.read()
                if not ok or image is None:
                    raise SourceReadError(f"{self.name}: cannot restart the clip")
        t = self._index / self.fps
        self._index += 1
        if self.realtime:
            delay = self._started + t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        start = self.start_wall if self.start_wall is not None else 0.0
        return Frame(image=_as_bgr(image), seq=self._index, t=t, wall=start + t)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class OpenCVStreamSource:
    """A live OpenCV capture: V4L2 device, GStreamer pipeline string or RTSP/HTTP URL (FFmpeg).

    ``read_timeout_s`` bounds how long a silent stream may block before it counts as dead.
    """

    BACKENDS: ClassVar[dict[str, str]] = {
        "v4l2": "CAP_V4L2",
        "gstreamer": "CAP_GSTREAMER",
        "rtsp": "CAP_FFMPEG",
    }

    def __init__(
        self,
        spec: SourceSpec,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        read_timeout_s: float = 10.0,
    ) -> None:
        if spec.kind not in self.BACKENDS:
            raise SourceOpenError(f"OpenCV cannot open a {spec.kind!r} source")
        self.spec = spec
        self.name = f"{spec.kind}:{_redact(spec.target)}"
        self.width, self.height, self.fps = width, height, fps
        self.read_timeout_s = read_timeout_s
        self._cap: Any = None
        self._index = 0

    def _target(self) -> str | int:
        target = self.spec.target
        if self.spec.kind == "v4l2" and target.isdigit():
            return int(target)
        return target

    def open(self) -> None:
        cv2 = _cv2()
        if self.spec.kind == "rtsp":
            os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
        if self.spec.kind == "gstreamer" and "appsink" not in self.spec.target:
            raise SourceOpenError("a GStreamer camera pipeline must end in 'appsink' (see docs/camera.md)")
        cap = cv2.VideoCapture(self._target(), getattr(cv2, self.BACKENDS[self.spec.kind]))
        if not cap.isOpened():
            cap.release()
            raise SourceOpenError(f"cannot open camera {self.name} (device missing, busy or unreachable)")
        if self.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        if self.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.fps:
            cap.set(cv2.CAP_PROP_FPS, self.fps)
        self._cap = cap

    def read(self) -> Frame | None:
        if self._cap is None:
            raise SourceReadError(f"{self.name} is not open")
        ok, image = self._cap.read()
        if not ok or image is None:
            raise SourceReadError(f"camera {self.name} delivered no frame")
        self._index += 1
        return Frame(image=_as_bgr(image), seq=self._index, t=time.monotonic(), wall=time.time())

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _redact(target: str) -> str:
    """Hide credentials in URLs (rtsp://user:pass@host → rtsp://***@host) for logs and names."""
    if "://" in target and "@" in target.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = target.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return target
