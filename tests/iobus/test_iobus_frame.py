"""I/O bus framing on the host side: CRC, round trips and hostile input (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw.iobus_frame import (
    MAX_PAYLOAD,
    Frame,
    FrameCodec,
    FrameDecoder,
    FrameError,
    FrameType,
)
from protocol.crc16 import Crc16

CODEC = FrameCodec()

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**31), 2**31), st.text(max_size=12), st.floats(allow_nan=False)
)
payloads = st.dictionaries(st.text(min_size=1, max_size=8), json_scalars, max_size=5)
frames = st.builds(
    Frame,
    st.sampled_from([FrameType.REQ, FrameType.RSP, FrameType.EVT]),
    st.integers(1, 0xFFFF),
    payloads,
).filter(lambda f: _fits(f))


def _fits(frame: Frame) -> bool:
    try:
        CODEC.encode(frame)
    except FrameError:
        return False
    return True


def test_crc_is_ccitt_false() -> None:
    assert Crc16()(b"123456789") == 0x29B1


def test_ack_has_an_empty_payload_and_round_trips() -> None:
    wire = CODEC.encode(Frame(FrameType.ACK, 7, {}))
    assert wire.endswith(b"\x00") and b"\x00" not in wire[:-1]
    assert FrameDecoder().feed(wire) == [Frame(FrameType.ACK, 7, {})]


def test_oversized_payload_and_bad_ids_are_refused_when_building() -> None:
    with pytest.raises(FrameError, match="over the"):
        CODEC.encode(Frame(FrameType.REQ, 1, {"x": "a" * MAX_PAYLOAD}))
    with pytest.raises(FrameError, match="outside"):
        CODEC.encode(Frame(FrameType.REQ, 0, {}))


@given(st.lists(frames, min_size=1, max_size=6), st.data())
def test_frames_survive_any_split(batch: list[Frame], data: st.DataObject) -> None:
    stream = b"".join(CODEC.encode(f) for f in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = FrameDecoder()
    out: list[Frame] = []
    last = 0
    for cut in [*cuts, len(stream)]:
        out += decoder.feed(stream[last:cut])
        last = cut
    assert out == batch
    assert decoder.stats.total_dropped == 0


@given(st.binary(max_size=600))
def test_random_bytes_never_crash(garbage: bytes) -> None:
    decoder = FrameDecoder()
    for frame in decoder.feed(garbage):
        # Anything accepted passed the CRC, the version and the JSON checks.
        assert isinstance(frame.payload, dict)


@given(
    st.binary(max_size=300).map(lambda b: b.replace(b"\x00", b"")), st.lists(frames, min_size=1, max_size=3)
)
def test_resynchronises_after_garbage(garbage: bytes, batch: list[Frame]) -> None:
    decoder = FrameDecoder()
    decoder.feed(garbage)  # no delimiter: the decoder cannot know it is garbage yet
    out = decoder.feed(b"\x00" + b"".join(CODEC.encode(f) for f in batch))
    assert out == batch


@settings(max_examples=300)
@given(frames, st.data())
def test_a_flipped_bit_is_never_accepted_as_another_frame(frame: Frame, data: st.DataObject) -> None:
    wire = bytearray(CODEC.encode(frame))
    bit = data.draw(st.integers(0, (len(wire) - 1) * 8 - 1))  # not the delimiter itself
    wire[bit // 8] ^= 1 << (bit % 8)
    good = CODEC.encode(Frame(FrameType.EVT, 1, {"after": True}))
    out = FrameDecoder().feed(bytes(wire) + good)
    assert out[-1] == Frame(FrameType.EVT, 1, {"after": True})
    assert all(f == frame for f in out[:-1])


@given(st.integers(1, len(CODEC.encode(Frame(FrameType.REQ, 9, {"op": "status"}))) - 2))
def test_truncated_frame_is_dropped_and_the_next_one_read(keep: int) -> None:
    wire = CODEC.encode(Frame(FrameType.REQ, 9, {"op": "status"}))
    decoder = FrameDecoder()
    out = decoder.feed(wire[:keep] + b"\x00" + wire)
    assert out == [Frame(FrameType.REQ, 9, {"op": "status"})]
    assert decoder.stats.total_dropped == 1


def test_overlong_garbage_is_counted_once_and_dropped() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"\x01" * 5000 + b"\x00") == []
    assert decoder.stats.dropped == {"long": 1}
    good = Frame(FrameType.RSP, 3, {"ok": True})
    assert decoder.feed(CODEC.encode(good)) == [good]


def test_non_object_payload_and_unknown_version_are_dropped() -> None:
    crc = Crc16()
    from cobs import cobs

    def wire(body: bytes) -> bytes:
        return bytes(cobs.encode(body + crc(body).to_bytes(2, "big"))) + b"\x00"

    decoder = FrameDecoder()
    assert decoder.feed(wire(b"\x01\x02\x00\x05[1,2]")) == []
    assert decoder.feed(wire(b"\x02\x02\x00\x05{}")) == []
    assert decoder.feed(wire(b"\x01\x09\x00\x05{}")) == []
    assert decoder.feed(wire(b"\x01\x02\x00\x00{}")) == []
    assert decoder.stats.dropped == {"payload": 1, "version": 1, "type": 1, "msgid": 1}
