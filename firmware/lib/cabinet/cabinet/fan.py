"""Fan with hysteresis (on at fan_on_c, off below fan_off_c) and a tachometer check."""

from cabinet.ticks import ticks_diff

FAULT_AFTER_MS = 10_000


class Fan:
    def __init__(self, on_c, off_c):
        self.on_c = on_c
        self.off_c = off_c
        self.on = False
        self._on_since = None
        self._fault_told = False

    def update(self, temp_c, rpm, now):
        """Returns (fan on?, "fault" once per fan-on period when the tach reads 0, else None)."""
        if temp_c is not None:
            if not self.on and temp_c >= self.on_c:
                self.on = True
                self._on_since = now
                self._fault_told = False
            elif self.on and temp_c < self.off_c:
                self.on = False
                self._on_since = None
        fault = None
        if (
            self.on
            and rpm == 0
            and not self._fault_told
            and self._on_since is not None
            and ticks_diff(now, self._on_since) >= FAULT_AFTER_MS
        ):
            self._fault_told = True
            fault = "fault"
        return self.on, fault


class Overheat:
    """``overheat`` once at overheat_c, ``overheat_cleared`` once below overheat_c - 5."""

    HYSTERESIS_C = 5.0

    def __init__(self, limit_c):
        self.limit_c = limit_c
        self.hot = False

    def update(self, temp_c):
        if temp_c is None:
            return None
        if not self.hot and temp_c >= self.limit_c:
            self.hot = True
            return "overheat"
        if self.hot and temp_c < self.limit_c - self.HYSTERESIS_C:
            self.hot = False
            return "overheat_cleared"
        return None
