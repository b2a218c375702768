"""The durable outbox: seq, group commit, eviction policy, kill -9 and delivery after recovery."""

from __future__ import annotations

import json
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_helpers import AgentProc, Probe
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import OutboxSection
from agent.devicekey import make_signer
from agent.errors import EventRejected, LocalApiError, OutboxFull
from agent.outbox import EventClass, Outbox
from fleet.broker import BrokerConfig, MosquittoBroker, free_port
from protocol.models import EventEnvelope, decode
from protocol.signing import verify

DEVICE = "cam-ob-0001"


def make_outbox(path: Path, **limits: object) -> Outbox:
    settings_ = OutboxSection.model_validate({"fsync": "normal", **limits})
    key = Ed25519PrivateKey.generate()
    return Outbox(path / "outbox.db", DEVICE, settings_, make_signer(key, DEVICE))


def stored(path: Path) -> list[tuple[int, str, str]]:
    """(seq, id, kind) rows straight from the file, as a fresh process would see them."""
    conn = sqlite3.connect(path / "outbox.db")
    try:
        rows = conn.execute("SELECT seq, id, kind FROM outbox ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [(int(s), str(i), str(k)) for s, i, k in rows]


def test_seq_continues_after_reopen_even_when_everything_was_acked(tmp_path: Path) -> None:
    box = make_outbox(tmp_path)
    first = [box.enqueue("kiosk.session", {"n": i}) for i in range(3)]
    assert [e.seq for e in first] == [1, 2, 3]
    box.ack(e.seq for e in first)
    box.flush()
    assert box.depth == 0
    box.close()
    box = make_outbox(tmp_path)
    assert box.enqueue("kiosk.session", {}).seq == 4
    box.close()


def test_envelope_is_the_contract_shape_and_evidence_is_signed(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    box = Outbox(tmp_path / "o.db", DEVICE, OutboxSection(fsync="normal"), make_signer(key, DEVICE))
    box.enqueue("camera.health", {"fps": 12.5, "note": "ổn định"})
    box.enqueue("traffic.violation", {"rule": "red_light"})
    rows = box.read_after(0, 10)
    plain = decode(EventEnvelope, rows[0].payload)
    assert plain.seq == 1 and plain.device == DEVICE and plain.data["note"] == "ổn định" and plain.sig is None
    evidence = decode(EventEnvelope, rows[1].payload)
    assert evidence.sig is not None
    assert verify(json.loads(rows[1].payload), {DEVICE: key.public_key()}) == DEVICE
    box.close()


def test_bad_events_are_refused_with_a_clear_reason(tmp_path: Path) -> None:
    box = make_outbox(tmp_path)
    with pytest.raises(EventRejected, match="invalid event kind"):
        box.enqueue("Bad Kind!", {})
    with pytest.raises(EventRejected, match="not plain JSON"):
        box.enqueue("kiosk.x", {"x": float("nan")})
    with pytest.raises(EventRejected, match="over the"):
        box.enqueue("kiosk.x", {"blob": "x" * 300_000})
    assert box.last_seq == 0  # refused events use no seq
    box.close()


def test_eviction_order_telemetry_then_ordinary_never_evidence(tmp_path: Path) -> None:
    box = make_outbox(tmp_path, max_events=10)
    kinds = ["kiosk.heartbeat", "metrics.cpu", "kiosk.session", "traffic.violation"] * 2
    for kind in kinds:  # 8 events: 4 telemetry-class, 2 ordinary, 2 evidence
        box.enqueue(kind, {})
    for i in range(6):  # room for 2, then the 4 telemetry-class events go, oldest first
        box.enqueue("kiosk.session", {"i": i})
    left = [k for _s, _i, k in stored(tmp_path)]
    assert "kiosk.heartbeat" not in left and "metrics.cpu" not in left
    assert left.count("traffic.violation") == 2 and len(left) == 10
    for i in range(8):  # then ordinary events, oldest first, never evidence
        box.enqueue("traffic.violation", {"i": i})
    left = [k for _s, _i, k in stored(tmp_path)]
    assert left == ["traffic.violation"] * 10
    with pytest.raises(OutboxFull, match="evidence"):
        box.enqueue("kiosk.session", {})
    with pytest.raises(OutboxFull):
        box.enqueue("traffic.violation", {})
    assert box.stats()["evicted"] == 12 and box.stats()["refused"] == 2
    box.close()


def test_byte_limit_evicts_too(tmp_path: Path) -> None:
    box = make_outbox(tmp_path, max_bytes=64 * 1024, max_event_bytes=8 * 1024)
    for _ in range(20):
        box.enqueue("metrics.blob", {"b": "x" * 6000})
    assert box.size_bytes <= 64 * 1024
    assert box.depth < 20 and box.stats()["evicted"] == 20 - box.depth
    box.close()


def test_concurrent_emitters_share_commits_and_get_contiguous_seqs(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", DEVICE, OutboxSection(fsync="full"), None)
    seqs: list[int] = []
    lock = threading.Lock()

    def emitter() -> None:
        for i in range(50):
            result = box.enqueue("kiosk.session", {"i": i})
            with lock:
                seqs.append(result.seq)

    threads = [threading.Thread(target=emitter) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seqs) == list(range(1, 401))
    box.close()


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(["kiosk.heartbeat", "kiosk.session", "traffic.violation"])),
        st.tuples(st.just("ack"), st.integers(min_value=0, max_value=30)),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, max_events=st.integers(min_value=10, max_value=14))
def test_eviction_policy_matches_a_reference_model(ops: list[tuple[str, object]], max_events: int) -> None:
    """Property: the store equals a simple model of the documented policy after any sequence."""
    with tempfile.TemporaryDirectory() as tmp:
        box = make_outbox(Path(tmp), max_events=max_events, fsync="off")
        model: list[tuple[int, EventClass]] = []  # (seq, class) in seq order
        next_seq = 1
        try:
            for op, arg in ops:
                if op == "ack":
                    if model:
                        seq = model[int(arg) % len(model)][0]  # type: ignore[call-overload]
                        box.ack([seq])
                        box.flush()
                        model = [m for m in model if m[0] != seq]
                    continue
                cls = box.classify(str(arg))
                while len(model) + 1 > max_events:
                    victims = [m for m in model if m[1] == EventClass.TELEMETRY] or [
                        m for m in model if m[1] == EventClass.ORDINARY
                    ]
                    if not victims:
                        break
                    model.remove(victims[0])
                if len(model) + 1 > max_events:
                    with pytest.raises(OutboxFull):
                        box.enqueue(str(arg), {})
                    continue
                assert box.enqueue(str(arg), {}).seq == next_seq
                model.append((next_seq, cls))
                next_seq += 1
                assert [s for s, _i, _k in stored(Path(tmp))] == [s for s, _c in model]
                assert box.depth == len(model) <= max_events
        finally:
            box.close()


def test_kill9_during_burst_loses_no_returned_event_and_all_are_delivered_later(
    tmp_path: Path, start_agent: Callable[..., AgentProc]
) -> None:
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"  # nothing listens yet: events stay in the outbox
    agent = start_agent(DEVICE, url)
    agent.wait_ready()
    returned: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def emitter(n: int) -> None:
        client = agent.client
        i = 0
        while not stop.is_set():
            try:
                result = client.emit("camera.count", {"emitter": n, "i": i})
            except LocalApiError:
                return  # the agent died under us: this one did not return
            with lock:
                returned.append(result["id"])
            i += 1

    threads = [threading.Thread(target=emitter, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(returned) < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    agent.kill9()
    stop.set()
    for t in threads:
        t.join(10)
    assert len(returned) >= 100, "the burst was too slow to mean anything"
    rows = stored(agent.data_dir)
    ids = {i for _s, i, _k in rows}
    assert set(returned) <= ids
    seqs = [s for s, _i, _k in rows]
    assert seqs == list(range(1, len(seqs) + 1))  # no gaps, no repeats

    broker = MosquittoBroker(tmp_path / "late-broker", BrokerConfig(port=port)).start()
    try:
        probe = Probe(broker, DEVICE)
        agent.start()
        agent.wait_connected()
        assert agent.client.emit("camera.count", {"after": True})["seq"] == len(seqs) + 1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            delivered = {decode(EventEnvelope, p).id for p, _r in probe.on("events/camera.count")}
            if ids <= delivered:
                break
            time.sleep(0.2)
        assert ids <= delivered
        agent.wait_status(lambda s: s["outbox"]["depth"] == 0)
        probe.close()
    finally:
        agent.kill9()
        broker.stop()
