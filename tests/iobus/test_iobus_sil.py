"""Software in the loop: the real firmware (MicroPython unix port, booted from its flash) and the
real host driver over a pty: requests, events, the host watchdog, the fan, the signal input."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from iob_helpers import wait_for

from hil.iobsil import SilBoard
from hw.iobus import BoardEvent, BoardRefused, SerialIoBoard


@pytest.fixture
def sil(tmp_path: Path) -> Iterator[SilBoard]:
    with SilBoard(tmp_path / "board") as board:
        yield board


@pytest.fixture
def host(sil: SilBoard) -> Iterator[tuple[SerialIoBoard, list[BoardEvent]]]:
    events: list[BoardEvent] = []
    driver = SerialIoBoard(str(sil.link))
    driver.start(events.append)
    assert driver.wait_connected(10)
    yield driver, events
    driver.stop()


def kinds(events: list[BoardEvent], kind: str) -> list[BoardEvent]:
    return [e for e in events if e.kind == kind]


def test_hello_and_status_round_trip(sil: SilBoard, host: tuple[SerialIoBoard, list[BoardEvent]]) -> None:
    driver, _ = host
    hello = driver.request("hello")
    assert hello["fw"] == sil.installed_version() and hello["proto"] == 1 and hello["board"] == "unix"
    assert hello["host_reset"] is None
    sil.set_inputs(temp_c=27.5, rh=61.0, battery_v=12.9)
    wait_for(lambda: driver.request("status")["temp_c"] == 27.5, what="a fresh reading")
    status = driver.request("status")
    assert status["rh"] == 61.0 and status["battery_v"] == 12.9 and status["sensor_ok"] is True
    assert status["tamper"] == "closed" and status["phase"] == "green"
    with pytest.raises(BoardRefused, match="unknown setting"):
        driver.request("config", wd_timeout=5)


def test_tamper_reaches_the_host_once_and_stays_latched(
    sil: SilBoard, host: tuple[SerialIoBoard, list[BoardEvent]]
) -> None:
    driver, events = host
    sil.set_inputs(tamper="open")
    wait_for(lambda: bool(kinds(events, "tamper")), what="the tamper event")
    assert kinds(events, "tamper")[0].data == {"state": "open"}
    sil.set_inputs(tamper="closed")
    wait_for(lambda: len(kinds(events, "tamper")) == 2, what="the door closed")
    assert driver.request("status")["tamper_latched"] is True
    assert driver.request("ack_tamper")["tamper_latched"] is False
    assert driver.stats()["events"] == len(events)  # each delivered once though resent until acked


def test_heartbeat_loss_power_cycles_the_host_and_says_why_after(
    sil: SilBoard, host: tuple[SerialIoBoard, list[BoardEvent]]
) -> None:
    driver, _ = host
    driver.request("config", wd_timeout_s=1, wd_off_ms=300, boot_grace_s=30)
    driver.heartbeat()
    wait_for(lambda: sil.outputs().get("relay_cycles") == 1, what="the relay to cut the host's power")
    wait_for(lambda: sil.outputs().get("relay") is True, what="the power back on")
    reset = driver.request("hello")["host_reset"]  # what the host asks at its next boot
    assert reset["cause"] == "heartbeat_lost" and reset["count"] == 1 and reset["silence_s"] >= 1
    sil.restart()  # the board itself power-cycles: the cause is in its flash
    assert driver.request("hello")["host_reset"]["cause"] == "heartbeat_lost"
    driver.request("clear_reset")
    assert driver.request("hello")["host_reset"] is None


def test_overheat_turns_the_fan_on_and_is_raised_once(
    sil: SilBoard, host: tuple[SerialIoBoard, list[BoardEvent]]
) -> None:
    driver, events = host
    sil.set_inputs(temp_c=70.0)
    wait_for(lambda: sil.outputs().get("fan") is True, what="the fan on")
    wait_for(lambda: bool(kinds(events, "overheat")), what="the overheat event")
    readings = driver.request("status")["t"]
    wait_for(lambda: driver.request("status")["t"] - readings > 3000, what="three more readings")
    assert len(kinds(events, "overheat")) == 1
    sil.set_inputs(temp_c=35.0)
    wait_for(lambda: bool(kinds(events, "overheat_cleared")), what="cleared")
    wait_for(lambda: sil.outputs().get("fan") is False, what="the fan off")


def test_signal_phase_change_carries_the_board_time(
    sil: SilBoard, host: tuple[SerialIoBoard, list[BoardEvent]]
) -> None:
    driver, events = host
    driver.heartbeat()
    before = driver.heartbeat()["t"]
    sil.set_inputs(phase="red")
    wait_for(lambda: bool(kinds(events, "phase")), what="the phase event")
    phase = kinds(events, "phase")[0]
    assert phase.data == {"phase": "red"} and phase.board_t is not None and phase.board_t >= before
    assert phase.host_ts is not None
