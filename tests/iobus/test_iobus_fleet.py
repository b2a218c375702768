"""The whole chain: a cabinet door opened at the SIL board (real firmware) → the real agent →
mosquitto → the fleet's store, with the board-timestamped time; the board's firmware version in
the device's reported state; overheat raised once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from agent_helpers import AgentProc, fast_config
from iob_helpers import wait_for

from fleet.broker import MosquittoBroker
from fleet.config import FleetConfig
from fleet.service import FleetService
from hil.iobsil import SilBoard

DEVICE = "kiosk-iob-fleet-1"


@pytest.mark.timeout(180)
def test_tamper_at_the_board_reaches_the_fleet(tmp_path: Path, module_broker: MosquittoBroker) -> None:
    config = FleetConfig(
        broker_url=module_broker.url,
        db_url=f"sqlite:///{tmp_path / 'fleet.db'}",
        worker_id="fleet-iob-test",
        retained_sync_s=0,
        batch_interval_s=0.02,
    )
    fleet = FleetService(config).start()
    board = SilBoard(tmp_path / "board").start()
    agent = AgentProc(
        tmp_path,
        fast_config(
            DEVICE, module_broker.url, tmp_path / "agent", iobus={"port": str(board.link), "heartbeat_s": 0.2}
        ),
    ).start()
    try:
        agent.wait_status(lambda s: bool(s["iobus"] and s["iobus"]["connected"]))

        def kinds() -> list[str]:
            return [str(r["kind"]) for r in fleet.store.events(DEVICE)]

        board.set_inputs(tamper="open")
        wait_for(lambda: "cabinet.tamper" in kinds(), 30, "cabinet.tamper in the fleet's store")
        event = next(r for r in fleet.store.events(DEVICE) if r["kind"] == "cabinet.tamper")
        data: dict[str, Any] = event["data"] if isinstance(event["data"], dict) else {}
        assert data.get("state") == "open" and "at" in data and "board_t_ms" in data

        board.set_inputs(temp_c=72.0)
        wait_for(lambda: "cabinet.overheat" in kinds(), 30, "cabinet.overheat in the fleet's store")
        wait_for(lambda: board.outputs().get("fan") is True, 10, "the fan on")
        status = agent.wait_status(lambda s: s["iobus"]["status"].get("temp_c") == 72.0)
        assert status["iobus"]["firmware"] == board.installed_version()
        assert kinds().count("cabinet.overheat") == 1
    finally:
        agent.terminate()
        board.stop()
        fleet.stop()
