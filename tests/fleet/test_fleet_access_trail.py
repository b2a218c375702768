"""The audit trail on both databases: the chain, tampering found by ``audit-trail --verify``,
concurrent appends that never fork the chain, and "recorded before it takes effect"."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import typer
from fastapi.testclient import TestClient
from fleet_helpers import bearer, make_token
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from fleet.api import create_app
from fleet.auth import trail
from fleet.auth.trail import GENESIS, Head, TrailEntry
from fleet.cli import register
from fleet.db import create_schema, make_engine
from fleet.service import FleetService
from protocol.timefmt import utc_now


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url, immediate=True)
    create_schema(engine)
    yield engine
    engine.dispose()


def entry(n: int, outcome: str = "allowed") -> TrailEntry:
    return TrailEntry(
        subject=f"token:ci-{n}",
        role="operator",
        kind="token",
        action="POST /api/devices/{device_id}/commands",
        devices=[f"kiosk-hn-{n:04d}"],
        source="10.0.0.7",
        outcome=outcome,
    )


def fill(engine: Engine, count: int = 6) -> list[dict[str, Any]]:
    for n in range(1, count + 1):
        assert trail.append(engine, entry(n, "allowed" if n % 2 else "denied: no permission")) == n
    return trail.read(engine)


def verify_cli(db_url: str, *extra: str) -> Any:
    app = typer.Typer()
    register(app)
    return CliRunner().invoke(app, ["fleet", "audit-trail", "--db", db_url, "--verify", *extra])


def test_entries_chain_by_hash(engine: Engine, db_url: str) -> None:
    rows = fill(engine)
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0]["prev_hash"] == GENESIS
    for before, after in itertools.pairwise(rows):
        assert after["prev_hash"] == before["hash"] == trail.entry_hash(before)
    assert rows[2]["devices"] == ["kiosk-hn-0003"] and rows[1]["outcome"] == "denied: no permission"
    assert trail.verify(engine) == []
    ok = verify_cli(db_url)
    assert ok.exit_code == 0 and f"head 6:{rows[-1]['hash']}" in ok.output
    shown = CliRunner().invoke(_app(), ["fleet", "audit-trail", "--db", db_url, "--json", "--since", "1h"])
    assert [e["seq"] for e in json.loads(shown.output)] == [1, 2, 3, 4, 5, 6]
    later = (utc_now() + timedelta(minutes=5)).isoformat()
    future = CliRunner().invoke(_app(), ["fleet", "audit-trail", "--db", db_url, "--json", "--since", later])
    assert json.loads(future.output) == []


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


TAMPER = {
    "edited": ["UPDATE audit_trail SET outcome = 'allowed' WHERE seq = 4"],
    "reordered": [
        "UPDATE audit_trail SET seq = -2 WHERE seq = 2",
        "UPDATE audit_trail SET seq = 2 WHERE seq = 4",
        "UPDATE audit_trail SET seq = 4 WHERE seq = -2",
    ],
    "deleted": ["DELETE FROM audit_trail WHERE seq = 3"],
}


@pytest.mark.parametrize("how", sorted(TAMPER))
def test_verify_finds_tampering(engine: Engine, db_url: str, how: str) -> None:
    fill(engine)
    with engine.begin() as conn:
        for sql in TAMPER[how]:
            conn.execute(text(sql))
    problems = trail.verify(engine)
    assert problems
    result = verify_cli(db_url)
    assert result.exit_code == 1 and "TAMPERED" in result.output
    expected = {"edited": "entry 4: its content", "reordered": "entry 2:", "deleted": "entry 3 missing"}[how]
    assert any(p.startswith(expected) for p in problems), problems


def test_an_edited_entry_with_a_recomputed_hash_breaks_the_next_link(engine: Engine) -> None:
    rows = fill(engine)
    forged = {**rows[3], "outcome": "allowed"}  # entry 4 was denied
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE audit_trail SET outcome = 'allowed', hash = :h WHERE seq = 4"),
            {"h": trail.entry_hash(forged)},
        )
    assert trail.verify(engine) == ["entry 5: does not link to the entry before it "
                                    "(an entry before it was deleted, edited or moved)"]  # fmt: skip


def test_entries_cut_off_the_end_are_found_with_the_noted_head(engine: Engine, db_url: str) -> None:
    rows = fill(engine)
    head = Head(6, rows[-1]["hash"])
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_trail WHERE seq >= 5"))
    assert trail.verify(engine) == []  # the chain alone cannot show it
    assert trail.verify(engine, anchor=head) == [
        "entry 6 of the anchor is gone: the trail ends at 4 (entries were deleted from its end)"
    ]
    assert verify_cli(db_url, "--anchor", f"6:{head.hash}").exit_code == 1
    assert verify_cli(db_url, "--anchor", f"4:{rows[3]['hash']}").exit_code == 0
    assert verify_cli(db_url, "--anchor", "4:nothex").exit_code == 1


def test_concurrent_appends_never_fork_the_chain(db_url: str, engine: Engine) -> None:
    workers, each = 6, 20
    engines = [
        make_engine(db_url, immediate=(n % 2 == 0)) for n in range(workers)
    ]  # BEGIN and BEGIN IMMEDIATE
    start = threading.Barrier(workers)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            start.wait()
            for i in range(each):
                trail.append(engines[n], entry(n * 1000 + i))
        except BaseException as exc:  # reported below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for e in engines:
        e.dispose()
    assert errors == []
    rows = trail.read(engine)
    assert [r["seq"] for r in rows] == list(range(1, workers * each + 1))
    assert len({r["subject"] for r in rows}) == workers * each
    assert trail.verify(engine) == []


def test_a_change_is_refused_when_the_trail_cannot_be_written(fleet: FleetService) -> None:
    app = create_app(fleet)
    with TestClient(app, headers=bearer(make_token(fleet, "admin"))) as client:
        assert client.get("/api/audit").status_code == 200
        with fleet.store.writer.begin() as conn:
            conn.execute(text("DROP TABLE audit_trail"))
        refused = client.post("/api/devices/nobody-0001/commands", json={"name": "ping"})
        assert refused.status_code == 503 and "audit trail" in refused.json()["detail"]
        assert client.get("/api/devices").status_code == 200  # reads go on


def test_audit_api_reads_the_trail(fleet: FleetService) -> None:
    app = create_app(fleet)
    auditor = bearer(make_token(fleet, "auditor"))
    with TestClient(app) as client:
        operator = bearer(make_token(fleet, "operator"))
        assert (
            client.post(
                "/api/devices/nobody-0001/commands", json={"name": "ping"}, headers=operator
            ).status_code
            == 404
        )
        assert client.get("/api/audit", headers=operator).status_code == 403
        entries = client.get("/api/audit", headers=auditor).json()
        # the operator's refused read of the trail is not a change: only changes and views of
        # personal data are recorded
        assert entries[-1]["action"] == "POST /api/devices/{device_id}/commands"
        assert entries[-1]["outcome"] == "allowed" and entries[-1]["devices"] == ["nobody-0001"]
        assert entries[-1]["subject"].startswith("token:test-operator-") and entries[-1]["role"] == "operator"
        assert entries[0]["action"].startswith("token.create") and entries[0]["kind"] == "cli"
        assert client.get("/api/audit", params={"since": "yesterday"}, headers=auditor).status_code == 422
        assert client.get("/api/audit", params={"limit": 1}, headers=auditor).json() == entries[:1]
        after = client.get("/api/audit", params={"after": entries[-2]["seq"]}, headers=auditor).json()
        assert after == entries[-1:]


def test_cli_actions_are_recorded(db_url: str, engine: Engine) -> None:
    assert trail.record_cli_action(db_url, "device.revoke key-compromise", ["cam-hn-0007"]) == 1
    (row,) = trail.read(engine)
    assert row["subject"].startswith("cli:") and row["kind"] == "cli" and row["source"] == "cli"
    assert row["action"] == "device.revoke key-compromise" and row["devices"] == ["cam-hn-0007"]
    assert trail.verify(engine) == []
