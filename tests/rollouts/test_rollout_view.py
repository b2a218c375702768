"""What API, CLI and dashboard show of a rollout (``view.rollout_status``), the halt reason's
words, the CLI's lines and the pages' duration words, over a real SQLite fleet database."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

from fleet.dashboard import duration
from fleet.db import create_schema, make_engine
from fleet.rollouts import store
from fleet.rollouts.cli import status_lines
from fleet.rollouts.driver import DeviceOutcome, abort, halt_details, tick
from fleet.rollouts.pages import actions_for
from fleet.rollouts.plan import DeviceFact, Policy, RolloutError, Selector
from fleet.rollouts.view import rollout_status

T0 = datetime(2026, 12, 5, 6, 0, tzinfo=timezone.utc)


class Backend:
    name = "test"

    def __init__(self) -> None:
        self.sent: dict[str, str | None] = {}
        self.reports: dict[str, DeviceFact] = {}

    def select(self, selector: Selector) -> dict[str, str | None]:
        return {f"cam-{i:02d}": "1.0.0" for i in range(12)}

    def set_release(self, device: str, release: str) -> None:
        self.sent[device] = release

    def set_releases(self, devices: Sequence[str], release: str) -> None:
        for device in devices:
            self.set_release(device, release)

    def confirm(self, devices: Sequence[str]) -> bool:
        return True

    def restore(self, device: str, previous: str | None) -> None:
        self.sent[device] = previous

    def facts(self, release: str, devices: Sequence[str]) -> Mapping[str, DeviceFact]:
        return {d: self.reports.get(d, DeviceFact(online=True)) for d in devices}


def test_status_counts_reasons_failed_devices_and_halt(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    create_schema(engine)
    backend = Backend()
    policy = Policy(waves=(0.5, 1.0), max_failure=0.1, min_executed=4, soak_s=60.0, deadline_s=600.0)
    waves = store.create_rollout(engine, "r1", "1.1.0", "role=camera", policy, backend.select(Selector()), T0)
    first = set(waves[0])
    order = sorted(first)
    backend.reports.update(
        {
            order[0]: DeviceFact(online=True, ota_kind="ota.committed"),
            order[1]: DeviceFact(online=True, ota_kind="ota.committed"),
            order[2]: DeviceFact(online=True, ota_kind="ota.rolled_back", reason="health check failed"),
            order[3]: DeviceFact(online=True, ota_kind="ota.failed", reason="disk full"),
            order[4]: DeviceFact(online=True, ota_kind="ota.waiting", reason="outside the install window"),
            order[5]: DeviceFact(online=False),
        }
    )

    def facts(names: Sequence[str]) -> Mapping[str, DeviceFact]:
        return backend.facts("1.1.0", names)

    assert tick(engine, "r1", backend.set_release, facts, T0).state == "running"  # wave 1 starts
    result = tick(engine, "r1", backend.set_release, facts, T0 + timedelta(seconds=1))
    assert result.state == "halted"
    assert result.reason == (
        "failure rate 50.0% (2 of 4 executed) above max 10.0%: 1 × disk full; "
        f"1 × rolled back: health check failed (devices: {order[2]}, {order[3]})"
    )
    shown = rollout_status(engine, backend, "r1", T0 + timedelta(seconds=5))
    assert shown["state"] == "halted" and shown["planned"] == 12 and shown["wave_sizes"] == [6, 6]
    (wave,) = shown["waves"]
    assert wave["targeted"] == 6
    assert wave["counts"] == {"committed": 2, "rolled_back": 1, "failed": 1, "waiting": 1, "offline": 1}
    assert wave["reasons"] == {"disk full": 1, "rolled back: health check failed": 1}
    assert wave["waiting"] == {"outside the install window": 1}
    assert [f["device"] for f in shown["failed_devices"]] == [order[2], order[3]]
    lines = status_lines(shown)
    assert lines[0] == "rollout r1: 1.1.0 on 'role=camera' (12 devices) halted"
    assert "    1 failed: disk full" in lines and lines[1].startswith("  reason: failure rate 50.0%")
    assert actions_for("halted") == ("abort",)

    try:
        store.move(engine, "r1", ("paused",), "running")
    except RolloutError as exc:
        assert "is halted" in str(exc)
    else:
        raise AssertionError("a halted rollout was resumed")
    assert abort(engine, "r1", backend.restore) == 6
    assert {backend.sent[d] for d in first} == {"1.0.0"}
    assert not any(d in backend.sent for d in waves[1])


def test_halt_details_name_the_first_devices_and_count_the_rest() -> None:
    failed = [DeviceOutcome(f"k-{i:02d}", 0, "failed", None) for i in range(12)]
    text = halt_details(failed)
    assert text.startswith("12 × no report within deadline (devices: k-00, k-01,")
    assert text.endswith("k-09 and 2 more)")
    assert halt_details([DeviceOutcome("k", 0, "committed", None)]) == ""


def test_duration_words() -> None:
    assert [duration(s) for s in (45, 600, 3600, 5400, 59.6)] == [
        "45 s",
        "10 min",
        "1 h",
        "1 h 30 min",
        "1 min",
    ]
