"""Entry point of the cabinet I/O board firmware (docs/iobus.md)."""

import sys

from cabinet.board import run


def build_hal():
    if sys.platform == "linux":
        from cabinet.hal_unix import UnixHal

        return UnixHal()
    from cabinet.hal_machine import MachineHal

    return MachineHal()


run(build_hal())
