"""The updater: the I/O shell around the pure state machine (``agent.ota.machine``).

One thread takes events from a queue, asks ``step`` for the next state, persists it atomically to
``DATA_DIR/ota.json`` and only then performs the effects. Every effect is idempotent, so a power
cut re-runs at most the interrupted step: a download resumes (HTTP Range), verification re-hashes,
installation rewrites the inactive slot from scratch, the switch re-checks the slot, the health
gate runs again in the new slot, a commit finishes in the launcher if it was cut short.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from agent.config import OtaSection
from agent.ota import launcher as boot
from agent.ota.errors import DiskFull, InstallError, IntegrityError, OtaError, PolicyRefused
from agent.ota.gate import UpdateGate
from agent.ota.health import health_gate
from agent.ota.machine import (
    Booted,
    Cancel,
    Commit,
    Effect,
    Emit,
    Evaluate,
    Event,
    Failed,
    Healthy,
    MarkReported,
    OtaState,
    PhaseDone,
    Progress,
    Rollback,
    Target,
    Unhealthy,
    step,
)
from agent.ota.scripts import StateScripts
from agent.state import read_json
from protocol.atomic import atomic_write_json
from protocol.release import ReleaseManifest

log = logging.getLogger(__name__)

STATE_FILE = "ota.json"
TICK_S = 5.0


class Cancelled(OtaError):
    """The work in progress was superseded by a newer desired release."""

    code = "cancelled"


@dataclasses.dataclass(frozen=True)
class SyncBoard:
    """Queued at start when this slot is not on trial: bring the I/O board to its firmware."""


class BoardSync(Protocol):
    """The I/O board's firmware in the release (``agent.ota.boardfw.BoardFirmware``)."""

    def ensure(self, slot_dir: Path, stop: threading.Event) -> str | None: ...

    def trial_time_s(self, slot_dir: Path) -> float: ...


@dataclasses.dataclass(frozen=True)
class CheckNow:
    """Queued by ``check``: refresh the repository's metadata, then evaluate (forced or not)."""

    force: bool


class Client(Protocol):
    def refresh(self) -> None: ...
    def manifest(self, target: str) -> tuple[ReleaseManifest, bytes]: ...


class Fetcher(Protocol):
    def fetch(
        self, sha256: str, length: int, dest: Path, on_progress: Callable[[int], None] | None = None
    ) -> int: ...


class Installer(Protocol):
    def missing_objects(self, manifest: ReleaseManifest) -> dict[str, int]: ...
    def space_needed(self, manifest: ReleaseManifest) -> int: ...
    def install(self, manifest: ReleaseManifest, manifest_bytes: bytes) -> Path: ...
    def verify(self, slot: Path) -> ReleaseManifest: ...
    def discard_staging(self) -> None: ...


@dataclasses.dataclass
class Parts:
    """What the updater drives (built by ``agent.ota.build``; tests pass their own)."""

    client: Client
    fetcher: Fetcher
    installer: Installer
    staging: Path
    stop: threading.Event


class Updater:
    def __init__(
        self,
        config: Callable[[], OtaSection],
        data_dir: Path,
        parts: Parts,
        *,
        running_version: str,
        running_slot: str | None,
        emit: Callable[[str, dict[str, Any]], None],
        request_exit: Callable[[int], None],
        connected: Callable[[], bool],
        gate: UpdateGate | None = None,
        clock: Callable[[], float] = time.time,
        board_firmware: BoardSync | None = None,
    ) -> None:
        self._config = config
        self.parts = parts
        self.root = config().root
        self.running_version = running_version
        self.running_slot = running_slot
        self._emit = emit
        self._request_exit = request_exit
        self._connected = connected
        self.gate = gate or UpdateGate(config)
        self._clock = clock
        self._board_firmware = board_firmware
        self.board_error: str | None = None
        self._path = data_dir / STATE_FILE
        stored = read_json(self._path)
        self.state = OtaState.from_dict(stored.get("state") or {})
        self._budget: dict[str, Any] = stored.get("budget") or {}
        self.desired: Target | None = None
        self._manifest: tuple[ReleaseManifest, bytes] | None = None
        self._events: queue.Queue[Event | CheckNow | SyncBoard | None] = queue.Queue()
        self.last_check: dict[str, Any] | None = None
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="ota", daemon=True)
        self.scripts = StateScripts(config().state_scripts)

    # -- public API (any thread) ------------------------------------------------------------------

    def start(self) -> None:
        pending = boot.read_boot(self.root)
        on_trial = (pending.get("pending") or {}).get("slot") == self.running_slot
        self._events.put(
            Booted(self.running_slot, self.running_version, pending.get("pending"), pending.get("last"))
        )
        if self._board_firmware is not None and self.running_slot and not on_trial:
            self._events.put(SyncBoard())  # after a rollback: the old slot's firmware goes back
        self._thread.start()

    def stop(self) -> None:
        self.parts.stop.set()
        self._events.put(None)
        self._thread.join(timeout=10)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def on_desired(self, release: dict[str, Any] | None) -> None:
        """The shadow applied a new desired state (its ``release`` member, or None)."""
        self.desired = Target.from_dict(release)
        current = self.state.target
        if current is not None and (self.desired is None or self.desired.version != current.version):
            self._cancel.set()
        self._events.put(self._evaluate_event(False))

    def check(self, force: bool = False) -> dict[str, Any]:
        """Look at the repository now and start the desired update if one is due (``update``
        command, ``agent ota check``). The updater's own thread does it, in order with its work;
        ``last_check`` in the status says how it went."""
        self._events.put(CheckNow(force))
        return {**self.status(), "check": "requested"}

    def status(self) -> dict[str, Any]:
        with self._lock:
            state = self.state.to_dict()
        boot_state = boot.read_boot(self.root)
        return {
            "running": {"version": self.running_version, "slot": self.running_slot},
            "desired": dataclasses.asdict(self.desired) if self.desired else None,
            "state": state,
            "locks": self.gate.holders(),
            "pending": boot_state.get("pending"),
            "last_boot_outcome": boot_state.get("last"),
            "last_check": self.last_check,
            "board_firmware_error": self.board_error,
        }

    def telemetry(self) -> dict[str, Any]:
        state = self.state
        pct = round(100.0 * state.bytes_done / state.bytes_total, 1) if state.bytes_total else None
        return {"ota_phase": state.phase, "ota_progress_pct": pct}

    # -- the loop ---------------------------------------------------------------------------------------

    def _check_now(self, force: bool) -> Evaluate:
        try:
            self.parts.client.refresh()
            self.last_check = {"at": time.time(), "ok": True}
        except OtaError as exc:
            self.last_check = {"at": time.time(), "ok": False, "error": str(exc)}
            log.warning("repository check failed: %s", exc)
        return self._evaluate_event(force)

    def _evaluate_event(self, forced: bool) -> Evaluate:
        gate = self.gate.check(self._bytes_today())
        return Evaluate(self.desired, self.running_version, self._clock(), gate, forced)

    def _loop(self) -> None:
        while not self.parts.stop.is_set():
            try:
                item = self._events.get(timeout=TICK_S)
            except queue.Empty:
                item = self._evaluate_event(False) if self.state.phase == "idle" else None
            if isinstance(item, SyncBoard):
                self._sync_board()
                continue
            event = self._check_now(item.force) if isinstance(item, CheckNow) else item
            if event is None:
                continue
            try:
                self._handle(event)
            except Exception:  # supervisor boundary of the updater thread: log, keep the loop
                log.exception("update step failed unexpectedly")

    def _handle(self, event: Event) -> None:
        follow: list[Event] = [event]
        while follow and not self.parts.stop.is_set():
            current = follow.pop(0)
            with self._lock:
                new_state, effects = step(self.state, current)
                changed = new_state != self.state
                self.state = new_state
            if changed and not isinstance(current, Progress):
                self._persist()
            for effect in effects:
                follow.extend(self._perform(effect))

    def _persist(self) -> None:
        atomic_write_json(self._path, {"state": self.state.to_dict(), "budget": self._budget}, 0o640)

    def _perform(self, effect: Effect) -> list[Event]:
        if isinstance(effect, Emit):
            self._emit(effect.kind, effect.data)
            return []
        if isinstance(effect, Cancel):
            self._cancel.clear()
            self._manifest = None
            return []
        if isinstance(effect, MarkReported):
            state = boot.read_boot(self.root)
            if state.get("last"):
                boot.write_boot(self.root, {**state, "last": {**state["last"], "reported": True}})
            return []
        if isinstance(effect, Commit):
            return self._commit()
        if isinstance(effect, Rollback):
            return self._rollback(effect.reason)
        return self._run(effect.phase)

    def _run(self, phase: str) -> list[Event]:
        try:
            if self._cancel.is_set() and phase != "trial":
                raise Cancelled("superseded")  # the queued Evaluate starts the new release instead
            self.scripts.run(phase, "enter", self._script_env())
            if phase == "downloading":
                self._download()
            elif phase == "verifying":
                self._verify()
            elif phase == "installing":
                slot_dir = self._install()
                return [PhaseDone("installing", slot_dir.name)]
            elif phase == "restarting":
                self._restart()
                return []
            elif phase == "trial":
                verdict = self._trial()
                return [] if verdict is None else [verdict]
            return [PhaseDone(phase)]  # type: ignore[arg-type]
        except Cancelled:
            log.info("update to %s superseded", self.state.target.version if self.state.target else "?")
            return []
        except OtaError as exc:
            log.warning("update %s failed: %s", phase, exc)
            return [Failed(exc.code, str(exc), exc.retryable, self._clock())]
        except OSError as exc:
            err = _os_error(exc)
            return [Failed(err.code, str(err), err.retryable, self._clock())]

    # -- phases ---------------------------------------------------------------------------------

    def _target(self) -> Target:
        if self.state.target is None:
            raise InstallError("no release is being installed")
        return self.state.target

    def _load_manifest(self) -> tuple[ReleaseManifest, bytes]:
        if self._manifest is None:
            target = self._target()
            manifest, raw = self.parts.client.manifest(target.target)
            if manifest.version != target.version:
                raise IntegrityError(
                    f"the signed target {target.target} holds version {manifest.version}, "
                    f"not {target.version} as the desired state says"
                )
            self._manifest = (manifest, raw)
        return self._manifest

    def _download(self) -> None:
        self.parts.client.refresh()
        manifest, _ = self._load_manifest()
        missing = self.parts.installer.missing_objects(manifest)
        total = sum(missing.values())
        self._check_space(manifest, total)
        done_before = 0
        self._handle_progress(0, total)
        for sha, length in sorted(missing.items()):
            if self._cancel.is_set():
                raise Cancelled("superseded")
            self._check_budget(length)
            dest = self.parts.staging / sha
            fetched = self.parts.fetcher.fetch(sha, length, dest, self._progress_from(done_before, total))
            self._spend(fetched)
            done_before += length
            self._handle_progress(done_before, total)
        self._persist()

    def _progress_from(self, base: int, total: int) -> Callable[[int], None]:
        return lambda done: self._handle_progress(base + done, total)

    def _handle_progress(self, done: int, total: int) -> None:
        with self._lock:
            new_state, effects = step(self.state, Progress(done, total))
            self.state = new_state
        for effect in effects:
            self._perform(effect)
        if effects:
            self._persist()

    def _check_space(self, manifest: ReleaseManifest, download: int) -> None:
        need = download + self.parts.installer.space_needed(manifest) + self._config().free_space_margin_bytes
        self.parts.staging.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.parts.staging).free
        if free < need:
            raise DiskFull(
                f"not enough free space for the update to {manifest.version}: it needs {need // 2**20} MiB, "
                f"{free // 2**20} MiB are free on {self.root}; the current version keeps running"
            )

    def _verify(self) -> None:
        manifest, _ = self._load_manifest()
        missing = self.parts.installer.missing_objects(manifest)
        if missing:
            raise IntegrityError(
                f"{len(missing)} file(s) of {manifest.version} are not on the device after download"
            )

    def _install(self) -> Path:
        manifest, raw = self._load_manifest()
        slot_dir = self.parts.installer.install(manifest, raw)
        if slot_dir.name == self.running_slot:
            raise InstallError("the installer wrote into the running slot")
        return slot_dir

    def _restart(self) -> None:
        if self.running_slot is None:
            raise InstallError("this agent was not started by the launcher, so it cannot switch versions")
        slot = self.state.slot or ""
        manifest = self.parts.installer.verify(self.root / "slots" / slot)
        target = self._target()
        if manifest.version != target.version:
            raise IntegrityError(f"slot {slot} holds {manifest.version}, not {target.version}")
        config = self._config()
        pending = {
            "slot": slot,
            "from": self.running_version,
            "to": target.version,
            "target": target.target,
            "tries": 0,
            "max_tries": config.max_tries,
            "deadline_s": config.health_timeout_s + self._board_time(slot),
            "failed": None,
        }
        state = boot.read_boot(self.root)
        boot.write_boot(self.root, {**state, "pending": pending})
        log.warning("restarting into %s (slot %s) on trial", target.version, slot)
        self._request_exit(boot.RESTART_EXIT)

    def _board_time(self, slot: str) -> float:
        board = self._board_firmware
        return 0.0 if board is None else board.trial_time_s(self.root / "slots" / slot)

    def _trial(self) -> Event | None:
        slot_dir = self.root / "slots" / (self.running_slot or "")
        try:
            manifest: ReleaseManifest | None = self.parts.installer.verify(slot_dir)
        except OtaError as exc:
            return Unhealthy(f"the new slot does not verify: {exc}")
        self.scripts.run("trial", "enter", self._script_env())
        reason = health_gate(
            manifest, slot_dir, self._connected, self._config().health_timeout_s, self.parts.stop
        )
        if reason is None and self._board_firmware is not None and not self.parts.stop.is_set():
            reason = self._board_firmware.ensure(slot_dir, self.parts.stop)  # after our own gate
        if self.parts.stop.is_set():
            return None  # stopping: neither verdict; the next start runs the gate again
        return Healthy() if reason is None else Unhealthy(reason)

    def _sync_board(self) -> None:
        """The running slot's I/O board firmware onto the board (a failure is reported, not fatal:
        the agent runs, and the next start tries again)."""
        if self._board_firmware is None or self.running_slot is None:
            return
        slot_dir = self.root / "slots" / self.running_slot
        self.board_error = self._board_firmware.ensure(slot_dir, self.parts.stop)
        if self.board_error is not None and not self.parts.stop.is_set():
            log.error("I/O board firmware of the running release: %s", self.board_error)

    def _commit(self) -> list[Event]:
        self.scripts.run("commit", "enter", self._script_env())
        slot = self.running_slot or ""
        boot.switch_current(self.root, slot)
        state = boot.read_boot(self.root)
        finished = boot.choose(self.root, state)[1]  # pending == current: recorded as committed
        boot.write_boot(self.root, finished)
        log.info("committed %s in slot %s", self.running_version, slot)
        try:  # the objects now live in the slots; a failure here only costs disk space
            self.parts.installer.discard_staging()
        except OtaError as exc:
            log.warning("%s", exc)
        return [Booted(self.running_slot, self.running_version, None, finished.get("last"))]

    def _rollback(self, reason: str) -> list[Event]:
        state = boot.read_boot(self.root)
        pending = state.get("pending")
        if isinstance(pending, dict):
            boot.write_boot(self.root, {**state, "pending": {**pending, "failed": reason}})
        log.error("the new version is not healthy: %s; rolling back", reason)
        self._request_exit(boot.ROLLBACK_EXIT)
        return []

    # -- byte budget ---------------------------------------------------------------------------

    def _bytes_today(self) -> int:
        return int(self._budget.get("bytes", 0)) if self._budget.get("day") == self.gate.today() else 0

    def _spend(self, nbytes: int) -> None:
        day = self.gate.today()
        spent = self._bytes_today() + nbytes
        self._budget = {"day": day, "bytes": spent}

    def _check_budget(self, length: int) -> None:
        budget = self._config().daily_byte_budget
        if budget is not None and self._bytes_today() + length > budget:
            from agent.ota.errors import Deferred

            raise Deferred(
                f"today's download budget ({budget} bytes) would be exceeded; the update continues tomorrow"
            )

    def _script_env(self) -> dict[str, str]:
        target = self.state.target
        return {
            "CITYEDGE_OTA_FROM": self.state.from_version or self.running_version,
            "CITYEDGE_OTA_TO": target.version if target else "",
        }


def _os_error(exc: OSError) -> OtaError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(
            f"the disk filled up during the update ({exc.strerror}); the current version keeps running"
        )
    return InstallError(f"{exc.strerror or exc} ({getattr(exc, 'filename', '') or ''})")


def running_slot_from_env() -> str | None:
    slot = os.environ.get("CITYEDGE_SLOT")
    return slot if slot in boot.SLOTS else None


__all__ = ["Parts", "PolicyRefused", "Updater", "running_slot_from_env"]
