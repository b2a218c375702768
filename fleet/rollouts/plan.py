"""Pure planning and decision core of a staged rollout.

A rollout sets one release in the signed desired state of the devices a selector picks, wave by
wave (``1%,10%,50%,100%`` of the selected devices, cumulative). Each device's latest OTA report
(``fleet/otastate.py``) decides its outcome: committed, rolled back / failed / no report within the
deadline (all three are failures), or still in progress. A device that was offline when its wave
started is targeted in that wave and counted there once it comes back; its deadline starts then.
The rollout halts when the failure rate over executed devices exceeds ``max_failure`` once at least
``min_executed`` devices have executed; otherwise the next wave starts ``soak_s`` seconds after
every device of the current one has settled (or is offline, or waiting for an update lock or
an install window). No I/O here: the shell feeds facts in
and carries out the returned decision.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["pending", "offline", "waiting", "downloading", "committed", "rolled_back", "failed"]
SETTLED: frozenset[str] = frozenset({"committed", "rolled_back", "failed"})
FAILED: frozenset[str] = frozenset({"rolled_back", "failed"})
IN_PROGRESS_KINDS = frozenset({"ota.downloading", "ota.verifying", "ota.installing", "ota.restarting"})
"""The contract's events of an update under way (PROTOCOL.md "Updates (OTA)")."""
WAITING_KIND = "ota.waiting"
"""The device has the release but may not install it yet: an app holds the update lock, it is
outside its install windows or over its byte budget (``reason`` says which)."""


class RolloutError(ValueError):
    """A rollout request or specification that cannot be carried out."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """``"10m"`` -> 600.0 seconds; a bare number is seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise RolloutError(f"not a duration: {text!r} (use e.g. 30s, 10m, 1h)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def parse_percent(text: str) -> float:
    """``"5%"`` -> 0.05; must lie in [0, 100] %."""
    raw = text.strip()
    if not raw.endswith("%"):
        raise RolloutError(f"not a percentage: {text!r} (use e.g. 5%)")
    try:
        value = float(raw[:-1]) / 100.0
    except ValueError as exc:
        raise RolloutError(f"not a percentage: {text!r}") from exc
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise RolloutError(f"percentage out of range: {text!r}")
    return value


def parse_waves(text: str) -> tuple[float, ...]:
    """``"1%,10%,50%,100%"`` -> cumulative fractions, strictly increasing, ending at 100 %."""
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise RolloutError("no waves given")
    waves = tuple(parse_percent(p) for p in parts)
    if any(w <= 0.0 for w in waves):
        raise RolloutError("every wave must be above 0%")
    if any(b <= a for a, b in itertools.pairwise(waves)):
        raise RolloutError(f"waves must be strictly increasing: {text!r}")
    if waves[-1] != 1.0:
        raise RolloutError(f"the last wave must be 100%: {text!r}")
    return waves


@dataclass(frozen=True)
class Selector:
    """``"role=camera,site=hn-btl*"``: every term must match (shell-style wildcards)."""

    terms: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Selector:
        terms: list[tuple[str, str]] = []
        for part in text.split(","):
            if not part.strip():
                continue
            key, sep, pattern = part.partition("=")
            if not sep or not key.strip() or not pattern.strip():
                raise RolloutError(f"selector term must be key=pattern: {part!r}")
            terms.append((key.strip(), pattern.strip()))
        return cls(tuple(terms))

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(key in labels and fnmatch.fnmatchcase(labels[key], pattern) for key, pattern in self.terms)

    def __str__(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.terms)


@dataclass(frozen=True)
class Policy:
    waves: tuple[float, ...] = (0.01, 0.10, 0.50, 1.0)
    max_failure: float = 0.05
    min_executed: int = 5
    soak_s: float = 600.0
    deadline_s: float = 1800.0


def _spread_key(rollout_id: str, device: str) -> str:
    return hashlib.sha256(f"{rollout_id}\0{device}".encode()).hexdigest()


def plan_waves(rollout_id: str, devices: Sequence[str], waves: Sequence[float]) -> list[list[str]]:
    """Split ``devices`` into waves of cumulative sizes ``ceil(fraction * n)`` (at least one new
    device per wave while any remain). The order is a hash of rollout id and device name, so waves
    spread over sites and a replan of the same rollout gives the same waves."""
    ordered = sorted(set(devices), key=lambda d: _spread_key(rollout_id, d))
    total = len(ordered)
    out: list[list[str]] = []
    start = 0
    for fraction in waves:
        end = min(total, max(math.ceil(fraction * total - 1e-9), start + 1))
        if start >= total:
            break
        out.append(ordered[start:end])
        start = end
    return out


@dataclass(frozen=True)
class DeviceFact:
    """What the shell knows about one targeted device."""

    online: bool
    ota_kind: str | None = None  # latest ota.* event kind about this release, if any
    reason: str | None = None
    online_since: float | None = None  # when it (re)connected; None if unknown


def outcome(fact: DeviceFact, targeted_at: float, now: float, deadline_s: float) -> Outcome:
    """Pure: the outcome of one device targeted at ``targeted_at``."""
    if fact.ota_kind in ("ota.committed", "ota.healthy"):
        return "committed"
    if fact.ota_kind == "ota.rolled_back":
        return "rolled_back"
    if fact.ota_kind == "ota.failed":
        return "failed"
    if not fact.online:
        return "offline"
    if fact.ota_kind == WAITING_KIND:
        return "waiting"  # reported, so no deadline; like offline it does not hold the wave
    started = max(targeted_at, fact.online_since or targeted_at)
    if now - started > deadline_s:
        return "failed"
    if fact.ota_kind in IN_PROGRESS_KINDS:
        return "downloading"
    return "pending"


@dataclass
class WaveCount:
    targeted: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def executed(self) -> int:
        return sum(self.counts.get(k, 0) for k in SETTLED)

    @property
    def failed(self) -> int:
        return sum(self.counts.get(k, 0) for k in FAILED)

    @property
    def settled(self) -> bool:
        busy = self.counts.get("pending", 0) + self.counts.get("downloading", 0)
        return busy == 0


def count_wave(outcomes: Sequence[Outcome]) -> WaveCount:
    result = WaveCount(targeted=len(outcomes))
    for item in outcomes:
        result.counts[item] = result.counts.get(item, 0) + 1
    return result


@dataclass(frozen=True)
class Decision:
    action: Literal["wait", "start_wave", "halt", "complete"]
    wave: int | None = None
    reason: str = ""


def decide(
    policy: Policy,
    waves: Sequence[WaveCount],
    planned_waves: int,
    wave_settled_at: float | None,
    now: float,
) -> Decision:
    """Pure: what to do next given the counts of the started waves.

    ``wave_settled_at`` is when the last started wave settled (None while it has not)."""
    executed = sum(w.executed for w in waves)
    failed = sum(w.failed for w in waves)
    if executed >= policy.min_executed and executed > 0:
        rate = failed / executed
        if rate > policy.max_failure:
            return Decision(
                "halt",
                reason=(
                    f"failure rate {rate:.1%} ({failed} of {executed} executed) "
                    f"above max {policy.max_failure:.1%}"
                ),
            )
    if not waves:
        return Decision("start_wave", wave=0)
    if not waves[-1].settled:
        return Decision("wait", reason="wave in progress")
    if len(waves) >= planned_waves:
        return Decision("complete")
    if wave_settled_at is None or now - wave_settled_at < policy.soak_s:
        return Decision("wait", reason="soaking")
    return Decision("start_wave", wave=len(waves))


def failure_reasons(reasons: Sequence[str | None]) -> dict[str, int]:
    """Group failure reasons (``None`` -> "no report within deadline")."""
    out: dict[str, int] = {}
    for reason in reasons:
        key = reason or "no report within deadline"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))
