"""Protocol models, decoding errors and topics: the contract as PROTOCOL.md writes it."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import PayloadError, TopicError
from protocol.models import Command, EventEnvelope, Status, Telemetry, decode
from protocol.timefmt import format_ts, now_ts, parse_ts
from protocol.topics import Topics, check_device_id

TOPICS = Topics()


def test_topic_names_match_the_contract() -> None:
    d = "cam-hn-gbt-0042"
    assert TOPICS.status(d) == "city/v1/devices/cam-hn-gbt-0042/status"
    assert TOPICS.telemetry(d) == "city/v1/devices/cam-hn-gbt-0042/telemetry"
    assert TOPICS.event(d, "traffic.violation") == "city/v1/devices/cam-hn-gbt-0042/events/traffic.violation"
    assert TOPICS.shadow_reported(d).endswith("/shadow/reported")
    assert TOPICS.shadow_desired(d).endswith("/shadow/desired")
    assert TOPICS.commands_req(d).endswith("/commands/req")
    assert TOPICS.commands_res(d).endswith("/commands/res")
    assert TOPICS.rpc_req(d).endswith("/rpc/req")
    assert TOPICS.rpc_res(d).endswith("/rpc/res")
    assert Topics("x/v9").status(d) == "x/v9/devices/cam-hn-gbt-0042/status"


@pytest.mark.parametrize("bad", ["ab", "Kiosk-1", "-abc", "a" * 64, "kiosk_1", "kiosk/1", "kiosk+", ""])
def test_bad_device_ids_are_refused(bad: str) -> None:
    with pytest.raises(TopicError, match="invalid device id"):
        check_device_id(bad)


def test_parse_round_trips_every_family() -> None:
    d = "kiosk-hn-btl-0001"
    for topic, family in [
        (TOPICS.status(d), "status"),
        (TOPICS.telemetry(d), "telemetry"),
        (TOPICS.shadow_reported(d), "shadow/reported"),
        (TOPICS.commands_res(d), "commands/res"),
        (TOPICS.rpc_req(d), "rpc/req"),
    ]:
        parsed = TOPICS.parse(topic)
        assert (parsed.device, parsed.family, parsed.kind) == (d, family, None)
    ev = TOPICS.parse(TOPICS.event(d, "kiosk.rating"))
    assert (ev.family, ev.kind) == ("events", "kiosk.rating")
    for bad in ["city/v1/devices/x", "city/v2/devices/kiosk-1/status", "city/v1/devices/kiosk-1/foo"]:
        with pytest.raises(TopicError):
            TOPICS.parse(bad)


def test_decode_names_the_wrong_field() -> None:
    payload = {"ts": now_ts(), "seq": "many", "uptime_s": 1, "cpu_pct": 1, "mem_pct": 1, "disk_pct": 1}
    with pytest.raises(PayloadError) as info:
        decode(Telemetry, json.dumps(payload).encode(), topic="t")
    assert info.value.field == "seq"
    assert "seq" in str(info.value) and "on t" in str(info.value)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b"x" * 300_000, "over the"),
    ],
)
def test_decode_explains_garbage(raw: bytes, words: str) -> None:
    with pytest.raises(PayloadError, match=words):
        decode(Status, raw)


def test_unknown_fields_are_kept_for_forward_compatibility() -> None:
    status = decode(Status, json.dumps({"online": True, "ts": now_ts(), "future": 1}).encode())
    assert status.to_dict()["future"] == 1


def test_timestamps_are_rfc3339_utc_with_z() -> None:
    text = now_ts()
    assert text.endswith("Z") and "T" in text
    assert format_ts(parse_ts(text)) == text
    with pytest.raises(ValueError):
        parse_ts("2026-11-22 21:30")
    with pytest.raises(ValueError):
        parse_ts("yesterday")


@given(st.binary(max_size=512))
def test_decode_never_raises_anything_but_payload_error(raw: bytes) -> None:
    for model in (Status, Telemetry, EventEnvelope, Command):
        with contextlib.suppress(PayloadError):
            decode(model, raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.sampled_from(["id", "seq", "ts", "device", "kind", "data", "sig"]), json_values))
def test_envelope_decoder_is_total_on_json_objects(obj: dict[str, object]) -> None:
    try:
        env = decode(EventEnvelope, json.dumps(obj).encode())
    except PayloadError:
        return
    assert env.seq >= 0 and env.id
