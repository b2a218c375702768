"""Shared fixtures: a real mosquitto per test (or per module), started on a free port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from fleet.broker import MosquittoBroker

# Wall-clock deadlines on examples fail on a busy machine (a first example pays for imports and
# compiled patterns); the properties themselves are what the tests check.
settings.register_profile("cityedge", deadline=None)
settings.load_profile("cityedge")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A private mosquitto with its own config and persistence, stopped after the test."""
    b = MosquittoBroker(tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()
