"""The update state machine: pure, no I/O. ``step(state, event) -> (state, effects)``.

The shell (``agent.ota.updater``) persists the returned state atomically *before* it performs the
effects, and every effect is idempotent, so a power cut at any point re-runs at most the step that
was cut (Mender's rule for state scripts). Phases::

    idle ──desired differs, gate open──► downloading ──► verifying ──► installing ──► restarting
      ▲                                      │ error (retryable: back-off; else ota.failed)   │
      │                                      ▼                                               ▼
      └──────────── idle ◄── ota.committed / ota.rolled_back ◄── trial (health gate in the new slot)

``trial`` runs in the *new* slot, started by the launcher; a failed gate asks the launcher to roll
back. The outcome of a trial (committed or rolled back) is recorded by whoever decided it in the
launcher's ``boot.json`` and reported by the agent that runs next (``Booted``), so a report that
cannot be sent never undoes a commit (mender#825).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from protocol.release import version_key

Phase = Literal["idle", "downloading", "verifying", "installing", "restarting", "trial"]
WORKING: tuple[Phase, ...] = ("downloading", "verifying", "installing")
RETRY_BASE_S = 30.0
RETRY_MAX_S = 3600.0


@dataclass(frozen=True)
class Target:
    version: str
    target: str
    allow_downgrade: bool = False
    force: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Target | None:
        if not data:
            return None
        return cls(
            str(data["version"]),
            str(data["target"]),
            bool(data.get("allow_downgrade")),
            bool(data.get("force")),
        )


@dataclass(frozen=True)
class OtaState:
    phase: Phase = "idle"
    target: Target | None = None
    from_version: str | None = None
    slot: str | None = None
    bytes_done: int = 0
    bytes_total: int = 0
    retries: int = 0
    retry_at: float | None = None
    blocked: dict[str, Any] | None = None
    """A version that failed or was rolled back: not tried again until the desired release changes
    or an ``update`` command forces it."""
    waiting: str | None = None
    last: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OtaState:
        if not data:
            return cls()
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["target"] = Target.from_dict(values.get("target"))
        return cls(**values)


# -- events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gate:
    """What the shell found out about "may we start now" (lock, windows, byte budget)."""

    open: bool = True
    reason: str | None = None


@dataclass(frozen=True)
class Evaluate:
    """Desired release vs running version; sent on a new desired state, a timer, a command."""

    desired: Target | None
    running: str
    now: float
    gate: Gate = field(default_factory=Gate)
    forced: bool = False


@dataclass(frozen=True)
class Progress:
    bytes_done: int
    bytes_total: int


@dataclass(frozen=True)
class PhaseDone:
    phase: Phase
    slot: str | None = None


@dataclass(frozen=True)
class Failed:
    code: str
    reason: str
    retryable: bool
    now: float


@dataclass(frozen=True)
class Booted:
    """The agent started: which slot and version run, and the launcher's boot state."""

    slot: str | None
    running: str
    pending: dict[str, Any] | None
    last: dict[str, Any] | None


@dataclass(frozen=True)
class Healthy:
    pass


@dataclass(frozen=True)
class Unhealthy:
    reason: str


Event = Evaluate | Progress | PhaseDone | Failed | Booted | Healthy | Unhealthy


# -- effects ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Emit:
    kind: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Run:
    """Run (or re-run, after a restart) the work of ``phase``."""

    phase: Phase


@dataclass(frozen=True)
class Commit:
    pass


@dataclass(frozen=True)
class Rollback:
    reason: str


@dataclass(frozen=True)
class MarkReported:
    pass


@dataclass(frozen=True)
class Cancel:
    """Stop the work in progress (a newer desired release superseded it)."""


Effect = Emit | Run | Commit | Rollback | MarkReported | Cancel


def _data(state: OtaState, **extra: Any) -> dict[str, Any]:
    to = state.target.version if state.target else None
    body: dict[str, Any] = {"from": state.from_version, "to": to}
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def _retry_delay(retries: int) -> float:
    return float(min(RETRY_MAX_S, RETRY_BASE_S * 2 ** min(retries, 10)))


def step(state: OtaState, event: Event) -> tuple[OtaState, list[Effect]]:
    """The next state and the effects to perform, for one event."""
    if isinstance(event, Evaluate):
        return _evaluate(state, event)
    if isinstance(event, Progress):
        if state.phase != "downloading":
            return state, []
        first = state.bytes_total == 0 and event.bytes_total > 0
        nxt = dataclasses.replace(state, bytes_done=event.bytes_done, bytes_total=event.bytes_total)
        if first:  # the manifest is known: announce the download once, with its size
            return nxt, [
                Emit("ota.downloading", _data(nxt, bytes_done=nxt.bytes_done, bytes_total=nxt.bytes_total))
            ]
        return nxt, []
    if isinstance(event, PhaseDone):
        return _phase_done(state, event)
    if isinstance(event, Failed):
        return _failed(state, event)
    if isinstance(event, Booted):
        return _booted(state, event)
    if isinstance(event, Healthy):
        if state.phase != "trial":
            return state, []
        return state, [Commit()]
    if isinstance(event, Unhealthy):
        if state.phase != "trial":
            return state, []
        return state, [Rollback(event.reason)]
    raise TypeError(f"unknown event {event!r}")


def _evaluate(state: OtaState, ev: Evaluate) -> tuple[OtaState, list[Effect]]:
    desired = ev.desired
    if state.phase in ("restarting", "trial"):
        return state, []  # the switch is under way; the next boot decides
    if state.phase in WORKING:
        if desired is not None and state.target is not None and desired.version == state.target.version:
            return state, []
        # superseded (a new desired release, or none): drop the work in progress
        state = dataclasses.replace(state, phase="idle", target=None, bytes_done=0, bytes_total=0)
        effects: list[Effect] = [Cancel()]
        new_state, more = _evaluate(state, ev)
        return new_state, effects + more
    if desired is None or desired.version == ev.running:
        clean = dataclasses.replace(state, blocked=None, waiting=None, retry_at=None, retries=0, target=None)
        return clean, []
    blocked = state.blocked
    forced = ev.forced or desired.force
    if blocked is not None and blocked.get("version") == desired.version and not ev.forced:
        return state, []
    if state.retry_at is not None and ev.now < state.retry_at and not ev.forced:
        return state, []
    if not desired.allow_downgrade and version_key(desired.version) < version_key(ev.running):
        reason = (
            f"refusing to go back from {ev.running} to the older {desired.version}: downgrades need "
            "allow_downgrade in the signed desired state"
        )
        failed = dataclasses.replace(
            state,
            blocked={"version": desired.version, "code": "policy", "reason": reason},
            last={"outcome": "failed", "from": ev.running, "to": desired.version, "reason": reason},
        )
        return failed, [
            Emit(
                "ota.failed", {"from": ev.running, "to": desired.version, "reason": reason, "code": "policy"}
            )
        ]
    if not ev.gate.open and not forced:
        if state.waiting == ev.gate.reason:
            return state, []
        # said once per new reason, so the fleet can tell "waiting for a lock or window" apart
        # from a device that never answered
        body = {"from": ev.running, "to": desired.version, "reason": ev.gate.reason, "code": "deferred"}
        return dataclasses.replace(state, waiting=ev.gate.reason), [Emit("ota.waiting", body)]
    same = state.target is not None and state.target.version == desired.version
    started = OtaState(
        phase="downloading",
        target=desired,
        from_version=ev.running,
        retries=state.retries if same else 0,
        last=state.last,
    )
    return started, [Run("downloading")]


def _phase_done(state: OtaState, ev: PhaseDone) -> tuple[OtaState, list[Effect]]:
    if ev.phase != state.phase:
        return state, []  # a stale completion (cancelled work)
    if ev.phase == "downloading":
        nxt = dataclasses.replace(state, phase="verifying", bytes_done=state.bytes_total)
        return nxt, [Emit("ota.verifying", _data(nxt)), Run("verifying")]
    if ev.phase == "verifying":
        nxt = dataclasses.replace(state, phase="installing")
        return nxt, [Emit("ota.installing", _data(nxt)), Run("installing")]
    if ev.phase == "installing":
        nxt = dataclasses.replace(state, phase="restarting", slot=ev.slot)
        return nxt, [Emit("ota.restarting", _data(nxt, slot=ev.slot)), Run("restarting")]
    return state, []


def _failed(state: OtaState, ev: Failed) -> tuple[OtaState, list[Effect]]:
    if state.phase not in (*WORKING, "restarting"):
        return state, []
    if ev.retryable:
        retries = state.retries + 1
        waiting = dataclasses.replace(
            state,
            phase="idle",
            retries=retries,
            retry_at=ev.now + _retry_delay(retries - 1),
            waiting=f"{ev.reason} (retry {retries})",
        )
        return waiting, []
    to = state.target.version if state.target else None
    last = {"outcome": "failed", "from": state.from_version, "to": to, "reason": ev.reason, "code": ev.code}
    failed = OtaState(
        blocked={"version": to, "code": ev.code, "reason": ev.reason},
        last=last,
    )
    return failed, [Emit("ota.failed", _data(state, reason=ev.reason, code=ev.code))]


def _booted(state: OtaState, ev: Booted) -> tuple[OtaState, list[Effect]]:
    pending, last = ev.pending, ev.last
    if pending and pending.get("slot") == ev.slot:
        trial = dataclasses.replace(
            state,
            phase="trial",
            slot=ev.slot,
            from_version=pending.get("from"),
            target=state.target or Target(str(pending.get("to")), str(pending.get("target") or "")),
        )
        return trial, [Run("trial")]
    if last and not last.get("reported"):
        outcome = last.get("outcome")
        body = {"from": last.get("from"), "to": last.get("to")}
        if outcome == "committed":
            done = OtaState(last={**body, "outcome": "committed"})
            return done, [
                Emit("ota.healthy", body),
                Emit("ota.committed", body),
                MarkReported(),
            ]
        reason = str(last.get("reason") or "the new version failed its health gate")
        done = OtaState(
            blocked={"version": last.get("to"), "code": "rolled_back", "reason": reason},
            last={**body, "outcome": "rolled_back", "reason": reason},
        )
        return done, [Emit("ota.rolled_back", {**body, "reason": reason}), MarkReported()]
    if state.phase in WORKING:
        return state, [Run(state.phase)]
    if state.phase == "restarting":
        return state, [Run("restarting")]
    if state.phase == "trial":
        # a trial whose outcome was already reported (or lost): start afresh from idle
        return OtaState(blocked=state.blocked, last=state.last), []
    return state, []
