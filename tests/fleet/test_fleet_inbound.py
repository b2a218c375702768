"""classify(): every received message becomes a decoded item or a rejection with a reason."""

from __future__ import annotations

import base64
import hashlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.config import FleetConfig
from fleet.inbound import REASONS, classify
from protocol.timefmt import now_ts, utc_now
from protocol.topics import Topics

T = Topics()
CFG = FleetConfig(max_payload_bytes=2048, evidence_max_payload_bytes=8192)


def run(topic: str, payload: bytes) -> tuple[str | None, str]:
    item = classify(topic, payload, topics=T, received_at=utc_now(), max_bytes=CFG.max_bytes_for)
    return item.error, item.detail


def envelope(device: str = "cam-x-0001", kind: str = "a.b", **extra: object) -> bytes:
    body = {"id": "e1", "seq": 1, "ts": now_ts(), "device": device, "kind": kind, "data": {}}
    body.update(extra)
    return json.dumps(body).encode()


def test_good_event() -> None:
    item = classify(
        T.event("cam-x-0001", "a.b"), envelope(), topics=T, received_at=utc_now(), max_bytes=CFG.max_bytes_for
    )
    assert item.ok and item.family == "events" and item.device == "cam-x-0001"
    assert item.body is not None and item.body["seq"] == 1


def test_reasons() -> None:
    topic = T.event("cam-x-0001", "a.b")
    assert run(topic, b"\xc3\x28")[0] == "not_utf8"
    assert run(topic, b"{'single': 1}")[0] == "not_json"
    assert run(topic, b'"text"')[0] == "not_object"
    assert run(topic, b"null")[0] == "not_object"
    error, detail = run(topic, envelope(seq=-1))
    assert error == "invalid" and "seq" in detail
    assert run(topic, envelope(device="cam-x-0002"))[0] == "topic_mismatch"
    assert run(topic, envelope(kind="other"))[0] == "topic_mismatch"
    assert run("city/v1/devices/Bad_Id/status", b"{}")[0] == "bad_topic"
    assert run("city/v1/devices/cam-x-0001/nonsense", b"{}")[0] == "bad_topic"
    assert run(T.shadow_desired("cam-x-0001"), b"{}")[0] == "bad_topic"  # devices do not publish it


SIG = {"alg": "ed25519", "kid": "cam-x-0001", "value": "c2ln"}


def test_size_limits_per_topic_family() -> None:
    big = envelope(data={"blob": "x" * 4000}, sig=SIG)
    assert run(T.event("cam-x-0001", "a.b"), big)[0] == "oversized"
    evidence = big.replace(b'"kind": "a.b"', b'"kind": "traffic.violation"')
    assert run(T.event("cam-x-0001", "traffic.violation"), evidence)[0] is None
    error, detail = run(T.event("cam-x-0001", "traffic.violation"), evidence + b" " * 8192)
    assert error == "oversized" and "8192" in detail


def test_rejected_family_is_known_even_for_bad_device_ids() -> None:
    item = classify(
        "city/v1/devices/X/telemetry", b"{}", topics=T, received_at=utc_now(), max_bytes=CFG.max_bytes_for
    )
    assert (item.error, item.family) == ("bad_topic", "telemetry")


@settings(max_examples=300, deadline=None)
@given(
    topic=st.one_of(
        st.text(max_size=80),
        st.sampled_from([T.event("cam-x-0001", "a.b"), T.status("cam-x-0001"), T.telemetry("cam-x-0001")]),
    ),
    payload=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
            max_leaves=12,
        ).map(lambda v: json.dumps(v).encode()),
    ),
)
def test_never_raises(topic: str, payload: bytes) -> None:
    item = classify(topic, payload, topics=T, received_at=utc_now(), max_bytes=CFG.max_bytes_for)
    assert item.ok or item.error in REASONS
    assert item.ok == (item.body is not None)


def test_evidence_must_be_signed_and_inline_images_must_match_their_hash() -> None:
    topic = T.event("cam-x-0001", "traffic.violation")
    image = b"\xff\xd8 jpeg bytes"
    good = {"sha256": hashlib.sha256(image).hexdigest(), "data": base64.b64encode(image).decode()}
    uploaded = {"sha256": "ab" * 32, "store": "fleet"}
    ok = envelope(kind="traffic.violation", data={"images": [good, uploaded]}, sig=SIG)
    assert run(topic, ok) == (None, "")
    error, detail = run(topic, envelope(kind="traffic.violation", data={"images": [good]}))
    assert error == "bad_evidence" and "not signed" in detail
    altered = {**good, "data": base64.b64encode(image + b"!").decode()}
    error, detail = run(topic, envelope(kind="traffic.violation", data={"images": [altered]}, sig=SIG))
    assert error == "bad_evidence" and "does not match its sha256" in detail
    no_hash = envelope(kind="traffic.violation", data={"images": [{"sha256": "x"}]}, sig=SIG)
    error, detail = run(topic, no_hash)
    assert error == "bad_evidence" and "no valid sha256" in detail
    # ordinary events need no signature
    assert run(T.event("cam-x-0001", "traffic.count"), envelope(kind="traffic.count"))[0] is None
