"""ticks_ms arithmetic (wrap-safe on MicroPython; plain integers elsewhere)."""

try:
    from time import ticks_add, ticks_diff, ticks_ms
except ImportError:  # CPython
    import time

    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b

    def ticks_add(a, b):
        return a + b


__all__ = ["ticks_add", "ticks_diff", "ticks_ms"]
