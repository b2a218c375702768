"""Shared fixtures: a real mosquitto per test (or per module), started on a free port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.broker import MosquittoBroker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A private mosquitto with its own config and persistence, stopped after the test."""
    b = MosquittoBroker(tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()
