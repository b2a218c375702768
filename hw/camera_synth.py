"""A synthetic camera: frames rendered by a callable (e.g. ``agent.camera.scenegen``).

Used by tests, benchmarks and the demo where no camera exists. ``fail_after`` makes the simulated
camera die after that many frames (once per ``open``) so supervision can be exercised with the same
interface as a real device; ``fail_opens`` makes the next N ``open`` calls fail. Wall-clock times
are ``start_wall + t`` so a clip replays deterministically (``start_wall`` defaults to the time of
the first ``open``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from hw.camera import Frame, SourceOpenError, SourceReadError

Renderer = Callable[[int], npt.NDArray[np.uint8]]


class SyntheticSource:
    """Renders frame ``i`` with ``render(i)`` for ``frames`` frames (None = forever) at ``fps``."""

    def __init__(
        self,
        render: Renderer,
        *,
        frames: int | None = None,
        fps: float = 10.0,
        realtime: bool = False,
        fail_after: int | None = None,
        fail_opens: int = 0,
        name: str = "synthetic",
        start_wall: float | None = None,
    ) -> None:
        self.name = name
        self.render = render
        self.frames = frames
        self.fps = fps
        self.realtime = realtime
        self.fail_after = fail_after
        self.fail_opens = fail_opens
        self.position = 0
        self.start_wall = start_wall
        self._open = False
        self._since_open = 0
        self._started = 0.0

    def open(self) -> None:
        if self.fail_opens > 0:
            self.fail_opens -= 1
            raise SourceOpenError(f"{self.name}: simulated camera not present")
        self._open = True
        self._since_open = 0
        self._started = time.monotonic() - self.position / self.fps
        if self.start_wall is None:
            self.start_wall = time.time()

    def read(self) -> Frame | None:
        if not self._open:
            raise SourceReadError(f"{self.name} is not open")
        if self.frames is not None and self.position >= self.frames:
            return None
        if self.fail_after is not None and self._since_open >= self.fail_after:
            self._open = False
            raise SourceReadError(f"{self.name}: simulated camera stopped delivering frames")
        index = self.position
        t = index / self.fps
        if self.realtime:
            delay = self._started + t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        image = self.render(index)
        self.position += 1
        self._since_open += 1
        start = self.start_wall if self.start_wall is not None else 0.0
        return Frame(image=image, seq=index + 1, t=t, wall=start + t)

    def close(self) -> None:
        self._open = False
