"""cityedge I/O bus, board side (docs/iobus.md). The host side is hw/iobus_frame.py + hw/iobus.py."""

VERSION = 1
