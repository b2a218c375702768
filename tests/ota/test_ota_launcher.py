"""The launcher: slot choice, try counting only while an update is pending, rollback, and the real
launcher process supervising real children."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.ota import launcher as boot


def make_slot(root: Path, slot: str, version: str, entry: list[str]) -> None:
    slot_dir = root / "slots" / slot
    slot_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"version": version, "entry": entry, "files": [], "build_time": "2026-12-01T00:00:00Z"}
    (slot_dir / boot.MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    make_slot(r, "a", "1.0.0", ["{python}", "-c", "pass"])
    make_slot(r, "b", "1.1.0", ["{python}", "-c", "pass"])
    boot.switch_current(r, "a")
    return r


def pending(**extra: Any) -> dict[str, Any]:
    return {
        "pending": {"slot": "b", "from": "1.0.0", "to": "1.1.0", "tries": 0, "max_tries": 3, **extra},
        "last": None,
    }


def test_without_a_pending_update_nothing_ever_changes(root: Path) -> None:
    """rauc#490: ordinary power cuts and crashes must never move the device to the other slot."""
    state = {"pending": None, "last": None}
    for _ in range(100):
        slot, state2, changed = boot.choose(root, state)
        assert (slot, state2, changed) == ("a", state, False)


def test_tries_are_counted_then_the_update_is_rolled_back(root: Path) -> None:
    state = pending(last_exit="code 3")
    for expected in (1, 2, 3):
        slot, state, changed = boot.choose(root, state)
        assert slot == "b" and changed and state["pending"]["tries"] == expected
    slot, state, _ = boot.choose(root, state)
    assert slot == "a" and state["pending"] is None
    assert state["last"]["outcome"] == "rolled_back" and state["last"]["to"] == "1.1.0"
    assert "3 start(s)" in state["last"]["reason"] and "code 3" in state["last"]["reason"]
    assert state["last"]["reported"] is False


def test_a_failed_health_gate_rolls_back_at_once(root: Path) -> None:
    slot, state, _ = boot.choose(root, pending(failed="could not reach the broker"))
    assert slot == "a" and state["last"]["reason"] == "could not reach the broker"


def test_an_incomplete_pending_slot_is_never_started(root: Path) -> None:
    (root / "slots" / "b" / boot.MANIFEST).unlink()
    slot, state, _ = boot.choose(root, pending())
    assert slot == "a" and "incomplete" in state["last"]["reason"]


def test_a_commit_cut_short_is_finished(root: Path) -> None:
    boot.switch_current(root, "b")  # the agent switched, then lost power before clearing pending
    slot, state, changed = boot.choose(root, pending(tries=1))
    assert slot == "b" and changed and state["pending"] is None
    assert state["last"]["outcome"] == "committed"


def test_a_broken_committed_slot_falls_back_to_the_complete_one(root: Path) -> None:
    (root / "slots" / "a" / boot.MANIFEST).unlink()
    assert boot.choose(root, {"pending": None, "last": None})[0] == "b"


def test_unreadable_boot_state_means_run_the_committed_slot(root: Path) -> None:
    (root / boot.BOOT_FILE).write_text("{not json")
    assert boot.choose(root, boot.read_boot(root))[0] == "a"


def wait_for(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_real_launcher_rolls_back_a_release_that_crashes_at_start(tmp_path: Path) -> None:
    root = tmp_path / "root"
    marker = tmp_path / "ran"
    good = [
        "{python}",
        "-c",
        f"import os, time; open({str(marker)!r}, 'a').write(os.environ['CITYEDGE_RELEASE'] + '\\n'); "
        "time.sleep(60)",
    ]
    make_slot(root, "a", "1.0.0", good)
    make_slot(root, "b", "1.1.0", ["{python}", "-c", "raise SystemExit(3)"])
    boot.switch_current(root, "a")
    boot.write_boot(root, pending(max_tries=2))
    proc = subprocess.Popen(
        [sys.executable, str(Path(boot.__file__)), "--root", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_for(lambda: marker.exists() and "1.0.0" in marker.read_text())
        state = boot.read_boot(root)
        assert state["pending"] is None and state["last"]["outcome"] == "rolled_back"
        assert "2 start(s)" in state["last"]["reason"] and "code 3" in state["last"]["reason"]
        assert boot.committed_slot(root) == "a"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0


def test_killed_launcher_takes_its_child_with_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    pidfile = tmp_path / "child.pid"
    entry = [
        "{python}",
        "-c",
        f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(120)",
    ]
    make_slot(root, "a", "1.0.0", entry)
    boot.switch_current(root, "a")
    proc = subprocess.Popen(
        [sys.executable, str(Path(boot.__file__)), "--root", str(root)], stderr=subprocess.DEVNULL
    )
    wait_for(lambda: pidfile.exists() and pidfile.read_text().isdigit())
    child = int(pidfile.read_text())
    proc.kill()
    proc.wait()

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{child}/stat") as fh:  # a zombie waiting for init counts as gone
            return fh.read().split()[2] == "Z"

    wait_for(gone)
