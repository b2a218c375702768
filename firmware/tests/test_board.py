"""The board with an in-memory hardware layer: operations, events, watchdog, memory."""

import gc

from cabinet.board import Board
from cabinet.sht3x import SensorError
from iob import frame
from mptest import TestCase


class FakeHal:
    name = "fake"

    def __init__(self):
        self.t = 0
        self.rx = b""
        self.sent = []
        self.tamper = False
        self.red = False
        self.temp = 30.0
        self.volts = 13.2
        self.rpm = 2400
        self.sensor_fail = None
        self.fan = False
        self.relay = []
        self.state = {}
        self.leds = {}

    def now(self):
        return self.t

    def read(self):
        data, self.rx = self.rx, b""
        return data

    def write(self, data):
        self.sent.append(data)

    def tamper_open(self):
        return self.tamper

    def signal_red(self):
        return self.red

    def read_sensor(self):
        if self.sensor_fail:
            raise SensorError(self.sensor_fail)
        return self.temp, 50.0

    def battery_v(self):
        return self.volts

    def fan_rpm(self):
        return self.rpm if self.fan else 0

    def set_fan(self, on):
        self.fan = on

    def set_relay(self, powered):
        self.relay.append(powered)

    def set_led(self, name, mode):
        self.leds[name] = mode

    def feed_wdt(self):
        pass

    def maintenance(self, ms):
        self.maintenance_ms = ms

    def load_state(self):
        return dict(self.state)

    def save_state(self, state):
        self.state = dict(state)


class BoardTests(TestCase):
    def setUp(self):
        self.hal = FakeHal()
        self.board = Board(self.hal, 0)
        self.next_id = 1

    def run_for(self, ms, step=10):
        end = self.hal.t + ms
        while self.hal.t < end:
            self.hal.t += step
            self.board.step(self.hal.t)

    def ask(self, op, **args):
        msgid = self.next_id
        self.next_id += 1
        self.hal.sent = []
        req = {"op": op}
        req.update(args)
        self.hal.rx = frame.encode(frame.REQ, msgid, req)
        self.board.step(self.hal.t)
        for kind, mid, payload in self.frames():
            if kind == frame.RSP and mid == msgid:
                return payload
        raise AssertionError("no answer to " + op)

    def frames(self):
        out = []
        decoder = frame.Decoder()
        for data in self.hal.sent:
            decoder.feed(data, out)
        return out

    def events(self):
        return [(mid, p) for kind, mid, p in self.frames() if kind == frame.EVT]

    def test_hello_counts_boots_and_reports_the_last_host_reset(self):
        hello = self.ask("hello")
        self.assertEqual((hello["fw"], hello["proto"], hello["boot"]), ("1.0.0", 1, 1))
        self.assertIsNone(hello["host_reset"])
        self.assertEqual(self.ask("hb")["boot"], 1)  # every heartbeat tells the host which boot
        again = Board(self.hal, 0)  # a reboot of the board: the count is in flash
        self.assertEqual(again.state["boot"], 2)

    def test_ctrl_c_for_the_repl_keeps_the_host_powered_and_the_watchdog_fed(self):
        from cabinet.board import MAINTENANCE_MS, run

        hal = self.hal
        hal.relay = []
        calls = [0]

        def stopped():
            calls[0] += 1
            if calls[0] > 3:
                raise KeyboardInterrupt  # what mpremote's Ctrl-C does to the loop
            return False

        hal.stopped = stopped
        hal.idle = lambda ms: None
        self.assertRaises(KeyboardInterrupt, run, hal)
        self.assertEqual(hal.relay[-1], True)
        self.assertEqual(hal.maintenance_ms, MAINTENANCE_MS)

    def test_tamper_is_debounced_latched_and_resent_until_acked(self):
        self.hal.sent = []
        self.hal.tamper = True
        self.run_for(100)
        events = self.events()
        self.assertEqual(events[0][1]["ev"], "tamper")
        self.assertEqual(events[0][1]["state"], "open")
        self.hal.tamper = False
        self.run_for(100)
        self.assertTrue(self.ask("status")["tamper_latched"])
        self.assertFalse(self.ask("ack_tamper")["tamper_latched"])
        self.hal.sent = []
        self.run_for(600)
        resent = [p["ev"] for _m, p in self.events()]
        self.assertIn("tamper", resent)  # never acknowledged: resent

    def test_overheat_turns_the_fan_on_and_is_told_once(self):
        self.hal.sent = []
        self.hal.temp = 70.0
        self.run_for(5000, step=100)
        kinds = [p["ev"] for _m, p in self.events()]
        ids = set(m for m, p in self.events() if p["ev"] == "overheat")
        self.assertTrue(self.hal.fan)
        self.assertEqual(len(ids), 1)
        self.assertIn("overheat", kinds)

    def test_heartbeat_loss_power_cycles_the_host(self):
        self.ask("config", wd_timeout_s=2, wd_off_ms=300, boot_grace_s=5)
        self.ask("hb")
        self.run_for(2500, step=50)
        self.assertEqual(self.hal.relay[-2:], [False, True])
        reset = self.ask("hello")["host_reset"]
        self.assertEqual(reset["cause"], "heartbeat_lost")
        self.assertEqual(self.hal.state["host_reset"]["count"], 1)
        self.ask("clear_reset")
        self.assertIsNone(self.ask("hello")["host_reset"])

    def test_bad_config_and_unknown_operation_are_refused_in_words(self):
        self.assertIn("unknown setting", self.ask("config", wd_timeout=5)["error"])
        self.assertIn("below", self.ask("config", fan_off_c=50)["error"])
        self.assertIn("unknown operation", self.ask("dance")["error"])

    def test_sensor_fault_is_told_once(self):
        self.hal.sent = []
        self.hal.sensor_fail = "crc"
        self.run_for(3500, step=100)
        faults = set(m for m, p in self.events() if p["ev"] == "sensor_fault")
        self.assertEqual(len(faults), 1)
        self.assertFalse(self.ask("status")["sensor_ok"])

    def test_memory_stays_flat_over_10000_frames(self):
        req = frame.encode(frame.REQ, 1, {"op": "status"})
        reqs = [frame.encode(frame.REQ, i % 60000 + 1, {"op": "hb"}) for i in range(8)]
        for _ in range(200):  # warm up caches and queues
            self.hal.rx = req
            self.board.step(self.hal.t)
        self.hal.sent = []
        gc.collect()
        before = gc.mem_free()
        for i in range(10000):
            self.hal.t += 1
            self.hal.rx = reqs[i % 8] if i % 2 else req
            self.board.step(self.hal.t)
            if len(self.hal.sent) > 16:
                self.hal.sent = []
        gc.collect()
        after = gc.mem_free()
        self.assertTrue(before - after < 2048, "heap shrank by %d bytes" % (before - after))
