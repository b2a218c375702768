"""CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection): check value 0x29B1 for b"123456789".

Pure Python: micropython-lib has no CRC package and binascii.crc32 is not on every port.
"""

_TABLE = []
for _i in range(256):
    _c = _i << 8
    for _ in range(8):
        _c = ((_c << 1) ^ 0x1021) if _c & 0x8000 else (_c << 1)
    _TABLE.append(_c & 0xFFFF)
_TABLE = tuple(_TABLE)


def crc16(data, crc=0xFFFF):
    table = _TABLE
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ b) & 0xFF]
    return crc
