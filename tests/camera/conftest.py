"""Camera test fixtures: the real model (verified through the registry), the real clip, scenes."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.camera.detector import YoloxDetector
from models.registry import ModelError, Registry

CLIP = Path(__file__).resolve().parents[3] / "shared" / "traffic" / "car-detection.mp4"


@pytest.fixture(scope="session")
def registry() -> Registry:
    return Registry.load()


@pytest.fixture(scope="session")
def detector(registry: Registry) -> YoloxDetector:
    """yolox_nano on the CPU, one thread (the test machine is shared)."""
    try:
        path = registry.path_for("yolox_nano")
    except ModelError as exc:
        pytest.skip(f"yolox_nano not available here: {exc}")
    spec = registry.spec("yolox_nano")
    return YoloxDetector(path, spec.input, spec.labels, threads=1)


@pytest.fixture(scope="session")
def clip_path() -> Path:
    if not CLIP.is_file():
        pytest.skip(f"real footage {CLIP} is not present on this machine")
    return CLIP
