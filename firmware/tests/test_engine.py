"""Frames and the request/event engine."""

from iob import cobs, frame
from iob.crc16 import crc16
from iob.engine import MAX_PENDING, Engine
from mptest import TestCase


class Wire:
    def __init__(self):
        self.sent = []

    def __call__(self, data):
        self.sent.append(data)

    def frames(self):
        out = []
        decoder = frame.Decoder()
        for data in self.sent:
            decoder.feed(data, out)
        return out


class FrameTests(TestCase):
    def test_crc_check_value(self):
        self.assertEqual(crc16(b"123456789"), 0x29B1)

    def test_cobs_round_trip_with_zeros_and_long_runs(self):
        for data in (b"", b"\x00", b"\x00\x00", b"a\x00b", bytes(range(1, 256)) * 2, b"\x11" * 600):
            encoded = cobs.encode(data)
            self.assertFalse(0 in encoded)
            self.assertEqual(cobs.decode(encoded), data)

    def test_frame_round_trip_in_any_split(self):
        wire = frame.encode(frame.REQ, 513, {"op": "status"}) + frame.encode(frame.ACK, 7, None)
        for cut in range(len(wire) + 1):
            out = []
            decoder = frame.Decoder()
            decoder.feed(wire[:cut], out)
            decoder.feed(wire[cut:], out)
            self.assertEqual(out, [(frame.REQ, 513, {"op": "status"}), (frame.ACK, 7, {})])

    def test_flipped_bits_and_garbage_are_dropped_and_resynchronised(self):
        good = frame.encode(frame.REQ, 9, {"op": "hb"})
        for bit in range((len(good) - 1) * 8):
            bad = bytearray(good)
            bad[bit // 8] ^= 1 << (bit % 8)
            out = []
            decoder = frame.Decoder()
            decoder.feed(b"\x13\x37" + bytes(bad) + good, out)
            self.assertEqual(out[-1], (frame.REQ, 9, {"op": "hb"}))
            for f in out[:-1]:
                self.assertEqual(f, (frame.REQ, 9, {"op": "hb"}))

    def test_overlong_garbage_is_dropped(self):
        out = []
        decoder = frame.Decoder()
        decoder.feed(b"\x01" * 2000 + b"\x00" + frame.encode(frame.ACK, 3, None), out)
        self.assertEqual(out, [(frame.ACK, 3, {})])
        self.assertEqual(decoder.dropped, 1)


class EngineTests(TestCase):
    def setUp(self):
        self.wire = Wire()
        self.calls = 0

        def dispatch(req):
            self.calls += 1
            return {"ok": True, "n": self.calls}

        self.engine = Engine(self.wire, dispatch)

    def test_repeated_request_is_answered_from_the_cache(self):
        req = frame.encode(frame.REQ, 40, {"op": "x"})
        self.engine.feed(req, 0)
        self.engine.feed(req, 10)
        answers = self.wire.frames()
        self.assertEqual(self.calls, 1)
        self.assertEqual(answers, [(frame.RSP, 40, {"ok": True, "n": 1})] * 2)

    def test_events_are_resent_until_acked(self):
        self.engine.emit({"ev": "tamper"}, 0, keep=True)
        self.engine.poll(499)
        self.assertEqual(len(self.wire.sent), 1)
        self.engine.poll(500)
        self.assertEqual(len(self.wire.sent), 2)
        msgid = self.wire.frames()[0][1]
        self.engine.feed(frame.encode(frame.ACK, msgid, None), 600)
        self.engine.poll(2000)
        self.assertEqual(len(self.wire.sent), 2)

    def test_full_queue_drops_the_oldest_ordinary_event_never_tamper(self):
        self.engine.emit({"ev": "tamper"}, 0, keep=True)
        for i in range(MAX_PENDING + 3):
            self.engine.emit({"ev": "phase", "i": i}, 0)
        kept = [e[3] for e in self.engine.pending]
        self.assertEqual(len(self.engine.pending), MAX_PENDING)
        self.assertTrue(kept[0])
        self.assertEqual(self.engine.dropped_events, 4)  # 1 tamper + 19 ordinary into 16 places

    def test_a_failing_operation_is_an_answer(self):
        engine = Engine(self.wire, lambda req: 1 / 0)
        engine.feed(frame.encode(frame.REQ, 5, {"op": "x"}), 0)
        kind, msgid, payload = self.wire.frames()[0]
        self.assertEqual((kind, msgid, payload["ok"]), (frame.RSP, 5, False))
