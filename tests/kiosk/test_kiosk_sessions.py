"""Sessions, metrics and the agent link without a browser."""

from __future__ import annotations

import time
from typing import Any

from kiosk_helpers import CCCD_ID, CCCD_NAME, CCCD_PAYLOAD, GOOD_CODE

from agent.kiosk.metrics import KioskMetrics, MetricsReporter
from kiosk_ui.agentlink import AgentLink, classify_error
from kiosk_ui.parsers import parse_cccd
from kiosk_ui.sessions import SessionStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ending_a_session_wipes_identity_and_lookup_and_reports_no_personal_data() -> None:
    ended: list[dict[str, Any]] = []
    store = SessionStore(ttl_s=60, on_end=lambda s, reason: ended.append(s.summary(reason)))
    session = store.create("vi")
    session.visit("identity")
    person = parse_cccd(CCCD_PAYLOAD)
    session.identity, session.consent = person, True
    session.lookup.code = GOOD_CODE
    session.count("lookup")
    assert CCCD_NAME in store.dump()
    assert store.end(session.sid, "idle")
    assert person.wiped and session.identity is None and session.lookup.code == ""
    assert len(store) == 0 and store.dump() == ""
    summary = str(ended)
    for secret in (CCCD_NAME, CCCD_ID, GOOD_CODE, session.sid):
        assert secret not in summary
    assert ended[0]["ended"] == "idle" and ended[0]["lookup_count"] == 1
    assert ended[0]["screens"] == ["identity"]


def test_sweep_ends_sessions_the_page_abandoned() -> None:
    store = SessionStore(ttl_s=5)
    old, fresh = store.create(), store.create()
    old.last_input -= 10
    assert store.sweep() == 1
    assert not store.alive(old.sid) and store.alive(fresh.sid)
    assert store.current() is fresh


def test_heartbeats_keep_only_unused_sessions_alive() -> None:
    store = SessionStore(ttl_s=5)
    waiting, used = store.create(), store.create()
    used.visit("identity")
    for session in (waiting, used):
        session.last_input -= 10
        store.keep_idle_alive(session.sid)
    assert store.sweep() == 1
    assert store.alive(waiting.sid) and not store.alive(used.sid)


def test_metrics_sessions_per_hour_and_screen_health() -> None:
    clock = Clock()
    metrics = KioskMetrics(clock=clock, stale_s=30)
    metrics.session_ended({"lookup_count": 2, "ended": "idle"})
    clock.now += 1800
    metrics.session_ended({"rating_count": 1})
    metrics.heartbeat(1080, 1920)
    metrics.set_printer("paper_out")
    snapshot, peripherals = metrics.snapshot()
    assert snapshot["kiosk_sessions_last_hour"] == 2
    assert snapshot["kiosk_screen_ok"] is True and snapshot["kiosk_printer"] == "paper_out"
    assert snapshot["kiosk_lookup_total"] == 2
    assert peripherals["screen"]["viewport"] == [1080, 1920]
    clock.now += 1900
    snapshot, _ = metrics.snapshot()
    assert snapshot["kiosk_sessions_last_hour"] == 1
    assert snapshot["kiosk_screen_ok"] is False  # no heartbeat for 1900 s


def test_reporter_survives_a_failing_report() -> None:
    calls: list[int] = []

    def report(metrics: dict[str, Any], peripherals: dict[str, Any]) -> None:
        calls.append(1)
        raise OSError("agent gone")

    MetricsReporter(KioskMetrics(), report).report_now()
    assert calls == [1]


class SlowAgent:
    """Behaves like an agent whose city link hangs, then like one that is back."""

    def __init__(self) -> None:
        self.hang_s = 3.0
        self.emitted: list[tuple[str, dict[str, Any]]] = []
        self.fail_emits = 1
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def emit(self, kind: str, data: dict[str, Any], *, sign: bool = False) -> dict[str, Any]:
        if self.fail_emits:
            self.fail_emits -= 1
            raise OSError("agent restarting")
        self.emitted.append((kind, data))
        return {"id": "x", "seq": len(self.emitted)}

    def rpc(self, service: str, method: str, params: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        time.sleep(self.hang_s)
        return {}

    def report_metrics(self, metrics: dict[str, Any]) -> None:
        return None

    def report_peripherals(self, peripherals: dict[str, Any]) -> None:
        return None

    def desired_config(self) -> dict[str, Any]:
        return {}

    def call(self, op: str, timeout: float | None = None, **fields: Any) -> Any:
        self.calls.append((op, fields))
        return {}


def test_lookup_answers_within_the_deadline_even_when_the_agent_hangs() -> None:
    agent = SlowAgent()
    link = AgentLink(agent, lookup_timeout_s=0.5)
    started = time.monotonic()
    assert link.lookup(GOOD_CODE).outcome == "unavailable"
    assert time.monotonic() - started < 1.5
    link.stop()


def test_events_are_retried_until_the_agent_takes_them() -> None:
    agent = SlowAgent()
    link = AgentLink(agent)
    link.start()
    link.queue_event("kiosk.rating", {"score": 5})
    deadline = time.monotonic() + 10
    while not agent.emitted and time.monotonic() < deadline:
        time.sleep(0.05)
    link.stop()
    assert agent.emitted == [("kiosk.rating", {"score": 5})]
    assert link.queued == 0


def test_error_classification() -> None:
    class CodedError(Exception):
        code = "not_found"

    assert classify_error(CodedError("x")) == "not_found"
    assert (
        classify_error(RuntimeError("city service dossier.lookup failed: no dossier with this code"))
        == "not_found"
    )
    assert classify_error(RuntimeError("city service did not answer within 4 s")) == "unavailable"
    assert classify_error(RuntimeError("the cityedge agent is not running")) == "unavailable"


def test_an_open_session_holds_the_agents_update_lock_until_it_ends() -> None:
    """A kiosk with a resident's session open defers updates (docs/ota.md); the lock is a lease."""
    agent = SlowAgent()
    link = AgentLink(agent)
    store = SessionStore(ttl_s=60)
    session = store.create()
    session.visit("home")
    assert not store.any_active()
    session.visit("lookup")
    assert store.any_active()
    link.hold_update_lock(store.any_active())
    store.end(session.sid, "done")
    link.hold_update_lock(store.any_active())
    assert [op for op, _ in agent.calls] == ["ota_lock", "ota_unlock"]
    assert agent.calls[0][1] == {"owner": "kiosk-session", "ttl_s": 180.0}
    link.stop()
