"""The host watchdog: heartbeats from the host keep it powered; silence power-cycles it.

States: idle (not armed: before the first heartbeat, or disarmed by the host on a deliberate
shutdown) → armed (each heartbeat restarts the timer) → off (relay cuts the host's power for
wd_off_ms) → grace (power back; the host has boot_grace_s to send a heartbeat, else it is reset
again) → after wd_max_resets consecutive resets without a heartbeat: backoff (wait wd_backoff_s ×
2^k before each further reset, k = resets beyond the limit). A heartbeat in any state re-arms and
clears the count. The last reset (cause, silence, count) is kept in flash until the host clears it.
"""

from cabinet.ticks import ticks_add, ticks_diff

IDLE = "idle"
ARMED = "armed"
OFF = "off"
GRACE = "grace"
BACKOFF = "backoff"


class HostWatchdog:
    def __init__(self, cfg, state):
        """``cfg``: the board's configuration dict; ``state``: the persisted dict (host_reset,
        consecutive), changed in place; ``dirty`` says when it must be written to flash."""
        self.cfg = cfg
        self.state = state
        self.mode = IDLE
        self.last_hb = None
        self.until = None
        self.dirty = False

    @property
    def consecutive(self):
        return self.state.get("consecutive", 0)

    def heartbeat(self, now):
        self.mode = ARMED
        self.last_hb = now
        if self.consecutive:
            self.state["consecutive"] = 0
            self.dirty = True

    def disarm(self):
        self.mode = IDLE

    def step(self, now):
        """Advance; returns the relay actions due: a list of True (power on) / False (power off)."""
        cfg = self.cfg
        mode = self.mode
        if mode == ARMED:
            silence_ms = ticks_diff(now, self.last_hb)
            if silence_ms >= cfg["wd_timeout_s"] * 1000:
                return self._reset(now, silence_ms // 1000)
        elif mode == OFF and ticks_diff(now, self.until) >= 0:
            self.mode = GRACE
            self.until = ticks_add(now, cfg["boot_grace_s"] * 1000)
            return [True]
        elif mode == GRACE and ticks_diff(now, self.until) >= 0:
            return self._reset(now, cfg["boot_grace_s"])
        elif mode == BACKOFF and ticks_diff(now, self.until) >= 0:
            return self._power_off(now, self.state.get("pending_silence_s", 0))
        return []

    def _reset(self, now, silence_s):
        cfg = self.cfg
        beyond = self.consecutive - cfg["wd_max_resets"]
        if beyond >= 0:
            self.mode = BACKOFF
            wait_ms = cfg["wd_backoff_s"] * 1000 * (1 << min(beyond, 10))
            self.until = ticks_add(now, wait_ms)
            self.state["pending_silence_s"] = silence_s
            return []
        return self._power_off(now, silence_s)

    def _power_off(self, now, silence_s):
        count = self.consecutive + 1
        self.state["consecutive"] = count
        self.state["host_reset"] = {
            "cause": "heartbeat_lost",
            "silence_s": silence_s,
            "count": count,
            "t": now,
        }
        self.state["resets"] = self.state.get("resets", 0) + 1
        self.dirty = True
        self.mode = OFF
        self.until = ticks_add(now, self.cfg["wd_off_ms"])
        return [False]
