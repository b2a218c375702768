"""When an install may start: update locks (leases), install windows, the daily byte budget."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import OtaSection, load_config, parse_window
from agent.errors import ConfigError
from agent.ota.gate import UpdateGate, in_windows


def at(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 12, 4, hour, minute)


def test_windows_including_one_across_midnight() -> None:
    assert in_windows(at(12), [])
    assert in_windows(at(1), ["01:00-05:00"]) and in_windows(at(4, 59), ["01:00-05:00"])
    assert not in_windows(at(5), ["01:00-05:00"]) and not in_windows(at(0, 59), ["01:00-05:00"])
    assert in_windows(at(23), ["22:00-04:00"]) and in_windows(at(3), ["22:00-04:00"])
    assert not in_windows(at(12), ["22:00-04:00", "01:00-02:00"])


@given(st.integers(0, 23), st.integers(0, 59), st.integers(0, 23), st.integers(0, 59), st.integers(0, 1439))
def test_a_window_and_its_complement_cover_the_day_once(
    h1: int, m1: int, h2: int, m2: int, minute: int
) -> None:
    start, end = f"{h1:02d}:{m1:02d}", f"{h2:02d}:{m2:02d}"
    if start == end:
        return
    moment = at(minute // 60, minute % 60)
    assert in_windows(moment, [f"{start}-{end}"]) != in_windows(moment, [f"{end}-{start}"])


def test_bad_windows_are_refused_with_the_expected_form(tmp_path: object) -> None:
    for bad in ("1-5", "25:00-01:00", "01:00", "aa:bb-cc:dd"):
        with pytest.raises(ValueError, match="01:00-05:00"):
            parse_window(bad)
    with pytest.raises(ConfigError, match="install window"):
        load_config(None, {"device": {"id": "kiosk-x-0001"}, "ota": {"windows": ["soon"]}})


def test_locks_are_leases_windows_and_budget_close_the_gate() -> None:
    clock = [0.0]
    settings = [OtaSection(lock_max_s=100.0)]
    wall = [datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)]  # 19:00 in Hanoi
    gate = UpdateGate(lambda: settings[0], monotonic=lambda: clock[0], wall=lambda: wall[0])
    assert gate.check(0).open
    assert gate.lock("kiosk-session", 1000.0) == 100.0  # capped by lock_max_s
    closed = gate.check(0)
    assert not closed.open and "kiosk-session" in (closed.reason or "")
    clock[0] = 101.0  # the app died without unlocking: the lease ran out
    assert gate.check(0).open and gate.holders() == []
    gate.lock("camera-evidence", 10.0)
    assert gate.unlock("camera-evidence") and not gate.unlock("camera-evidence")
    settings[0] = OtaSection(windows=["01:00-05:00"])
    assert "install window" in (gate.check(0).reason or "")
    wall[0] = datetime(2026, 12, 4, 19, 30, tzinfo=timezone.utc)  # 02:30 in Hanoi
    assert gate.check(0).open
    settings[0] = OtaSection(daily_byte_budget=1000)
    assert gate.check(999).open and not gate.check(1000).open
    assert gate.today() == "2026-12-05"  # the budget day is the local day
