"""Camera frame sources: one ``FrameSource`` protocol, a supervisor that reopens dead sources.

Implementations live beside this module:

- ``hw.camera_cv``: OpenCV backends — V4L2 device, GStreamer pipeline string (Jetson), RTSP/HTTP URL,
  video file;
- ``hw.camera_pi``: Raspberry Pi camera through picamera2 (imported lazily, only on a Pi);
- ``hw.camera_synth``: a synthetic source that renders frames from a callable (scene generator).

Every frame carries a sequence number, a monotonic timestamp ``t`` (seconds; for files, the position
in the clip) and the wall-clock time of capture. ``ReconnectingSource`` wraps any source: when it
dies it is reopened with capped exponential backoff, and its state and counters are reported.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]
SourceKind = Literal["file", "v4l2", "gstreamer", "rtsp", "picamera2", "synthetic"]
SourceState = Literal["closed", "open", "reconnecting", "ended", "failed"]


class CameraError(Exception):
    """Base class for camera source problems."""


class SourceOpenError(CameraError):
    """A source cannot be opened (no device, bad URL, unreadable file)."""


class CorruptVideoError(SourceOpenError):
    """A video file exists but cannot be decoded (corrupt, truncated or an unsupported codec)."""


class SourceReadError(CameraError):
    """An open source stopped delivering frames (unplugged camera, dropped stream)."""


@dataclass(frozen=True)
class Frame:
    """One captured image (H x W x 3, uint8, BGR) with its sequence number and timestamps."""

    image: Image
    seq: int
    t: float
    wall: float

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.image.shape[1]), int(self.image.shape[0])


@runtime_checkable
class FrameSource(Protocol):
    """A camera or clip. ``read`` returns the next frame, or None at the end of a finite clip."""

    name: str

    def open(self) -> None:
        """Open the device/stream/file; raise SourceOpenError (CorruptVideoError for bad files)."""
        ...

    def read(self) -> Frame | None:
        """Next frame; None at the end of a clip; SourceReadError when the source died."""
        ...

    def close(self) -> None:
        """Release the device. Safe to call twice."""
        ...


@dataclass(frozen=True)
class SourceSpec:
    """A parsed ``--source`` string: the backend kind and its target (path, URL, device, pipeline)."""

    kind: SourceKind
    target: str


def parse_source_spec(text: str) -> SourceSpec:
    """Turn a ``--source`` string into a SourceSpec.

    Accepted: ``file:PATH`` or a plain path, ``rtsp://...``/``http(s)://...``, ``v4l2:/dev/video0``,
    ``/dev/videoN`` or ``v4l2:N``, ``gst:PIPELINE`` (must end in ``appsink``), ``picamera2[:N]``,
    ``synthetic[:NAME]``.
    """
    value = text.strip()
    if not value:
        raise SourceOpenError("empty camera source: give a file path, rtsp:// URL, v4l2:/dev/videoN, ...")
    lowered = value.lower()
    if lowered.startswith(("rtsp://", "rtsps://", "http://", "https://")):
        return SourceSpec("rtsp", value)
    prefixes: tuple[tuple[str, SourceKind], ...] = (
        ("file:", "file"),
        ("v4l2:", "v4l2"),
        ("gst:", "gstreamer"),
        ("gstreamer:", "gstreamer"),
        ("picamera2", "picamera2"),
        ("synthetic", "synthetic"),
    )
    for prefix, kind in prefixes:
        if lowered.startswith(prefix):
            return SourceSpec(kind, value[len(prefix) :].lstrip(":"))
    if value.startswith("/dev/video"):
        return SourceSpec("v4l2", value)
    return SourceSpec("file", value)


@dataclass
class SourceStats:
    """Counters a supervisor reports as metrics (state, frames, reconnects, last error)."""

    state: SourceState = "closed"
    frames: int = 0
    reconnects: int = 0
    failures: int = 0
    dropped: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "frames": self.frames,
            "reconnects": self.reconnects,
            "failures": self.failures,
            "dropped": self.dropped,
            "last_error": self.last_error,
        }


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff: ``initial_s * factor**n`` up to ``max_s``."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0

    def delay(self, attempt: int) -> float:
        return float(min(self.max_s, self.initial_s * self.factor ** max(0, attempt)))


@dataclass
class ReconnectingSource:
    """Supervises a source built by ``factory``: reopens it with capped backoff when it dies.

    ``read`` blocks until a frame arrives (or the clip ends, or ``stop`` is called, or
    ``max_attempts`` consecutive reopen attempts failed → SourceOpenError). Frames are renumbered
    so that ``seq`` keeps increasing across reconnects. ``on_state`` is told about state changes.
    """

    factory: Callable[[], FrameSource]
    backoff: Backoff = field(default_factory=Backoff)
    max_attempts: int | None = None
    on_state: Callable[[SourceStats], None] | None = None
    sleep: Callable[[float], None] = time.sleep
    stats: SourceStats = field(default_factory=SourceStats)
    _source: FrameSource | None = None
    _seq: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def name(self) -> str:
        return self._source.name if self._source is not None else "camera"

    def _set_state(self, state: SourceState, error: str | None = None) -> None:
        changed = state != self.stats.state
        self.stats.state = state
        if error is not None:
            self.stats.last_error = error
        if changed and self.on_state is not None:
            self.on_state(self.stats)

    def open(self) -> None:
        self._reopen(first=True)

    def _reopen(self, *, first: bool) -> None:
        attempt = 0
        while not self._stop.is_set():
            source = self.factory()
            try:
                source.open()
            except SourceOpenError as exc:
                source.close()
                self.stats.failures += 1
                attempt += 1
                if isinstance(exc, CorruptVideoError) or (
                    self.max_attempts is not None and attempt >= self.max_attempts
                ):
                    self._set_state("failed", str(exc))
                    raise
                self._set_state("reconnecting", str(exc))
                delay = self.backoff.delay(attempt - 1)
                log.warning("camera %s: cannot open (%s); retrying in %.1f s", source.name, exc, delay)
                self.sleep(delay)
                continue
            self._source = source
            if not first:
                self.stats.reconnects += 1
                log.info("camera %s: reopened after %d attempt(s)", source.name, attempt + 1)
            self._set_state("open")
            return

    def read(self) -> Frame | None:
        while not self._stop.is_set():
            if self._source is None:
                self._reopen(first=False)
                continue
            try:
                frame = self._source.read()
            except SourceReadError as exc:
                self.stats.failures += 1
                log.warning("camera %s: stopped delivering frames (%s); reopening", self._source.name, exc)
                self._source.close()
                self._source = None
                self._set_state("reconnecting", str(exc))
                self.sleep(self.backoff.delay(0))
                continue
            if frame is None:
                self._set_state("ended")
                return None
            self._seq += 1
            self.stats.frames += 1
            return replace(frame, seq=self._seq)
        return None

    def stop(self) -> None:
        """Make a blocked ``read`` return None soon (from another thread)."""
        self._stop.set()

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None
        self._set_state("closed")


class LatestFrameReader:
    """Reads a live source on a thread and keeps only the newest frame.

    A slow consumer gets the freshest image instead of an ever-growing backlog; frames it never
    saw are counted in ``stats.dropped``. Use for cameras and streams, not for offline clips.
    """

    def __init__(self, source: ReconnectingSource) -> None:
        self._source = source
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._ended = False
        self._error: BaseException | None = None
        self._last_seq = 0
        self._thread = threading.Thread(target=self._run, name="camera-reader", daemon=True)

    @property
    def stats(self) -> SourceStats:
        return self._source.stats

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                frame = self._source.read()
                with self._cond:
                    if frame is None:
                        self._ended = True
                        self._cond.notify_all()
                        return
                    self._latest = frame
                    self._cond.notify_all()
        except CameraError as exc:
            with self._cond:
                self._error = exc
                self._ended = True
                self._cond.notify_all()

    def get(self, timeout: float = 5.0) -> Frame | None:
        """The newest frame not yet returned; None at the end (re-raises a fatal source error)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._latest is None or self._latest.seq <= self._last_seq:
                if self._ended:
                    if self._error is not None:
                        raise self._error
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SourceReadError(f"no frame from {self._source.name} for {timeout:.0f} s")
                self._cond.wait(remaining)
            frame = self._latest
        if self._last_seq and frame.seq > self._last_seq + 1:
            self._source.stats.dropped += frame.seq - self._last_seq - 1
        self._last_seq = frame.seq
        return frame

    def stop(self) -> None:
        self._source.stop()
        self._thread.join(timeout=5.0)
        self._source.close()
