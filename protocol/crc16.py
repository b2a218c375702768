"""CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final xor; check value 0x29B1
for b"123456789"), from the PyPI ``crc`` package: the I/O bus frames and VietQR payloads use it."""

from __future__ import annotations

from crc import Calculator, Configuration

CCITT_FALSE = Configuration(
    width=16,
    polynomial=0x1021,
    init_value=0xFFFF,
    final_xor_value=0x0000,
    reverse_input=False,
    reverse_output=False,
)


class Crc16:
    """A table-driven calculator; keep one per long-lived user (it builds its table once)."""

    def __init__(self) -> None:
        self._calc = Calculator(CCITT_FALSE, optimized=True)

    def __call__(self, data: bytes) -> int:
        return int(self._calc.checksum(data))
