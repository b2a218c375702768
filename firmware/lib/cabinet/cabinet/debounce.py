"""A debounced input: a new level counts once it has been stable for ``stable_ms``."""

from cabinet.ticks import ticks_diff


class Debouncer:
    def __init__(self, stable_ms, initial):
        self.stable_ms = stable_ms
        self.value = initial
        self._candidate = initial
        self._since = None
        self.changed_at = None

    def update(self, raw, now):
        """Feed the raw level; returns True when the debounced value changed (at ``changed_at``)."""
        if raw == self.value:
            self._candidate = raw
            self._since = None
            return False
        if raw != self._candidate or self._since is None:
            self._candidate = raw
            self._since = now
            return False
        if ticks_diff(now, self._since) >= self.stable_ms:
            self.value = raw
            self.changed_at = self._since  # the edge, not the moment it was confirmed
            self._since = None
            return True
        return False
