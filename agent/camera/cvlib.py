"""OpenCV, imported on first use and typed as ``Any`` (the hardware/cv2 boundary for mypy)."""

from __future__ import annotations

import importlib
from typing import Any


def cv2() -> Any:
    """The ``cv2`` module (imported lazily: importing the camera package stays cheap)."""
    return importlib.import_module("cv2")
