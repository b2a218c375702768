"""Agent test fixtures (helpers live in agent_helpers.py)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import AgentProc, fast_config

from fleet.broker import MosquittoBroker


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker(tmp_path_factory.mktemp("broker"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., AgentProc]]:
    """Factory: ``start_agent(device_id, broker_url, **sections)`` → a started AgentProc."""
    started: list[AgentProc] = []

    def factory(device_id: str, broker_url: str, data_dir: Path | None = None, **sections: Any) -> AgentProc:
        config = fast_config(device_id, broker_url, data_dir or tmp_path / device_id, **sections)
        agent = AgentProc(tmp_path, config).start()
        started.append(agent)
        return agent

    yield factory
    for agent in started:
        agent.kill9()


@pytest.fixture(autouse=True)
def _no_leaked_env() -> Iterator[None]:
    """Agents started here must not think they run under systemd."""
    saved = {
        k: os.environ.pop(k) for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "INVOCATION_ID") if k in os.environ
    }
    yield
    os.environ.update(saved)
