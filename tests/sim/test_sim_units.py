"""Pure parts of the simulator: command book, backoff, device ids, scenario events."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from fleet.keys_cli import init_keys
from fleet.signer import load_fleet_signer
from hil.sim.commands import CommandBook, CommandFailed
from hil.sim.config import SimConfig
from hil.sim.device import SimDevice
from hil.sim.link import Backoff
from hil.sim.scenario import Role
from hil.sim.swarm import build_devices, device_ids
from protocol.models import Command, EventEnvelope, decode
from protocol.timefmt import format_ts, utc_now
from protocol.topics import DEVICE_ID_RE, Topics


def _cmd(cid: str, name: str = "ping", nonce: str | None = None, ttl: float = 60) -> bytes:
    now = utc_now()
    return json.dumps(
        {
            "id": cid,
            "name": name,
            "args": {},
            "issued_at": format_ts(now),
            "expires_at": format_ts(now + timedelta(seconds=ttl)),
            "nonce": nonce or f"n-{cid}",
        }
    ).encode()


def _book() -> tuple[CommandBook, list[str]]:
    ran: list[str] = []

    def ping(c: Command) -> dict[str, object]:
        ran.append(c.id)
        return {"pong": True}

    def fail(c: Command) -> dict[str, object]:
        raise CommandFailed("printer out of paper")

    return CommandBook({"ping": ping, "print": fail}, capacity=3), ran


def test_command_book_runs_each_id_once_and_rejects_replays() -> None:
    book, ran = _book()
    first = book.answer(_cmd("a"))
    assert first is not None and first.status == "ok"
    assert book.answer(_cmd("a")) is first and ran == ["a"]
    replay = book.answer(_cmd("b", nonce="n-a"))
    assert replay is not None and replay.status == "rejected" and "nonce" in (replay.error or "")
    failed = book.answer(_cmd("c", "print"))
    assert failed is not None and failed.status == "error" and failed.error == "printer out of paper"
    old = book.answer(_cmd("d", ttl=-1))
    assert old is not None and old.status == "rejected"
    assert ran == ["a"]


def test_command_book_forgets_beyond_capacity() -> None:
    book, ran = _book()
    for cid in "abcd":
        book.answer(_cmd(cid, nonce=f"x{cid}"))
    book.answer(_cmd("a", nonce="fresh"))  # "a" fell out of the book: it runs again
    assert ran == ["a", "b", "c", "d", "a"]


@given(st.binary(max_size=300))
def test_command_book_never_raises_on_garbage(payload: bytes) -> None:
    book, _ = _book()
    result = book.answer(payload)
    assert result is None or result.status in ("rejected", "error", "ok")


def test_backoff_grows_to_its_cap_with_full_jitter_and_resets() -> None:
    b = Backoff(0.5, 8.0, random.Random(7))
    delays = [b.next() for _ in range(60)]
    assert delays[0] <= 0.5 and all(0.05 <= d <= 8.0 for d in delays)
    assert max(delays[10:]) > 4.0  # the window has grown to the cap
    b.reset()
    assert b.next() <= 0.5


def test_device_ids_alternate_roles_and_match_the_contract() -> None:
    ids = device_ids(SimConfig(broker="mqtt://127.0.0.1:1", devices=5, id_prefix="hn"))
    assert ids == [
        ("kiosk-hn-0001", "kiosk"),
        ("cam-hn-0001", "camera"),
        ("kiosk-hn-0002", "kiosk"),
        ("cam-hn-0002", "camera"),
        ("kiosk-hn-0003", "kiosk"),
    ]
    assert all(DEVICE_ID_RE.match(i) for i, _ in ids)


def test_scenario_time_produces_valid_events_with_consecutive_seq() -> None:
    roles: tuple[Role, ...] = ("kiosk", "camera")
    for role in roles:
        now = [0.0]
        dev = SimDevice(f"{role}-t-0001", role, Topics(), random.Random(1), clock=lambda: now[0])  # noqa: B023
        outs = []
        for step in range(1, 200):
            now[0] = step * 30.0
            outs.extend(dev.due_events())
        envs = [decode(EventEnvelope, o.payload, topic=o.topic) for o in outs]
        assert envs and [e.seq for e in envs] == list(range(1, len(envs) + 1))
        assert len({e.id for e in envs}) == len(envs)


def test_trust_needs_a_fleet_key_directory(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"fleet keys in .* cannot be used"):
        SimConfig(broker="mqtt://127.0.0.1:1", trust=str(tmp_path))
    init_keys(tmp_path, tmp_path / "root.pem")
    (tmp_path / "keys" / "fleet_keys.json").write_text(
        json.dumps({**json.loads((tmp_path / "keys" / "fleet_keys.json").read_text()), "version": 9})
    )
    with pytest.raises(
        ValidationError, match="cannot be used"
    ):  # the list no longer matches its root signature
        SimConfig(broker="mqtt://127.0.0.1:1", trust=str(tmp_path / "keys"))


def test_a_device_with_fleet_keys_answers_only_signed_commands(tmp_path: Path) -> None:
    init_keys(tmp_path, tmp_path / "root.pem")
    cfg = SimConfig(broker="mqtt://127.0.0.1:1", devices=1, trust=str(tmp_path / "keys"))
    [device] = build_devices(cfg)
    now = utc_now()
    body = {
        "id": "c-1",
        "name": "ping",
        "args": {},
        "issued_at": format_ts(now),
        "expires_at": format_ts(now + timedelta(minutes=1)),
        "nonce": "n-1",
    }
    unsigned = device.commands.answer(json.dumps(body).encode())
    assert unsigned is not None and unsigned.status == "rejected" and "unsigned" in (unsigned.error or "")
    signed = load_fleet_signer(tmp_path).sign(dict(body, id="c-2", nonce="n-2"))
    answer = device.commands.answer(json.dumps(signed).encode())
    assert answer is not None and answer.status == "ok" and device.commands.executed == 1
