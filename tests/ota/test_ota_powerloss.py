"""Power loss during updates: ``kill -9`` of the agent or of the launcher at 51 seeded random points
spread across download, verify, install, switch, health check and commit.

State scripts (``<phase>_enter``, as in Mender) log each phase entry, so the test knows which phase
it cuts; each kill lands at a random delay after that entry, inside the script or inside the work
that follows it. After every kill the device must come back running a complete version (every file
of the running slot matches its manifest: old or new, never a mix), and every update must converge
to the desired release and be reported committed.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ota_rig import Device, Probe, Repository, wait_for

from agent.ota import launcher as boot
from fleet.broker import MosquittoBroker

SEED = 20261204
UPDATES = 17
KILL_PLAN = (("downloading", "verifying", "installing"), ("restarting",), ("trial", "commit"))
PHASES = ("downloading", "verifying", "installing", "restarting", "trial", "commit")


def release_files(version: str, rng: random.Random, common: bytes) -> dict[str, bytes]:
    return {
        "apps/common.bin": common,
        "apps/unique.bin": rng.randbytes(600_000),
        "apps/VERSION": version.encode(),
    }


@pytest.fixture
def rig(tmp_path: Path, broker: MosquittoBroker) -> Iterator[tuple[Device, Repository, Probe, Path]]:
    rng = random.Random(SEED)
    common = rng.randbytes(400_000)
    repo = Repository(tmp_path / "repo-work")
    for n in range(UPDATES + 1):
        repo.publish(f"1.0.{n}", release_files(f"1.0.{n}", rng, common))
    (tmp_path / "device").mkdir()
    device = Device(tmp_path / "device", broker, repo)
    scripts, phase_log = tmp_path / "scripts", tmp_path / "phases.log"
    scripts.mkdir()
    for phase in PHASES:
        script = scripts / f"{phase}_enter_00-log"
        script.write_text(
            f'#!/bin/sh\necho "$CITYEDGE_OTA_PHASE $CITYEDGE_OTA_TO" >> {phase_log}\nsleep 0.15\n'
        )
        script.chmod(0o755)
    device.provision("1.0.0")
    # slow enough that a kill can land inside the download; tries high enough that kills during the
    # trial do not use them all up (that path has its own test)
    device.configure(
        state_scripts=str(scripts), rate_limit_bps=1_500_000, max_tries=10, health_timeout_s=30.0
    )
    probe = Probe(broker, device.device_id)
    try:
        yield device, repo, probe, phase_log
    finally:
        probe.close()
        device.stop()
        repo.stop()


def entries(log: Path, phase: str, version: str) -> int:
    if not log.exists():
        return 0
    return sum(1 for line in log.read_text().splitlines() if line == f"{phase} {version}")


def last_phase(log: Path) -> str:
    lines = log.read_text().splitlines() if log.exists() else []
    return lines[-1].split()[0] if lines else "-"


@pytest.mark.slow
def test_kill9_at_random_points_never_leaves_a_mixed_or_dead_device(
    rig: tuple[Device, Repository, Probe, Path],
) -> None:
    device, _repo, probe, phase_log = rig
    rng = random.Random(SEED)
    device.start()
    device.wait_running()
    kills: list[tuple[str, str, str, float]] = []
    actual: list[str] = []
    for n in range(1, UPDATES + 1):
        version = f"1.0.{n}"
        probe.desired(version)
        for group in KILL_PLAN:
            phase = rng.choice(group)
            victim = rng.choice(("agent", "launcher"))
            delay = rng.uniform(0.0, 0.4)
            entered = functools.partial(entries, phase_log, phase, version)
            wait_for(lambda: entered() > 0, 90, f"phase {phase} of {version}; log:\n{device.log_tail()}")  # noqa: B023
            time.sleep(delay)
            (device.kill9_agent if victim == "agent" else device.kill9_launcher)()
            kills.append((version, phase, victim, round(delay, 3)))
            actual.append(last_phase(phase_log))
            if not device.launcher_alive():
                device.start()  # what systemd does after the launcher dies
            info = device.wait_running()
            running_slot = info["ota"]["slot"]
            assert device.slot_is_complete(running_slot) == info["version"], kills[-1]
            committed = boot.committed_slot(device.root)
            assert committed is not None and device.slot_is_complete(committed) in (f"1.0.{n - 1}", version)
        device.wait_version(version)
        probe.wait_event("ota.committed", lambda d, v=version: d["to"] == v, timeout=60)  # type: ignore[misc]
        assert "ota.rolled_back" not in probe.kinds(version), kills
    print("phase entered last before each kill:", {p: actual.count(p) for p in PHASES})
    assert len(kills) >= 50
    assert {phase for _, phase, _, _ in kills} == set(PHASES)
    assert {victim for _, _, victim, _ in kills} == {"agent", "launcher"}
