"""The cabinet I/O board's logic and drivers (docs/iobus.md). Pure cores take ``now`` in ticks_ms."""

FIRMWARE_VERSION = "1.0.0"
