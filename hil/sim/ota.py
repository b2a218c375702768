"""The update exchange of a simulated device: pure, no I/O, driven by the link's clock.

A desired state whose ``release`` differs from the running version starts an update that goes
through the same steps, and sends the same ``ota.*`` events, as the real agent
(``agent/ota/machine.py``; PROTOCOL.md "Updates (OTA)"): ``ota.downloading`` (with ``bytes_done`` /
``bytes_total``, at the start and half way), ``ota.verifying``, ``ota.installing``,
``ota.restarting`` (the device boots the new version: new boot id, status with the new version),
then ``ota.healthy`` and ``ota.committed``; or ``ota.failed`` before the switch (the running
version is untouched) or ``ota.rolled_back`` after a failed health gate (the device boots the old
version again). A failed or rolled-back version is not tried again until the desired release
changes or an ``update`` command forces it; a downgrade without ``allow_downgrade`` fails with
``code: policy``; a newer desired release during the download supersedes the one in progress.

How each update goes (duration, size, failure, rollback, going offline half way) is drawn from a
``random.Random`` seeded with the run's seed, the device and the target version, so a run with the
same seed gives every device the same fate whatever the timing, and tests can compute it
(``plan_update``).
"""

from __future__ import annotations

import random
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from protocol.release import version_key

Fate = Literal["commit", "fail", "rollback"]

_RANGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:\.\.\s*(\d+(?:\.\d+)?)\s*)?$")
SLOTS = ("a", "b")
HEALTH_REASON = "health check did not pass within 120 s"
_FAILURES = (
    ("downloading", "integrity", "objects/{obj}: sha256 does not match the signed manifest"),
    ("downloading", "disk_full", "not enough free space for the new slot (needs {mb} MB, {free} MB free)"),
    ("verifying", "integrity", "targets/cityedge-{to}.manifest.json: signature threshold not met"),
    ("installing", "install", "could not unpack the release into slot {slot}: No space left on device"),
)


def parse_range(text: str) -> tuple[float, float]:
    """``"5..30"`` -> (5.0, 30.0); ``"7"`` -> (7.0, 7.0). ValueError when it is neither or low > high."""
    match = _RANGE.match(text)
    if match is None:
        raise ValueError(f"not a range of seconds: {text!r} (use e.g. 5..30 or 10)")
    low = float(match.group(1))
    high = float(match.group(2)) if match.group(2) is not None else low
    if low > high:
        raise ValueError(f"range {text!r} goes down: write the smaller number first")
    return low, high


@dataclass(frozen=True)
class OtaSettings:
    """Probabilities of each fate of an update, and how long updates and outages take (seconds)."""

    fail: float = 0.0
    rollback: float = 0.0
    offline: float = 0.0
    seconds: tuple[float, float] = (5.0, 30.0)
    offline_seconds: tuple[float, float] = (10.0, 60.0)


@dataclass(frozen=True)
class UpdatePlan:
    """The fate of one update of one device to one version, drawn in advance."""

    download_s: float
    verify_s: float
    install_s: float
    restart_s: float
    health_s: float
    bytes_total: int
    fate: Fate
    fail_phase: str = ""
    fail_code: str = ""
    fail_reason: str = ""
    offline_at: float | None = None  # fraction of the download after which the device drops off
    offline_s: float = 0.0


def plan_update(settings: OtaSettings, seed: int | str, device: str, to: str) -> UpdatePlan:
    """Pure: how the update of ``device`` to ``to`` goes under ``settings`` and ``seed``."""
    rng = random.Random(f"ota:{seed}:{device}:{to}")
    low, high = settings.seconds
    download = rng.uniform(low, high)
    # A 4G cabinet link: 0.5 to 4 MB/s; the release is what that speed fetches in that time.
    bytes_total = int(download * rng.uniform(0.5e6, 4e6))
    draw = rng.random()
    fate: Fate = "commit"
    if draw < settings.fail:
        fate = "fail"
    elif draw < settings.fail + settings.rollback:
        fate = "rollback"
    phase, code, reason = rng.choice(_FAILURES)
    reason = reason.format(
        obj=f"{rng.getrandbits(64):016x}",
        mb=bytes_total // 1_000_000 + 40,
        free=rng.randint(5, 39),
        to=to,
        slot=rng.choice(SLOTS),
    )
    offline_at = rng.uniform(0.1, 0.9) if rng.random() < settings.offline else None
    return UpdatePlan(
        download_s=download,
        verify_s=download * rng.uniform(0.03, 0.08),
        install_s=download * rng.uniform(0.05, 0.15),
        restart_s=download * rng.uniform(0.05, 0.15),
        health_s=download * rng.uniform(0.1, 0.2),
        bytes_total=bytes_total,
        fate=fate,
        fail_phase=phase if fate == "fail" else "",
        fail_code=code if fate == "fail" else "",
        fail_reason=reason if fate == "fail" else "",
        offline_at=offline_at,
        offline_s=rng.uniform(*settings.offline_seconds) if offline_at is not None else 0.0,
    )


# -- what the device must do ------------------------------------------------------------------


@dataclass(frozen=True)
class Emit:
    """Send the event ``kind`` with ``data`` (through the outbox)."""

    kind: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Boot:
    """The device restarts into ``version``: new boot id, online status naming it."""

    version: str


@dataclass(frozen=True)
class GoOffline:
    """The device drops off the network for ``seconds`` and then comes back."""

    seconds: float


Action = Emit | Boot | GoOffline


@dataclass
class _Step:
    at: float
    actions: list[Action]
    phase: str


@dataclass
class SimOta:
    """The updater of one simulated device (``running`` is the version it runs)."""

    settings: OtaSettings
    seed: int | str
    device: str
    running: str
    phase: str = "idle"  # idle, downloading, verifying, installing, restarting, trial
    target: dict[str, Any] | None = None
    desired: dict[str, Any] | None = None
    blocked: str | None = None
    started: int = 0
    _steps: deque[_Step] = field(default_factory=deque)

    @property
    def busy(self) -> bool:
        return self.phase != "idle"

    def on_release(self, release: dict[str, Any] | None, now: float, *, forced: bool = False) -> list[Action]:
        """A desired state was applied (or an ``update`` command asks): start, supersede or ignore."""
        self.desired = release
        return self._evaluate(now, forced)

    def _evaluate(self, now: float, forced: bool) -> list[Action]:
        desired = self.desired
        if self.phase in ("restarting", "trial"):
            return []  # the switch is under way; the next boot decides
        if self.busy:
            target = self.target or {}
            if desired is not None and desired.get("version") == target.get("version"):
                return []
            self._steps.clear()  # superseded: drop the work in progress, as the agent cancels it
            self.phase, self.target = "idle", None
        if desired is None or desired.get("version") == self.running:
            self.blocked = None
            return []
        version = str(desired["version"])
        forced = forced or bool(desired.get("force"))
        if self.blocked == version and not forced:
            return []
        if not desired.get("allow_downgrade") and version_key(version) < version_key(self.running):
            self.blocked = version
            reason = (
                f"refusing to go back from {self.running} to the older {version}: downgrades need "
                "allow_downgrade in the signed desired state"
            )
            data = {"from": self.running, "to": version, "reason": reason, "code": "policy"}
            return [Emit("ota.failed", data)]
        return self._start(dict(desired), now)

    def _start(self, target: dict[str, Any], now: float) -> list[Action]:
        plan = plan_update(self.settings, self.seed, self.device, str(target["version"]))
        self.phase, self.target, self.started = "downloading", target, self.started + 1
        base = {"from": self.running, "to": str(target["version"])}
        total = plan.bytes_total
        t = now
        steps: list[_Step] = []

        def add(delay: float, phase: str, *actions: Action) -> None:
            nonlocal t
            t += delay
            steps.append(_Step(t, list(actions), phase))

        def failed() -> Emit:
            return Emit("ota.failed", {**base, "reason": plan.fail_reason, "code": plan.fail_code})

        half = plan.download_s / 2
        if plan.offline_at is not None and plan.offline_at < 0.5:
            add(plan.download_s * plan.offline_at, "downloading", GoOffline(plan.offline_s))
            add(half - plan.download_s * plan.offline_at, "downloading")
        else:
            add(half, "downloading")
        progress = {**base, "bytes_done": total // 2, "bytes_total": total}
        steps[-1].actions.append(Emit("ota.downloading", progress))
        if plan.offline_at is not None and plan.offline_at >= 0.5:
            add(plan.download_s * (plan.offline_at - 0.5), "downloading", GoOffline(plan.offline_s))
            add(plan.download_s * (1.0 - plan.offline_at), "downloading")
        else:
            add(half, "downloading")
        if plan.fate == "fail" and plan.fail_phase == "downloading":
            steps[-1].actions.append(failed())
            steps[-1].phase = "idle"
            self._steps = deque(steps)
            return [Emit("ota.downloading", {**base, "bytes_done": 0, "bytes_total": total})]
        steps[-1].actions.append(Emit("ota.verifying", base))
        steps[-1].phase = "verifying"
        if plan.fate == "fail" and plan.fail_phase == "verifying":
            add(plan.verify_s, "idle", failed())
        else:
            add(plan.verify_s, "installing", Emit("ota.installing", base))
            if plan.fate == "fail":
                add(plan.install_s, "idle", failed())
            else:
                slot = SLOTS[self.started % 2]
                add(plan.install_s, "restarting", Emit("ota.restarting", {**base, "slot": slot}))
                add(plan.restart_s, "trial", Boot(base["to"]))
                if plan.fate == "rollback":
                    add(
                        plan.health_s,
                        "idle",
                        Boot(self.running),
                        Emit("ota.rolled_back", {**base, "reason": HEALTH_REASON, "code": "health"}),
                    )
                else:
                    add(plan.health_s, "idle", Emit("ota.healthy", base), Emit("ota.committed", base))
        self._steps = deque(steps)
        return [Emit("ota.downloading", {**base, "bytes_done": 0, "bytes_total": total})]

    def next_in(self, now: float) -> float | None:
        """Seconds until the next step (0 when one is due), None when no update runs."""
        return max(0.0, self._steps[0].at - now) if self._steps else None

    def due(self, now: float) -> list[Action]:
        """The actions of every step due at ``now``, in order. Going offline stops there and pushes
        the rest of the update back by the outage (the download stalls while the link is down)."""
        out: list[Action] = []
        while self._steps and self._steps[0].at <= now:
            step = self._steps.popleft()
            out.extend(step.actions)
            self._enter(step)
            offline = next((a for a in step.actions if isinstance(a, GoOffline)), None)
            if offline is not None:
                for later in self._steps:
                    later.at += offline.seconds
                break
        return out

    def _enter(self, step: _Step) -> None:
        self.phase = step.phase
        for action in step.actions:
            if isinstance(action, Boot):
                self.running = action.version
            elif isinstance(action, Emit) and action.kind in ("ota.failed", "ota.rolled_back"):
                self.blocked = str(action.data["to"])
        if self.phase == "idle":
            self.target = None
            self._steps.clear()

    def settle(self, now: float) -> list[Action]:
        """After an update ended: the desired release may have changed meanwhile (e.g. an abort)."""
        if self.phase != "idle":
            return []
        return self._evaluate(now, False)
