"""``cityedge iob sim`` runs a SIL board in the foreground; ``cityedge iob set`` toggles its inputs:
the host driver on the printed port sees the change as a board event."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from iob_helpers import wait_for
from typer.testing import CliRunner

from cityedge.cli import build_app
from hw.iobus import BoardEvent, SerialIoBoard

CITYEDGE = str(Path(sys.executable).with_name("cityedge"))


@pytest.mark.timeout(120)
def test_iob_sim_and_set_drive_a_board_from_the_command_line(tmp_path: Path) -> None:
    state = tmp_path / "board"
    log = (tmp_path / "sim.out").open("wb")
    proc = subprocess.Popen(
        [CITYEDGE, "iob", "sim", "--state-dir", str(state), "--no-usb"], stdout=log, stderr=subprocess.STDOUT
    )
    events: list[BoardEvent] = []
    driver = SerialIoBoard(str(state / "port"))
    try:
        wait_for(lambda: "running; UART" in (tmp_path / "sim.out").read_text(), 60, "the board to start")
        assert str(state / "port") in (tmp_path / "sim.out").read_text()
        driver.start(events.append)
        assert driver.wait_connected(10)
        assert driver.request("status")["tamper"] == "closed"

        done = CliRunner().invoke(
            build_app(), ["iob", "set", "--state-dir", str(state), "tamper=open", "temp_c=30"]
        )
        assert done.exit_code == 0, done.output
        wait_for(lambda: any(e.kind == "tamper" for e in events), 10, "the tamper event")
        assert [e.data["state"] for e in events if e.kind == "tamper"] == ["open"]
        status = driver.request("status")
        assert status["tamper"] == "open" and status["temp_c"] == 30.0

        bad = CliRunner().invoke(build_app(), ["iob", "set", "--state-dir", str(state), "door=open"])
        assert bad.exit_code == 2
    finally:
        driver.stop()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
    assert proc.returncode == 0
