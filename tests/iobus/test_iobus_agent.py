"""A real agent with a board on a pty: board events become contract events on the broker,
sensor readings become telemetry, the firmware version is reported, the watchdog's reset cause
is sent once, and the camera role can read the signal phase through the local API."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import AgentProc, Probe, fast_config
from iob_helpers import ScriptedBoard, wait_for

from agent.camera.config import CameraConfig, LineConfig, RedLightConfig, SignalConfig
from agent.camera.geometry import anchor_point
from agent.camera.kalman import KalmanBox
from agent.camera.rules import RuleEngine
from agent.camera.signal import build_signal
from agent.camera.tracker import Track
from fleet.broker import MosquittoBroker
from hw.iobus_frame import Frame, FrameType


@pytest.fixture
def board() -> Iterator[ScriptedBoard]:
    b = ScriptedBoard()
    b.handlers["hello"] = lambda _r: {
        "ok": True,
        "fw": "1.2.3",
        "proto": 1,
        "board": "scripted",
        "host_reset": {"cause": "heartbeat_lost", "silence_s": 61, "count": 1},
    }
    b.handlers["status"] = lambda _r: {
        "ok": True,
        "temp_c": 41.5,
        "rh": 60.0,
        "fan": False,
        "tamper": "closed",
        "battery_v": 13.1,
        "on_battery": False,
        "phase": "green",
    }
    b.handlers["config"] = lambda r: {"ok": True, "config": r}
    b.handlers["clear_reset"] = lambda _r: {"ok": True}
    yield b
    b.close()


def test_board_events_reach_the_broker_through_the_agent(
    tmp_path: Path, module_broker: MosquittoBroker, board: ScriptedBoard
) -> None:
    probe = Probe(module_broker, "kiosk-iob-1")
    config = fast_config(
        "kiosk-iob-1",
        module_broker.url,
        tmp_path / "agent",
        iobus={"port": board.path, "heartbeat_s": 0.1, "status_s": 0.2, "watchdog_timeout_s": 30},
    )
    agent = AgentProc(tmp_path, config).start()
    try:
        status = agent.wait_status(lambda s: bool(s["iobus"] and s["iobus"]["connected"]))
        assert status["iobus"]["firmware"] == "1.2.3"
        # The thresholds were pushed to the board, the reset cause reported once and cleared.
        pushed = [f.payload for f in board.requests if f.payload.get("op") == "config"]
        assert pushed and pushed[0]["wd_timeout_s"] == 30
        reset = probe.wait_for("events/watchdog.reset")
        assert reset["data"]["cause"] == "heartbeat_lost" and reset["data"]["silence_s"] == 61
        wait_for(lambda: any(f.payload.get("op") == "clear_reset" for f in board.requests), what="clear")
        reported = probe.wait_for("shadow/reported", lambda m: "iobus" in m.get("peripherals", {}))
        assert reported["peripherals"]["iobus"]["firmware"] == "1.2.3"
        tele = probe.wait_for("telemetry", lambda m: m.get("cabinet_temp_c") is not None)
        assert tele["cabinet_temp_c"] == 41.5 and tele["battery_v"] == 13.1

        board.send(Frame(FrameType.EVT, 5, {"ev": "tamper", "t": board.ticks + 5, "state": "open"}))
        tamper = probe.wait_for("events/cabinet.tamper")
        assert tamper["data"]["state"] == "open" and tamper["kind"] == "cabinet.tamper"
        assert "at" in tamper["data"]  # mapped to the host clock through the heartbeats
        board.send(
            Frame(FrameType.EVT, 6, {"ev": "power", "t": board.ticks, "on_battery": True, "battery_v": 11.2})
        )
        assert probe.wait_for("events/power.on_battery")["data"]["battery_v"] == 11.2
        red_at = board.ticks
        board.send(Frame(FrameType.EVT, 7, {"ev": "phase", "t": red_at, "phase": "red"}))
        phase = probe.wait_for("events/signal.phase")
        assert phase["data"]["phase"] == "red" and phase["data"]["board_t_ms"] == red_at
        answer = agent.client.call("signal_phase")
        assert answer["phase"] == "red" and answer["changes"][-1][1] == "red"
        assert _red_light_fires(lambda: dict(agent.client.call("signal_phase")))
        # Every event was acknowledged to the board.
        wait_for(lambda: {5, 6, 7} <= set(board.acks), what="acks")
        assert len(probe.on("events/cabinet.tamper")) == 1
    finally:
        agent.terminate()
        probe.close()
    # A deliberate stop tells the board not to power-cycle the host.
    assert any(f.payload.get("op") == "wd_disarm" for f in board.requests)


def _red_light_fires(read: Callable[[], dict[str, Any]]) -> bool:
    """Drive one track across a stop line with the camera's rule engine reading the board phase."""
    config = CameraConfig(
        lines=[LineConfig(id="stop", points=((0, 100), (200, 100)))],
        signals={"main": SignalConfig(kind="board")},
        red_light=[RedLightConfig(id="rl", line="stop", direction="left_to_right", signal="main")],
    )
    engine = RuleEngine(config, {"main": build_signal(config.signals["main"], board=read)})
    box = (0.0, 0.0, 10.0, 10.0)
    track = Track(id=1, kf=KalmanBox(box), score=0.9, born_t=0.0, state="active", last_box=box)
    fired = []
    now = time.time()
    for i in range(20):
        x, y = 50.0, 60.0 + 4 * i
        track.last_box = (x - 5, y - 5, x + 5, y + 5)
        track.updated = True
        track.history.append((i / 10, anchor_point(track.last_box, "center")))
        fired += engine.process([track], i / 10, now + i / 10, i)[1]
    return len(fired) == 1 and fired[0].details["phase"] == "red"


def test_agent_runs_on_when_the_board_is_missing(tmp_path: Path, module_broker: MosquittoBroker) -> None:
    config = fast_config(
        "kiosk-iob-2",
        module_broker.url,
        tmp_path / "agent",
        iobus={"port": "/dev/no-such-board", "heartbeat_s": 0.1},
    )
    agent = AgentProc(tmp_path, config).start()
    try:
        status = agent.wait_status(lambda s: bool(s["iobus"] and s["iobus"]["last_error"]))
        assert (
            "is not there" in json.dumps(status["iobus"]) or "did not answer" in status["iobus"]["last_error"]
        )
        agent.wait_connected()
    finally:
        assert agent.terminate() == 0
