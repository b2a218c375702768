"""End to end on a real device stack: launcher + agent + mosquitto + the fleet's TUF repository.

An update commits and is reported; releases that crash at start, cannot reach the broker or whose
role app is unhealthy are rolled back with the reason; a commit is never undone because its report
could not be sent; tampered targets, a full disk and a downgrade fail cleanly with the old version
running; the update lock and the ``update`` command.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from ota_rig import Device, Probe, Repository, wait_for

from agent.localapi import LocalApiClient
from agent.ota import launcher as boot
from fleet.broker import MosquittoBroker

RNG = random.Random(8)
COMMON = RNG.randbytes(300_000)


def files(version: str, size: int = 200_000) -> dict[str, bytes]:
    return {"apps/common.bin": COMMON, f"apps/{version}.bin": random.Random(version).randbytes(size),
            "apps/VERSION": version.encode()}  # fmt: skip


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    r = Repository(tmp_path / "repo-work")
    r.publish("1.0.0", files("1.0.0"))
    yield r
    r.stop()


@pytest.fixture
def device(tmp_path: Path, broker: MosquittoBroker, repo: Repository) -> Iterator[Device]:
    d = Device(tmp_path / "device", broker, repo)
    (tmp_path / "device").mkdir()
    d.provision("1.0.0")
    yield d
    d.stop()


@pytest.fixture
def probe(broker: MosquittoBroker, device: Device) -> Iterator[Probe]:
    p = Probe(broker, device.device_id)
    yield p
    p.close()


def test_update_commits_moves_only_new_files_and_is_reported(
    device: Device, repo: Repository, probe: Probe
) -> None:
    repo.publish("1.1.0", files("1.1.0"))
    device.start()
    info = device.wait_running()
    assert info["version"] == "1.0.0" and info["ota"]["slot"] == "a"
    probe.desired("1.1.0")
    info = device.wait_version("1.1.0")
    assert info["ota"]["slot"] == "b" and boot.committed_slot(device.root) == "b"
    probe.wait_event("ota.committed", lambda d: d["to"] == "1.1.0" and d["from"] == "1.0.0")
    assert probe.kinds("1.1.0")[:6] == [
        "ota.downloading", "ota.verifying", "ota.installing", "ota.restarting",
        "ota.healthy", "ota.committed",
    ]  # fmt: skip
    downloading = probe.wait_event("ota.downloading", lambda d: d["to"] == "1.1.0")["data"]
    # content addressing: the common file and VERSION's neighbours came from slot a, not the network
    assert downloading["bytes_total"] == 200_000 + len(b"1.1.0")
    assert device.slot_is_complete("b") == "1.1.0"
    assert device.slot_is_complete("a") == "1.0.0"  # the old version stays for a rollback
    # the device marks the outcome reported right after it hands the event over, so it may lag here
    wait_for(lambda: bool((boot.read_boot(device.root)["last"] or {}).get("reported")), 30, "the report")
    state = boot.read_boot(device.root)
    assert state["pending"] is None and state["last"]["outcome"] == "committed"


@pytest.mark.parametrize(
    ("case", "manifest", "reason"),
    [
        (
            "crashes",
            {"entry": ["{python}", "-c", "raise SystemExit(3)"]},
            "did not become healthy in 3 start(s)",
        ),
        (
            "no broker",
            {"entry": ["{python}", "-m", "agent", "run", "--broker", "mqtt://127.0.0.1:9"]},
            "could not connect to the city broker",
        ),
        (
            "role app unhealthy",
            {"health_check": ["{python}", "-c", "print('kiosk screen not answering'); raise SystemExit(1)"]},
            "kiosk screen not answering",
        ),
    ],
)
def test_unhealthy_releases_are_rolled_back_with_the_reason(
    device: Device, repo: Repository, probe: Probe, case: str, manifest: dict[str, list[str]], reason: str
) -> None:
    repo.publish("1.1.0", files("1.1.0"), **manifest)
    device.configure(health_timeout_s=4.0)
    device.start()
    device.wait_running()
    probe.desired("1.1.0")
    event = probe.wait_event("ota.rolled_back", timeout=90)
    assert reason in event["data"]["reason"], event
    assert event["data"]["from"] == "1.0.0" and event["data"]["to"] == "1.1.0"
    info = device.wait_running()
    assert info["version"] == "1.0.0" and boot.committed_slot(device.root) == "a"
    assert "ota.committed" not in probe.kinds("1.1.0")
    # the rolled-back version is not tried again by itself ...
    status = LocalApiClient(device.data).call("ota_status")
    assert status["state"]["blocked"]["version"] == "1.1.0"
    # ... but a newer release is
    repo.publish("1.2.0", files("1.2.0"))
    probe.desired("1.2.0")
    device.wait_version("1.2.0")


def test_a_commit_is_never_undone_by_a_report_that_cannot_be_sent(
    device: Device, repo: Repository, probe: Probe, broker: MosquittoBroker
) -> None:
    """mender#825: the status report fails after commit; the device must stay on the new version."""
    repo.publish("1.1.0", files("1.1.0"))
    scripts = device.workdir / "scripts"
    scripts.mkdir()
    gate = device.workdir / "commit-gate"
    script = scripts / "commit_enter_10-wait"
    entered = device.workdir / "commit-entered"  # the health gate passed: the commit begins
    script.write_text(f"#!/bin/sh\ntouch {entered}\nwhile [ ! -e {gate} ]; do sleep 0.05; done\n")
    script.chmod(0o755)
    device.configure(state_scripts=str(scripts))
    device.start()
    device.wait_running()
    probe.desired("1.1.0")
    wait_for(entered.exists, 90, "the commit to begin")
    broker.stop()  # the city becomes unreachable right at commit time
    gate.touch()
    wait_for(lambda: boot.committed_slot(device.root) == "b", 30, "the commit")
    device.kill9_agent()  # and power is lost before anything could be reported
    wait_for(lambda: (device.status() or {}).get("version") == "1.1.0", 60, "the agent back on 1.1.0")
    assert boot.read_boot(device.root)["pending"] is None
    broker.start()
    probe.wait_event("ota.committed", lambda d: d["to"] == "1.1.0", timeout=60)
    assert "ota.rolled_back" not in probe.kinds("1.1.0")
    assert device.wait_running()["version"] == "1.1.0"


def test_tampered_target_fails_cleanly_and_the_old_version_runs(
    device: Device, repo: Repository, probe: Probe
) -> None:
    repo.publish("1.1.0", files("1.1.0"))
    for path in (repo.dir / "targets" / "releases" / "1.1.0").iterdir():
        manifest = json.loads(path.read_text())
        manifest["entry"] = ["/bin/sh", "-c", "echo owned"]
        path.write_text(json.dumps(manifest))
    device.start()
    device.wait_running()
    probe.desired("1.1.0")
    event = probe.wait_event("ota.failed", timeout=60)
    assert event["data"]["code"] in ("repository", "integrity"), event
    assert device.wait_running()["version"] == "1.0.0"
    assert not (device.root / "slots" / "b" / "manifest.json").exists()


def test_disk_full_fails_cleanly_with_nothing_half_written(
    device: Device, repo: Repository, probe: Probe
) -> None:
    repo.publish("1.1.0", files("1.1.0"))
    device.configure(free_space_margin_bytes=2**50)  # more than any disk has: the space check refuses
    device.start()
    device.wait_running()
    probe.desired("1.1.0")
    event = probe.wait_event("ota.failed", timeout=60)
    assert event["data"]["code"] == "disk_full" and "free space" in event["data"]["reason"]
    assert device.wait_running()["version"] == "1.0.0"
    assert not list((device.root / "staging" / "objects").glob("*.part"))
    assert not (device.root / "slots" / "b" / "manifest.json").exists()


def test_downgrade_refused_and_update_lock_defers_until_released(
    device: Device, repo: Repository, probe: Probe
) -> None:
    repo.publish("1.1.0", files("1.1.0"))
    repo.publish("0.9.0", files("0.9.0"))
    device.start()
    device.wait_running()
    probe.desired("0.9.0")
    event = probe.wait_event("ota.failed", timeout=60)
    assert event["data"]["code"] == "policy" and "older" in event["data"]["reason"]
    api = LocalApiClient(device.data)
    api.call("ota_lock", owner="kiosk-session", ttl_s=600)
    probe.desired("1.1.0")
    wait_for(
        lambda: "kiosk-session" in str(api.call("ota_status")["state"]["waiting"]),
        30,
        "the lock to defer the update",
    )
    waiting = probe.wait_event("ota.waiting", lambda d: d["to"] == "1.1.0", timeout=30)
    assert "kiosk-session" in waiting["data"]["reason"] and waiting["data"]["code"] == "deferred"
    assert device.wait_running()["version"] == "1.0.0"
    api.call("ota_unlock", owner="kiosk-session")
    device.wait_version("1.1.0")


def test_a_metered_link_waits_for_tomorrows_budget(device: Device, repo: Repository, probe: Probe) -> None:
    repo.publish("1.1.0", files("1.1.0"))
    device.configure(daily_byte_budget=50_000)  # the new file alone is 200 kB
    device.start()
    device.wait_running()
    probe.desired("1.1.0")
    api = LocalApiClient(device.data)
    wait_for(
        lambda: "budget" in str(api.call("ota_status")["state"]["waiting"]), 30, "the budget to defer it"
    )
    staged = sum(p.stat().st_size for p in (device.root / "staging" / "objects").glob("*"))
    assert staged <= 50_000  # nothing fetched past the budget
    assert device.wait_running()["version"] == "1.0.0"
    assert "ota.failed" not in probe.kinds("1.1.0")


def test_the_update_command_installs_past_the_lock(device: Device, repo: Repository, probe: Probe) -> None:
    repo.publish("1.1.0", files("1.1.0"))
    device.start()
    device.wait_running()
    api = LocalApiClient(device.data)
    api.call("ota_lock", owner="camera-evidence", ttl_s=600)
    probe.desired("1.1.0")
    wait_for(lambda: "camera-evidence" in str(api.call("ota_status")["state"]["waiting"]), 30, "the lock")
    probe.command("update")  # the central team overrides the lock
    device.wait_version("1.1.0")
    probe.wait_event("ota.committed", lambda d: d["to"] == "1.1.0")


def test_a_newer_desired_release_supersedes_one_being_installed(
    device: Device, repo: Repository, probe: Probe
) -> None:
    repo.publish("1.1.0", files("1.1.0", size=3_000_000))
    repo.publish("1.2.0", files("1.2.0"))
    device.configure(rate_limit_bps=1_000_000)  # 1.1.0 takes about 3 s to download
    device.start()
    device.wait_running()
    probe.desired("1.1.0")
    probe.wait_event("ota.downloading", lambda d: d["to"] == "1.1.0")
    probe.desired("1.2.0")  # e.g. a rollout aborted and a fixed release set instead
    device.wait_version("1.2.0")
    probe.wait_event("ota.committed", lambda d: d["to"] == "1.2.0")  # reported after the commit
    assert "ota.installing" not in probe.kinds("1.1.0")
