"""Flashing with the real tools (mpy-cross, mpremote) onto the SIL board's flash through its USB
REPL: a complete flash switches version; a flash cut half-way (board killed during the copy)
leaves the old firmware booting, and the next flash completes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from iob_helpers import wait_for
from typer.testing import CliRunner

from cityedge.cli import build_app
from hil.iobsil import SilBoard
from hw.iobus import BoardUnavailable, SerialIoBoard
from provisioning.firmware import FirmwareError, build_firmware, flash_firmware


@pytest.fixture
def sil(tmp_path: Path) -> Iterator[SilBoard]:
    with SilBoard(tmp_path / "board", usb=True) as board:
        yield board


def board_version(sil: SilBoard) -> str:
    driver = SerialIoBoard(str(sil.link))
    driver.start(lambda _e: None)
    try:
        assert driver.wait_connected(10)
        return str(driver.request("hello")["fw"])
    finally:
        driver.stop()


def reachable_version(sil: SilBoard, version: str) -> bool:
    try:
        return board_version(sil) == version
    except BoardUnavailable:
        return False  # rebooting


@pytest.mark.timeout(240)
def test_flash_cut_half_way_keeps_the_old_firmware_and_the_next_flash_completes(
    tmp_path: Path, sil: SilBoard
) -> None:
    old = sil.installed_version()
    assert old is not None and board_version(sil) == old
    build = tmp_path / "build"
    build_firmware(build, version="7.7.7")

    copied: list[str] = []

    def cut_power(message: str) -> None:
        if message.startswith("copied"):
            copied.append(message)
            if len(copied) == 6:
                sil.kill()  # the board loses power in the middle of the copy

    with pytest.raises(FirmwareError):
        flash_firmware(build, sil.usb_url, progress=cut_power)
    assert (sil.flash / "next").is_dir() and not (sil.flash / "next" / "manifest.json").exists()
    sil.start()  # power back
    assert board_version(sil) == old and sil.installed_version() == old

    result = CliRunner().invoke(
        build_app(), ["firmware", "flash", "--port", sil.usb_url, "--build", str(build), "--json"]
    )
    assert result.exit_code == 0, result.output
    wait_for(lambda: reachable_version(sil, "7.7.7"), 30, "the board on the new firmware")
    assert sil.installed_version() == "7.7.7" and not (sil.flash / "next").exists()
    status = CliRunner().invoke(build_app(), ["firmware", "status", "--port", sil.usb_url, "--json"])
    assert status.exit_code == 0 and '"version": "7.7.7"' in status.output, status.output


def test_a_damaged_copy_never_boots(tmp_path: Path, sil: SilBoard) -> None:
    """A complete-looking next/ whose file does not match its manifest is ignored by boot.py."""
    old = sil.installed_version()
    build = tmp_path / "build"
    build_firmware(build, version="8.8.8")
    next_dir = sil.flash / "next"
    import shutil

    shutil.copytree(build, next_dir)
    (next_dir / "main.py").write_text("raise SystemExit('damaged')\n")
    sil.restart()
    assert board_version(sil) == old and sil.installed_version() == old
