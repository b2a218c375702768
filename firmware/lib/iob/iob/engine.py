"""The board's side of the exchange: answers requests once (a repeated id gets the cached answer),
sends events until the host acknowledges them. Pure: time comes in as ``now`` (ticks_ms)."""

try:
    from time import ticks_diff
except ImportError:  # CPython (cross-checks against the host implementation)

    def ticks_diff(a, b):
        return a - b


from iob import frame

CACHE = 8
MAX_PENDING = 16
RESEND_MS = 500


class Engine:
    def __init__(self, write, dispatch):
        """``write(bytes)`` sends on the UART; ``dispatch(payload) -> dict`` runs one request."""
        self.write = write
        self.dispatch = dispatch
        self.decoder = frame.Decoder()
        self.cache = []  # [(msgid, encoded RSP)], newest last
        self.pending = []  # [[msgid, encoded EVT, last sent, keep]], oldest first
        self.next_id = 1
        self.dropped_events = 0
        self.repeats = 0
        self._frames = []

    def feed(self, data, now):
        frames = self._frames
        self.decoder.feed(data, frames)
        while frames:
            kind, msgid, payload = frames.pop(0)
            if kind == frame.REQ:
                self._request(msgid, payload)
            elif kind == frame.ACK:
                self._ack(msgid)

    def _request(self, msgid, payload):
        for cached_id, encoded in self.cache:
            if cached_id == msgid:
                self.repeats += 1
                self.write(encoded)
                return
        try:
            reply = self.dispatch(payload)
        except Exception as exc:  # a failing operation is an answer, never a crash of the loop
            reply = {"ok": False, "error": "operation failed: %s" % exc}
        try:
            encoded = frame.encode(frame.RSP, msgid, reply)
        except ValueError:
            encoded = frame.encode(frame.RSP, msgid, {"ok": False, "error": "answer too long"})
        self.cache.append((msgid, encoded))
        if len(self.cache) > CACHE:
            self.cache.pop(0)
        self.write(encoded)

    def _ack(self, msgid):
        for i, entry in enumerate(self.pending):
            if entry[0] == msgid:
                self.pending.pop(i)
                return

    def emit(self, payload, now, keep=False):
        """Queue one event and send it now; ``keep``: never dropped when the queue is full."""
        msgid = self.next_id
        self.next_id = self.next_id % 0xFFFF + 1
        if len(self.pending) >= MAX_PENDING:
            for i, entry in enumerate(self.pending):
                if not entry[3]:
                    self.pending.pop(i)
                    self.dropped_events += 1
                    break
            else:
                if not keep:
                    self.dropped_events += 1
                    return
        encoded = frame.encode(frame.EVT, msgid, payload)
        self.pending.append([msgid, encoded, now, keep])
        self.write(encoded)

    def poll(self, now):
        """Resend events not acknowledged within RESEND_MS."""
        for entry in self.pending:
            if ticks_diff(now, entry[2]) >= RESEND_MS:
                entry[2] = now
                self.write(entry[1])
