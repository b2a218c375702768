"""Sensirion SHT3x temperature / humidity sensor over I2C (single shot, high repeatability).

The driver receives its bus (``machine.I2C`` or anything with ``writeto``/``readfrom``); every
reading's CRC-8 (poly 0x31, init 0xFF) is checked, so a noisy cable gives an error, not a value.
"""

try:
    from time import sleep_ms
except ImportError:  # CPython
    import time

    def sleep_ms(ms):
        time.sleep(ms / 1000)


MEASURE_HIGH = b"\x24\x00"


class SensorError(Exception):
    """``args[0]``: "no_ack" (nothing answers at the address) or "crc" (a corrupted reading)."""


def crc8(data):
    crc = 0xFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def encode(temp_c, rh):
    """The 6 bytes the sensor would send for these values (for simulated buses and tests)."""
    t = max(0, min(65535, int(round((temp_c + 45.0) * 65535 / 175.0))))
    h = max(0, min(65535, int(round(rh * 65535 / 100.0))))
    tb = t.to_bytes(2, "big")
    hb = h.to_bytes(2, "big")
    return tb + bytes((crc8(tb),)) + hb + bytes((crc8(hb),))


def decode(raw):
    """6 bytes → (temp_c, rh); SensorError("crc") when a checksum is wrong."""
    if len(raw) != 6 or crc8(raw[0:2]) != raw[2] or crc8(raw[3:5]) != raw[5]:
        raise SensorError("crc")
    t = int.from_bytes(raw[0:2], "big")
    h = int.from_bytes(raw[3:5], "big")
    return round(-45.0 + 175.0 * t / 65535, 2), round(100.0 * h / 65535, 2)


class SHT3x:
    def __init__(self, i2c, address=0x44):
        self.i2c = i2c
        self.address = address

    def measure(self):
        try:
            self.i2c.writeto(self.address, MEASURE_HIGH)
            sleep_ms(16)
            raw = self.i2c.readfrom(self.address, 6)
        except OSError:
            raise SensorError("no_ack")
        return decode(raw)
