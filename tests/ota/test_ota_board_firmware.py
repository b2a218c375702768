"""The I/O board's firmware rides in the release: the real launcher and agent, the software-in-the-loop
board (real MicroPython, flashed with the real mpremote over its USB REPL), a real TUF repository.

A release carrying a new firmware flashes the board after the agent's own health gate and commits
only when the board answers running it; a release whose firmware does not come up as promised is
rolled back, and the old release's agent puts the old firmware back on the board.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ota_rig import Device, Probe, Repository, wait_for

from agent.cabinet import CabinetMonitor
from agent.config import IobusSection
from agent.errors import LocalApiError
from agent.localapi import LocalApiClient
from agent.ota.boardfw import BoardFirmware, plan
from fleet.broker import MosquittoBroker
from hil.iobsil import SilBoard
from hw.iobflash import SimulatedFlasher
from hw.iobus import SimulatedIoBoard
from provisioning.firmware import build_firmware


def firmware(workdir: Path, version: str, *, claims: str | None = None) -> Path:
    """A firmware build of ``version``; ``claims``: a manifest that names another version than the
    code reports (a mislabelled build)."""
    out = workdir / f"fw-{version}"
    build_firmware(out, version=version)
    if claims is not None:
        manifest = json.loads((out / "manifest.json").read_text())
        (out / "manifest.json").write_text(json.dumps({**manifest, "version": claims}))
    return out


def board_fw(device: Device) -> Any:
    try:
        return LocalApiClient(device.data, timeout=5).call("iobus_status").get("firmware")
    except (LocalApiError, OSError, ValueError):
        return None


def test_plan() -> None:
    assert not plan(None, "1.0.0", True).flash  # the release carries no firmware
    assert not plan("1.0.0", "1.0.0", True).flash
    assert plan("1.1.0", "1.0.0", True).flash and plan("1.1.0", None, True).flash
    cannot = plan("1.1.0", "1.0.0", False)
    assert not cannot.flash and cannot.reason is not None and "usb_port" in cannot.reason


def test_simulated_board_is_flashed_and_the_monitor_sees_the_restart(tmp_path: Path) -> None:
    board = SimulatedIoBoard(firmware="1.0.0")
    config = IobusSection(port="simulated", heartbeat_s=0.05)
    metrics: list[dict[str, Any]] = []
    monitor = CabinetMonitor(board, lambda: config, lambda _k, _d: None, metrics.append, lambda _p: None)
    firmware = BoardFirmware(SimulatedFlasher(board), monitor.firmware, monitor.wait_firmware, lambda: 10.0)
    slot = tmp_path / "slot"
    stop = threading.Event()
    assert firmware.ensure(slot, stop) is None and firmware.trial_time_s(slot) == 0.0  # no firmware/
    build = slot / "firmware"
    build.mkdir(parents=True)
    (build / "main.py").write_bytes(b"run()")
    digest = "0" * 64
    (build / "manifest.json").write_text(json.dumps({"version": "1.1.0", "files": {"main.py": digest}}))
    monitor.start()
    try:
        assert firmware.trial_time_s(slot) > 10.0
        assert firmware.ensure(slot, stop) is None
        assert board.firmware == "1.1.0" and board.boot == 2
        assert monitor.state()["firmware"] == "1.1.0"
        assert firmware.ensure(slot, stop) is None and board.boot == 2  # already there: not again
        (build / "manifest.json").write_text("{")
        assert "unusable" in (firmware.ensure(slot, stop) or "")
    finally:
        monitor.stop()


@pytest.fixture
def sil(tmp_path: Path) -> Iterator[SilBoard]:
    with SilBoard(tmp_path / "board", usb=True) as board:
        yield board


@pytest.mark.timeout(420)
def test_release_firmware_is_flashed_after_the_gate_and_rolled_back_with_the_release(
    tmp_path: Path, broker: MosquittoBroker, sil: SilBoard
) -> None:
    factory = sil.installed_version()
    assert factory is not None
    repo = Repository(tmp_path / "repo-work")
    device = Device(tmp_path / "device", broker, repo)
    (tmp_path / "device").mkdir()
    device.config["iobus"] = {"port": str(sil.link), "usb_port": sil.usb_url, "heartbeat_s": 0.2,
                              "firmware_timeout_s": 60.0}  # fmt: skip
    probe: Probe | None = None
    try:
        repo.publish("1.0.0", {"apps/VERSION": b"1.0.0"}, firmware=firmware(tmp_path, factory))
        device.provision("1.0.0")
        device.start()
        device.wait_running()
        probe = Probe(broker, device.device_id)
        wait_for(lambda: board_fw(device) == factory, 60, "the board introduced to the agent")
        boots = sil.boots

        # 1.1.0 carries firmware 1.1.0: flashed during the trial, then committed.
        repo.publish("1.1.0", {"apps/VERSION": b"1.1.0"}, firmware=firmware(tmp_path, "1.1.0"))
        probe.desired("1.1.0")
        probe.wait_event("ota.committed", lambda d: d.get("to") == "1.1.0", timeout=240)
        assert sil.installed_version() == "1.1.0" and sil.boots == boots + 1
        wait_for(lambda: board_fw(device) == "1.1.0", 60, "the agent to see firmware 1.1.0")
        device.wait_version("1.1.0")

        # 1.2.0's firmware says 1.2.0 but runs as 1.2.0-rc: the trial fails, the release is rolled
        # back, and the agent of 1.1.0 flashes 1.1.0 again.
        bad = firmware(tmp_path, "1.2.0-rc", claims="1.2.0")
        repo.publish("1.2.0", {"apps/VERSION": b"1.2.0"}, firmware=bad)
        probe.desired("1.2.0")
        rolled = probe.wait_event("ota.rolled_back", lambda d: d.get("to") == "1.2.0", timeout=300)
        assert "runs firmware 1.2.0-rc, not 1.2.0" in rolled["data"]["reason"]
        wait_for(lambda: board_fw(device) == "1.1.0", 180, "firmware 1.1.0 back on the board")
        assert sil.installed_version() == "1.1.0"
        assert device.wait_running()["version"] == "1.1.0"
        assert "ota.committed" not in probe.kinds("1.2.0")
    finally:
        if probe is not None:
            probe.close()
        device.stop()
        repo.stop()
