"""The launcher: the tiny program systemd starts, which runs the current slot (standard library only).

It does not change with an ordinary release: it is copied once to ``ROOT/launcher.py`` at
provisioning and run with the system Python, so it must not import anything from a slot. (That is
also why it carries its own few lines of atomic-write code instead of ``protocol.atomic``.)

Slot root (see docs/ota.md)::

    ROOT/current -> slots/a     the committed slot
    ROOT/slots/{a,b}/           complete releases (manifest.json written last)
    ROOT/boot.json              {"pending": {...} | null, "last": {...} | null}

What it decides, and nothing else:

* No update pending: run the committed slot; restart it when it exits (immediately after exit code
  75, the agent's "restart me", else with a capped back-off). Ordinary power cuts and crashes never
  touch ``boot.json``, so they can never switch slots (the failure of rauc#490).
* An update pending (``pending.slot``): count a try *before* each start of that slot (persisted),
  run it, and roll back to the committed slot when the agent in it reports a failed health gate
  (``pending.failed``), when it has been started ``max_tries`` times without committing, or when it
  runs past its health deadline. The committed slot is never counted, so there is always a slot
  that boots (rauc#683: both counters exhausted cannot happen).
* Commit is done by the agent in the new slot (symlink switch, then ``pending`` cleared); a
  ``pending.slot`` that ``current`` already points at is a commit that was cut short: finished here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BOOT_FILE = "boot.json"
CURRENT = "current"
SLOTS = ("a", "b")
RESTART_EXIT = 75
ROLLBACK_EXIT = 76
"""Exit code of an agent whose health gate failed (``pending.failed`` says why)."""
DEADLINE_GRACE_S = 30.0
MANIFEST = "manifest.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_boot(root: Path, state: dict[str, Any]) -> None:
    """Replace ``ROOT/boot.json`` atomically (temp file, fsync, rename, fsync dir)."""
    path = root / BOOT_FILE
    tmp = root / f".{BOOT_FILE}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(state, handle, sort_keys=True, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(root)


def read_boot(root: Path) -> dict[str, Any]:
    """``boot.json``, or an empty state when it is missing or unreadable (then nothing is pending:
    the committed slot runs, which is always the safe choice)."""
    try:
        data = json.loads((root / BOOT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"pending": None, "last": None}
    if not isinstance(data, dict):
        return {"pending": None, "last": None}
    data.setdefault("pending", None)
    data.setdefault("last", None)
    return data


def committed_slot(root: Path) -> str | None:
    """The slot ``ROOT/current`` points at, or None."""
    try:
        name = Path(os.readlink(root / CURRENT)).name
    except OSError:
        return None
    return name if name in SLOTS else None


def switch_current(root: Path, slot: str) -> None:
    """Point ``ROOT/current`` at ``slots/SLOT`` atomically (rename of a new symlink)."""
    link = root / CURRENT
    tmp = root / f".{CURRENT}.{os.getpid()}.new"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(f"slots/{slot}", tmp)
    os.replace(tmp, link)
    _fsync_dir(root)


def slot_manifest(root: Path, slot: str) -> dict[str, Any] | None:
    """The slot's manifest when the slot is complete (manifest.json is written last), else None."""
    try:
        data = json.loads((root / "slots" / slot / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("entry"), list) else None


def now_ts() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _finish(state: dict[str, Any], outcome: str, reason: str | None) -> dict[str, Any]:
    pending = state.get("pending") or {}
    last = {
        "outcome": outcome,
        "slot": pending.get("slot"),
        "from": pending.get("from"),
        "to": pending.get("to"),
        "reason": reason,
        "at": now_ts(),
        "reported": False,
    }
    return {**state, "pending": None, "last": last}


def choose(root: Path, state: dict[str, Any]) -> tuple[str, dict[str, Any], bool]:
    """Pure-ish decision: (slot to run, new boot state, whether the state changed).

    Counts a try for a pending slot; rolls back when the pending slot failed, is incomplete or
    used up its tries. Falls back to the other slot only when the committed one is incomplete.
    """
    committed = committed_slot(root)
    pending = state.get("pending")
    if isinstance(pending, dict) and pending.get("slot") in SLOTS:
        slot = str(pending["slot"])
        tries, max_tries = int(pending.get("tries") or 0), int(pending.get("max_tries") or 3)
        if slot == committed:  # the agent switched `current` but was cut off before clearing pending
            return slot, _finish(state, "committed", None), True
        reason: str | None = None
        if pending.get("failed"):
            reason = str(pending["failed"])
        elif slot_manifest(root, slot) is None:
            reason = f"slot {slot} is incomplete (its manifest is missing)"
        elif tries >= max_tries:
            exit_note = pending.get("last_exit")
            reason = f"the new version did not become healthy in {tries} start(s)" + (
                f" (last exit: {exit_note})" if exit_note else ""
            )
        if reason is None:
            counted = {**pending, "tries": tries + 1, "started": now_ts()}
            return slot, {**state, "pending": counted}, True
        state = _finish(state, "rolled_back", reason)
        if committed is not None and slot_manifest(root, committed) is not None:
            return committed, state, True
        return _fallback(root, committed), state, True
    if committed is not None and slot_manifest(root, committed) is not None:
        return committed, state, False
    return _fallback(root, committed), state, False


def _fallback(root: Path, committed: str | None) -> str:
    for slot in SLOTS:
        if slot != committed and slot_manifest(root, slot) is not None:
            return slot
    raise SystemExit(f"launcher: no complete slot under {root}/slots: reinstall the device software")


def command_for(root: Path, slot: str, extra: list[str]) -> tuple[list[str], dict[str, str]]:
    manifest = slot_manifest(root, slot) or {}
    slot_dir = root / "slots" / slot
    argv = [
        part.replace("{python}", sys.executable).replace("{slot}", str(slot_dir))
        for part in manifest.get("entry", [])
    ]
    env = dict(os.environ)
    site = slot_dir / "site"
    if site.is_dir():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
    env.update(
        CITYEDGE_OTA_ROOT=str(root),
        CITYEDGE_SLOT=slot,
        CITYEDGE_RELEASE=str(manifest.get("version", "")),
    )
    return [*argv, *extra], env


def _die_with_parent() -> None:
    """In the child: receive SIGKILL when the launcher dies (Linux), so a killed launcher never
    leaves an orphaned agent holding the data directory."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Launcher:
    def __init__(self, root: Path, extra: list[str], *, log: Any = None) -> None:
        self.root = root
        self.extra = extra
        self.stopping = False
        self.child: subprocess.Popen[bytes] | None = None
        self.log = log or (lambda msg: print(f"launcher: {msg}", file=sys.stderr, flush=True))

    def stop(self, *_: object) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.terminate()

    def run(self) -> int:
        delay = 0.5
        while not self.stopping:
            state = read_boot(self.root)
            slot, state, changed = choose(self.root, state)
            if changed:
                write_boot(self.root, state)
            pending = state.get("pending") or {}
            trial = pending.get("slot") == slot
            argv, env = command_for(self.root, slot, self.extra)
            self.log(f"starting slot {slot} ({env['CITYEDGE_RELEASE']}){' on trial' if trial else ''}")
            started = time.monotonic()
            self.child = subprocess.Popen(
                argv, env=env, cwd=self.root / "slots" / slot, preexec_fn=_die_with_parent
            )
            code = self._wait(trial, float(pending.get("deadline_s") or 0))
            if self.stopping:
                break
            if trial:
                self._note_exit(slot, code)
            if code in (RESTART_EXIT, ROLLBACK_EXIT):
                delay = 0.5
                continue
            ran = time.monotonic() - started
            delay = 1.0 if ran > 5 else min(delay * 2, 30.0)  # back off only when it dies at once
            self.log(f"slot {slot} exited with {code}; starting again in {delay:.0f} s")
            time.sleep(0 if trial else delay)
        return 0

    def _wait(self, trial: bool, deadline_s: float) -> int:
        assert self.child is not None
        limit = time.monotonic() + deadline_s + DEADLINE_GRACE_S if trial and deadline_s else None
        while True:
            try:
                return self.child.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
            if limit is not None and time.monotonic() > limit and read_boot(self.root).get("pending"):
                self.log("the new version ran past its health deadline without committing: stopping it")
                self.child.kill()
                return self.child.wait()

    def _note_exit(self, slot: str, code: int) -> None:
        state = read_boot(self.root)
        pending = state.get("pending")
        if isinstance(pending, dict) and pending.get("slot") == slot:
            note = f"code {code}" if code >= 0 else f"signal {-code}"
            write_boot(self.root, {**state, "pending": {**pending, "last_exit": note}})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the committed cityedge slot; try and roll back updates."
    )
    parser.add_argument("--root", type=Path, required=True, help="Slot root, e.g. /opt/cityedge.")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="Arguments after -- go to the slot's program.")
    ns = parser.parse_args(argv)
    extra = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
    launcher = Launcher(ns.root, extra)
    signal.signal(signal.SIGTERM, launcher.stop)
    signal.signal(signal.SIGINT, launcher.stop)
    code = launcher.run()
    if launcher.child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            launcher.child.wait(timeout=20)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
