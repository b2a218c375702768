"""The board: inputs → events, sensors → fan and alarms, host requests → answers, the watchdog.

Everything the board touches comes through ``hal`` (cabinet.hal_machine on the RP2040,
cabinet.hal_unix under the MicroPython unix port); ``step(now)`` does one pass and never blocks.
"""

from cabinet import FIRMWARE_VERSION
from cabinet.debounce import Debouncer
from cabinet.fan import Fan, Overheat
from cabinet.power import Supply
from cabinet.sht3x import SensorError
from cabinet.ticks import ticks_add, ticks_diff
from cabinet.watchdog import ARMED, BACKOFF, GRACE, OFF, HostWatchdog
from iob.engine import Engine

PROTO = 1
SENSE_MS = 1000
DEFAULTS = {
    "wd_timeout_s": 60,
    "wd_off_ms": 5000,
    "wd_max_resets": 3,
    "wd_backoff_s": 600,
    "boot_grace_s": 120,
    "fan_on_c": 45.0,
    "fan_off_c": 40.0,
    "overheat_c": 60.0,
    "on_battery_v": 11.5,
    "low_battery_v": 11.0,
}
_INTS = ("wd_timeout_s", "wd_off_ms", "wd_max_resets", "wd_backoff_s", "boot_grace_s")
_LIMITS = {
    "wd_timeout_s": (1, 3600),
    "wd_off_ms": (50, 60000),
    "wd_max_resets": (0, 100),
    "wd_backoff_s": (1, 86400),
    "boot_grace_s": (1, 3600),
}


class Board:
    def __init__(self, hal, now):
        self.hal = hal
        self.cfg = dict(DEFAULTS)
        state = hal.load_state()
        self.state = state if isinstance(state, dict) else {}
        self.state["boot"] = self.state.get("boot", 0) + 1
        hal.save_state(self.state)
        self.started = now
        self.engine = Engine(hal.write, self.dispatch)
        self.wd = HostWatchdog(self.cfg, self.state)
        self.tamper = Debouncer(50, hal.tamper_open())
        self.latched = self.tamper.value
        self.phase = Debouncer(20, hal.signal_red())
        self._build_thresholds()
        self.temp_c = None
        self.rh = None
        self.sensor_ok = True
        self._sensor_fault_told = False
        self.fan_rpm = None
        self.battery_v = None
        self.next_sense = now
        self.relay_on = True
        hal.set_relay(True)
        self.leds = {"status": "on", "net": "off"}
        hal.set_led("status", "on")

    def _build_thresholds(self):
        cfg = self.cfg
        self.fan = Fan(cfg["fan_on_c"], cfg["fan_off_c"])
        self.overheat = Overheat(cfg["overheat_c"])
        self.supply = Supply(cfg["on_battery_v"], cfg["low_battery_v"])

    # -- one pass ------------------------------------------------------------------------------

    def step(self, now):
        data = self.hal.read()
        if data:
            self.engine.feed(data, now)
        if self.tamper.update(self.hal.tamper_open(), now):
            opened = self.tamper.value
            if opened:
                self.latched = True
            state = "open" if opened else "closed"
            self._event({"ev": "tamper", "state": state, "t": self.tamper.changed_at}, now, keep=True)
        if self.phase.update(self.hal.signal_red(), now):
            phase = "red" if self.phase.value else "green"
            self._event({"ev": "phase", "phase": phase, "t": self.phase.changed_at}, now)
        if ticks_diff(now, self.next_sense) >= 0:
            self.next_sense = ticks_add(now, SENSE_MS)
            self._sense(now)
        for powered in self.wd.step(now):
            self.relay_on = powered
            self.hal.set_relay(powered)
        if self.wd.dirty:
            self.wd.dirty = False
            self.hal.save_state(self.state)
        self.engine.poll(now)
        self.hal.feed_wdt()

    def _event(self, payload, now, keep=False):
        self.engine.emit(payload, now, keep)

    def _sense(self, now):
        hal = self.hal
        try:
            self.temp_c, self.rh = hal.read_sensor()
            self.sensor_ok = True
            self._sensor_fault_told = False
        except SensorError as exc:
            self.temp_c = self.rh = None
            self.sensor_ok = False
            if not self._sensor_fault_told:
                self._sensor_fault_told = True
                self._event({"ev": "sensor_fault", "error": exc.args[0], "t": now}, now)
        self.fan_rpm = hal.fan_rpm()
        on, fault = self.fan.update(self.temp_c, self.fan_rpm, now)
        hal.set_fan(on)
        if fault:
            self._event({"ev": "fan_fault", "fan_rpm": self.fan_rpm, "t": now}, now)
        alarm = self.overheat.update(self.temp_c)
        if alarm:
            self._event({"ev": alarm, "temp_c": self.temp_c, "t": now}, now)
        self.battery_v = hal.battery_v()
        for kind in self.supply.update(self.battery_v):
            payload = {"ev": kind, "battery_v": self.battery_v, "t": now}
            if kind == "power":
                payload["on_battery"] = self.supply.on_battery
            self._event(payload, now)

    # -- requests ------------------------------------------------------------------------------

    def dispatch(self, payload):
        op = payload.get("op")
        handler = _OPS.get(op)
        if handler is None:
            return {"ok": False, "error": "unknown operation '%s'" % op}
        return handler(self, payload)

    def op_hello(self, _req):
        now = self.hal.now()
        return {
            "ok": True,
            "fw": FIRMWARE_VERSION,
            "proto": PROTO,
            "board": self.hal.name,
            "uptime_ms": ticks_diff(now, self.started),
            "boot": self.state.get("boot", 0),
            "host_reset": self.state.get("host_reset"),
        }

    def op_clear_reset(self, _req):
        if self.state.get("host_reset") is not None:
            self.state["host_reset"] = None
            self.hal.save_state(self.state)
        return {"ok": True}

    def op_hb(self, _req):
        now = self.hal.now()
        self.wd.heartbeat(now)
        if self.wd.dirty:
            self.wd.dirty = False
            self.hal.save_state(self.state)
        return {"ok": True, "t": now, "boot": self.state.get("boot", 0)}

    def op_status(self, _req):
        return {
            "ok": True,
            "t": self.hal.now(),
            "temp_c": self.temp_c,
            "rh": self.rh,
            "sensor_ok": self.sensor_ok,
            "fan": self.fan.on,
            "fan_rpm": self.fan_rpm,
            "tamper": "open" if self.tamper.value else "closed",
            "tamper_latched": self.latched,
            "battery_v": self.battery_v,
            "on_battery": self.supply.on_battery,
            "low_battery": self.supply.low,
            "phase": "red" if self.phase.value else "green",
            "wd": {
                "armed": self.wd.mode in (ARMED, OFF, GRACE, BACKOFF),
                "timeout_s": self.cfg["wd_timeout_s"],
                "resets": self.state.get("resets", 0),
            },
        }

    def op_ack_tamper(self, _req):
        self.latched = self.tamper.value  # stays set while the door is open
        return {"ok": True, "tamper_latched": self.latched}

    def op_config(self, req):
        new = dict(self.cfg)
        for key, value in req.items():
            if key == "op":
                continue
            if key not in DEFAULTS:
                return {"ok": False, "error": "unknown setting '%s'" % key}
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return {"ok": False, "error": "setting '%s' must be a number" % key}
            if key in _INTS:
                value = int(value)
                low, high = _LIMITS[key]
                if not low <= value <= high:
                    return {"ok": False, "error": "setting '%s' must be %d..%d" % (key, low, high)}
            new[key] = value
        if new["fan_off_c"] >= new["fan_on_c"]:
            return {"ok": False, "error": "fan_off_c must be below fan_on_c"}
        if new["low_battery_v"] > new["on_battery_v"]:
            return {"ok": False, "error": "low_battery_v must not be above on_battery_v"}
        self.cfg.update(new)
        fan_on, hot, on_battery, low = self.fan.on, self.overheat.hot, self.supply.on_battery, self.supply.low
        self._build_thresholds()
        self.fan.on, self.overheat.hot = fan_on, hot
        self.supply.on_battery, self.supply.low = on_battery, low
        return {"ok": True, "config": self.cfg}

    def op_led(self, req):
        name, mode = req.get("name"), req.get("mode")
        if name not in ("status", "net") or mode not in ("on", "off", "blink"):
            return {"ok": False, "error": "led needs name status|net and mode on|off|blink"}
        self.leds[name] = mode
        self.hal.set_led(name, mode)
        return {"ok": True}

    def op_wd_disarm(self, _req):
        self.wd.disarm()
        return {"ok": True}


_OPS = {
    "hello": Board.op_hello,
    "clear_reset": Board.op_clear_reset,
    "hb": Board.op_hb,
    "status": Board.op_status,
    "ack_tamper": Board.op_ack_tamper,
    "config": Board.op_config,
    "led": Board.op_led,
    "wd_disarm": Board.op_wd_disarm,
}


MAINTENANCE_MS = 600000


def run(hal):
    """The main loop: one pass, then wait for the UART up to 10 ms.

    mpremote (flashing, ``firmware status``) stops the loop with Ctrl-C to reach the REPL: the host
    stays powered and the hardware watchdog is fed for MAINTENANCE_MS, after which it restarts the
    board into its firmware (a flash that never finished cannot leave the board in the REPL)."""
    board = Board(hal, hal.now())
    try:
        while not hal.stopped():
            board.step(hal.now())
            hal.idle(10)
    except KeyboardInterrupt:
        hal.set_relay(True)
        hal.maintenance(MAINTENANCE_MS)
        raise
    return board
