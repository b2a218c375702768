"""Hardware of the real board (RP2040, e.g. a Raspberry Pi Pico in the cabinet). Pin map:

    GP0/GP1  UART0 TX/RX  ── host UART (Pi GPIO15 RXD / GPIO14 TXD), 115200 8N1
    GP2      relay coil (through a transistor); high = relay energised = host power CUT
             (the host is on the relay's normally-closed contact: a dead board leaves it powered)
    GP3      tamper switch to GND, pull-up; door closed = switch closed = low
    GP4/GP5  I2C0 SDA/SCL ── SHT31 at 0x44 (3.3 V, 4.7 kΩ pull-ups)
    GP6      fan MOSFET gate (high = on)
    GP7      fan tachometer (open collector, pull-up; 2 pulses per turn)
    GP8      traffic-signal red lamp through an optocoupler, pull-up; lamp on = low
    GP9      "network" LED;  GP25 on-board LED = status
    GP26     ADC0 ── supply voltage through a 100 kΩ / 22 kΩ divider (12 V UPS bus)

See docs/iobus.md for the wiring diagram.
"""

import json
import time

import machine

from cabinet.sht3x import SHT3x

DIVIDER = (100.0 + 22.0) / 22.0
STATE_FILE = "/wdstate.json"


class MachineHal:
    name = "rp2040"

    def __init__(self):
        Pin = machine.Pin
        self.uart = machine.UART(0, 115200, tx=Pin(0), rx=Pin(1), rxbuf=1024)
        self.relay = Pin(2, Pin.OUT, value=0)
        self.tamper = Pin(3, Pin.IN, Pin.PULL_UP)
        self.sensor = SHT3x(machine.I2C(0, sda=Pin(4), scl=Pin(5), freq=100_000))
        self.fan = Pin(6, Pin.OUT, value=0)
        self._pulses = 0
        self._tach_at = time.ticks_ms()
        Pin(7, Pin.IN, Pin.PULL_UP).irq(self._tach, Pin.IRQ_FALLING)
        self.signal = Pin(8, Pin.IN, Pin.PULL_UP)
        self.leds = {"net": Pin(9, Pin.OUT, value=0), "status": Pin(25, Pin.OUT, value=0)}
        self.adc = machine.ADC(26)
        self.wdt = machine.WDT(timeout=8000)

    def _tach(self, _pin):
        self._pulses += 1

    def now(self):
        return time.ticks_ms()

    def stopped(self):
        return False

    def idle(self, ms):
        deadline = time.ticks_add(time.ticks_ms(), ms)
        while not self.uart.any() and time.ticks_diff(deadline, time.ticks_ms()) > 0:
            time.sleep_ms(1)

    def read(self):
        return self.uart.read() or b""

    def write(self, data):
        self.uart.write(data)

    def tamper_open(self):
        return self.tamper.value() == 1

    def signal_red(self):
        return self.signal.value() == 0

    def read_sensor(self):
        return self.sensor.measure()

    def battery_v(self):
        return round(self.adc.read_u16() * 3.3 / 65535 * DIVIDER, 2)

    def fan_rpm(self):
        now = time.ticks_ms()
        elapsed = time.ticks_diff(now, self._tach_at)
        pulses, self._pulses, self._tach_at = self._pulses, 0, now
        return int(pulses * 30000 / elapsed) if elapsed > 0 else 0

    def set_fan(self, on):
        self.fan.value(1 if on else 0)

    def set_relay(self, powered):
        self.relay.value(0 if powered else 1)

    def set_led(self, name, mode):
        self.leds[name].value(0 if mode == "off" else 1)

    def feed_wdt(self):
        self.wdt.feed()

    def maintenance(self, ms):
        """The main loop stopped for the REPL: feed the watchdog from a timer for ``ms``, then stop
        feeding it, so the board restarts into its firmware."""
        until = time.ticks_add(time.ticks_ms(), ms)

        def feed(timer):
            if time.ticks_diff(until, time.ticks_ms()) > 0:
                self.wdt.feed()
            else:
                timer.deinit()

        self._maintenance = machine.Timer(period=1000, mode=machine.Timer.PERIODIC, callback=feed)

    def load_state(self):
        try:
            with open(STATE_FILE) as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return {}

    def save_state(self, state):
        with open(STATE_FILE + ".tmp", "w") as handle:
            json.dump(state, handle)
        import os

        os.rename(STATE_FILE + ".tmp", STATE_FILE)
