"""Hardware of the software-in-the-loop board (MicroPython unix port).

UART: stdin/stdout (the SIL launcher connects them to a pty). Inputs (tamper, temperature,
humidity, supply voltage, signal, fan tach, sensor failure) come from the JSON file named by
CITYEDGE_IOB_INPUTS, re-read every 50 ms; outputs (relay, fan, LEDs, relay cycles) go to the
JSON file named by CITYEDGE_IOB_OUTPUTS; "flash" is the folder CITYEDGE_IOB_FLASH. The SHT3x is
reached through a simulated I2C bus answering with real SHT3x bytes, so the real driver runs.
"""

import json
import os
import select
import sys
import time

from cabinet.sht3x import SHT3x, encode

DEFAULT_INPUTS = {
    "tamper": "closed",
    "temp_c": 30.0,
    "rh": 55.0,
    "battery_v": 13.2,
    "phase": "green",
    "fan_rpm_when_on": 2400,
    "sensor_fail": False,
}


class SimI2C:
    """Answers like an SHT3x at 0x44 from the current inputs ("sensor_fail": bad CRC)."""

    def __init__(self, hal):
        self.hal = hal

    def writeto(self, address, data):
        if address != 0x44:
            raise OSError(19)

    def readfrom(self, address, count):
        inputs = self.hal.inputs
        raw = bytearray(encode(float(inputs["temp_c"]), float(inputs["rh"])))
        if inputs.get("sensor_fail"):
            raw[2] ^= 0xFF
        return bytes(raw[:count])


class UnixHal:
    name = "unix"

    def __init__(self):
        self.inputs_path = os.getenv("CITYEDGE_IOB_INPUTS") or "iob-inputs.json"
        self.outputs_path = os.getenv("CITYEDGE_IOB_OUTPUTS") or "iob-outputs.json"
        self.flash = os.getenv("CITYEDGE_IOB_FLASH") or "."
        self.inputs = dict(DEFAULT_INPUTS)
        self._next_inputs = 0
        self.outputs = {"relay": True, "fan": False, "leds": {}, "relay_cycles": 0}
        self._poll = select.poll()
        self._poll.register(sys.stdin, select.POLLIN)
        self._in = sys.stdin.buffer
        self._out = sys.stdout.buffer
        self._closed = False
        self.sensor = SHT3x(SimI2C(self))
        self._reload_inputs()
        self._write_outputs()

    # time
    def now(self):
        return time.ticks_ms()

    def stopped(self):
        return self._closed

    def idle(self, ms):
        for _fd, ev in self._poll.poll(ms):
            if ev & (select.POLLHUP | select.POLLERR) and not ev & select.POLLIN:
                time.sleep_ms(ms)  # the host side is closed for now: wait, do not spin

    # UART
    def read(self):
        data = b""
        while True:
            ready = self._poll.poll(0)
            if not ready or not ready[0][1] & select.POLLIN:
                return data
            chunk = self._in.read(1)
            if not chunk:
                self._closed = True
                return data
            data += chunk
            if len(data) >= 256:
                return data

    def write(self, data):
        self._out.write(data)
        self._out.flush()

    # inputs
    def _reload_inputs(self):
        # Re-read every time (50 ms apart): the unix port's stat() has whole-second mtimes.
        try:
            with open(self.inputs_path) as handle:
                loaded = json.load(handle)
        except (OSError, ValueError):
            return  # missing or being replaced: keep the last inputs
        self.inputs = dict(DEFAULT_INPUTS)
        self.inputs.update(loaded)

    def _fresh(self):
        now = time.ticks_ms()
        if time.ticks_diff(now, self._next_inputs) >= 0:
            self._next_inputs = time.ticks_add(now, 50)
            self._reload_inputs()
        return self.inputs

    def tamper_open(self):
        return self._fresh()["tamper"] == "open"

    def signal_red(self):
        return self._fresh()["phase"] == "red"

    def read_sensor(self):
        self._fresh()
        return self.sensor.measure()

    def battery_v(self):
        return float(self._fresh()["battery_v"])

    def fan_rpm(self):
        return int(self._fresh()["fan_rpm_when_on"]) if self.outputs["fan"] else 0

    # outputs
    def _write_outputs(self):
        tmp = self.outputs_path + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(self.outputs, handle)
        os.rename(tmp, self.outputs_path)

    def set_fan(self, on):
        if self.outputs["fan"] != on:
            self.outputs["fan"] = on
            self._write_outputs()

    def set_relay(self, powered):
        if self.outputs["relay"] != powered:
            self.outputs["relay"] = powered
            if not powered:
                self.outputs["relay_cycles"] += 1
            self._write_outputs()

    def set_led(self, name, mode):
        self.outputs["leds"][name] = mode
        self._write_outputs()

    def feed_wdt(self):
        pass

    def maintenance(self, ms):
        pass  # no hardware watchdog on the unix port

    # flash
    def load_state(self):
        try:
            with open(self.flash + "/wdstate.json") as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return {}

    def save_state(self, state):
        path = self.flash + "/wdstate.json"
        with open(path + ".tmp", "w") as handle:
            json.dump(state, handle)
        os.rename(path + ".tmp", path)
