"""The host driver on a real pty: retries, acknowledgements, de-duplication, clock mapping."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from iob_helpers import ScriptedBoard, wait_for

from hw.iobus import BoardEvent, BoardRefused, BoardUnavailable, ClockMap, SerialIoBoard, SimulatedIoBoard
from hw.iobus_frame import Frame, FrameType


@pytest.fixture
def board() -> Iterator[ScriptedBoard]:
    b = ScriptedBoard()
    yield b
    b.close()


@pytest.fixture
def host(board: ScriptedBoard) -> Iterator[tuple[SerialIoBoard, list[BoardEvent]]]:
    events: list[BoardEvent] = []
    driver = SerialIoBoard(board.path, retry_s=0.2)
    driver.start(events.append)
    assert driver.wait_connected(5)
    yield driver, events
    driver.stop()


def test_request_round_trip(host: tuple[SerialIoBoard, list[BoardEvent]]) -> None:
    driver, _ = host
    assert driver.request("hello")["fw"] == "9.9.9"
    assert driver.request("status")["temp_c"] == 30.5


def test_lost_request_is_resent_with_the_same_id(
    board: ScriptedBoard, host: tuple[SerialIoBoard, list[BoardEvent]]
) -> None:
    driver, _ = host
    board.drop_next = 2
    assert driver.request("status")["ok"] is True
    ids = [f.msgid for f in board.requests]
    assert len(ids) == 3 and len(set(ids)) == 1
    assert driver.stats()["retries"] == 2


def test_board_that_never_answers_gives_a_sentence(
    board: ScriptedBoard, host: tuple[SerialIoBoard, list[BoardEvent]]
) -> None:
    driver, _ = host
    board.drop_next = 10
    with pytest.raises(BoardUnavailable, match="did not answer 'status'"):
        driver.request("status")


def test_refusal_carries_the_boards_sentence(host: tuple[SerialIoBoard, list[BoardEvent]]) -> None:
    driver, _ = host
    with pytest.raises(BoardRefused, match="unknown operation 'explode'"):
        driver.request("explode")


def test_events_are_acked_and_delivered_once(
    board: ScriptedBoard, host: tuple[SerialIoBoard, list[BoardEvent]]
) -> None:
    driver, events = host
    tamper = Frame(FrameType.EVT, 41, {"ev": "tamper", "t": 5000, "state": "open"})
    board.send(tamper)
    board.send_raw(b"\x13\x37garbage\x00")  # noise between frames
    board.send(tamper)  # the board did not see the ACK and resends
    wait_for(lambda: board.acks.count(41) == 2, what="two ACKs")
    assert [e.kind for e in events] == ["tamper"]
    assert events[0].data == {"state": "open"} and events[0].board_t == 5000
    assert driver.stats()["duplicate_events"] == 1


def test_event_time_is_mapped_through_heartbeats(
    board: ScriptedBoard, host: tuple[SerialIoBoard, list[BoardEvent]]
) -> None:
    driver, events = host
    board.fixed_ticks = 10_000
    driver.heartbeat()
    offset = driver.clock_map.offset
    assert offset is not None
    board.send(Frame(FrameType.EVT, 7, {"ev": "phase", "t": 12_000, "phase": "red"}))
    wait_for(lambda: len(events) == 1, what="the phase event")
    assert events[0].host_ts == pytest.approx(offset + 12.0)


def test_driver_reconnects_when_the_port_reappears() -> None:
    events: list[BoardEvent] = []
    driver = SerialIoBoard("/dev/does-not-exist-iob", reconnect_min_s=0.05, reconnect_max_s=0.1)
    driver.start(events.append)
    try:
        wait_for(lambda: driver.stats()["last_error"] is not None, what="an open error")
        assert "is not there" in str(driver.stats()["last_error"])
        with pytest.raises(BoardUnavailable):
            driver.request("hello")
    finally:
        driver.stop()


def test_clock_map_handles_the_30_bit_wrap() -> None:
    cm = ClockMap()
    period = 1 << 30
    cm.add(1000.0, 1000.0, period - 500)
    assert cm.to_host(period - 500) == pytest.approx(1000.0)
    cm.add(1001.0, 1001.0, 500)  # wrapped: 1 s later
    assert cm.to_host(500) == pytest.approx(1001.0)
    assert cm.to_host(period - 100) == pytest.approx(1000.4)  # an event from just before the wrap


def test_clock_map_notices_a_board_restart() -> None:
    cm = ClockMap()
    cm.add(1000.0, 1000.0, 3_600_000)
    cm.add(2000.0, 2000.0, 2_000)  # board rebooted: its clock went back
    assert cm.to_host(3_000) == pytest.approx(2001.0)


def test_simulated_board_raises_the_same_events() -> None:
    events: list[BoardEvent] = []
    sim = SimulatedIoBoard()
    sim.start(events.append)
    sim.set_inputs(tamper="open")
    sim.set_inputs(temp_c=70.0)
    sim.set_inputs(temp_c=71.0)  # still hot: no second overheat
    sim.set_inputs(battery_v=10.0)
    assert [e.kind for e in events] == ["tamper", "overheat", "power"]
    assert sim.request("status")["tamper_latched"] is True
    sim.set_inputs(tamper="closed")
    assert sim.request("ack_tamper")["tamper_latched"] is False
