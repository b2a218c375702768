"""Pure cores: debouncing, the host watchdog, fan, overheat, supply, SHT3x decoding."""

from cabinet import sht3x
from cabinet.debounce import Debouncer
from cabinet.fan import FAULT_AFTER_MS, Fan, Overheat
from cabinet.power import Supply
from cabinet.watchdog import ARMED, BACKOFF, GRACE, IDLE, OFF, HostWatchdog
from mptest import TestCase

CFG = {"wd_timeout_s": 60, "wd_off_ms": 5000, "wd_max_resets": 2, "wd_backoff_s": 600, "boot_grace_s": 120}


class DebounceTests(TestCase):
    def test_bounce_shorter_than_the_window_is_ignored(self):
        d = Debouncer(50, False)
        self.assertFalse(d.update(True, 0))
        self.assertFalse(d.update(False, 20))
        self.assertFalse(d.update(True, 30))
        self.assertFalse(d.update(True, 79))
        self.assertTrue(d.update(True, 80))
        self.assertTrue(d.value)
        self.assertEqual(d.changed_at, 30)  # the edge, not the confirmation


class WatchdogTests(TestCase):
    def setUp(self):
        self.state = {}
        self.wd = HostWatchdog(dict(CFG), self.state)

    def test_not_armed_before_the_first_heartbeat(self):
        self.assertEqual(self.wd.step(10_000_000), [])
        self.assertEqual(self.wd.mode, IDLE)

    def test_silence_power_cycles_and_records_why(self):
        self.wd.heartbeat(0)
        self.assertEqual(self.wd.step(59_999), [])
        self.assertEqual(self.wd.step(60_000), [False])
        self.assertEqual(self.wd.mode, OFF)
        self.assertEqual(self.state["host_reset"]["cause"], "heartbeat_lost")
        self.assertEqual(self.state["host_reset"]["silence_s"], 60)
        self.assertTrue(self.wd.dirty)
        self.assertEqual(self.wd.step(64_999), [])
        self.assertEqual(self.wd.step(65_000), [True])
        self.assertEqual(self.wd.mode, GRACE)
        self.wd.heartbeat(70_000)  # the host came back
        self.assertEqual(self.wd.mode, ARMED)
        self.assertEqual(self.state["consecutive"], 0)

    def test_consecutive_resets_back_off_exponentially(self):
        self.wd.heartbeat(0)
        now = 60_000
        self.assertEqual(self.wd.step(now), [False])
        now += 5000
        self.assertEqual(self.wd.step(now), [True])
        now += 120_000  # no heartbeat in the grace time
        self.assertEqual(self.wd.step(now), [False])
        now += 5000
        self.assertEqual(self.wd.step(now), [True])
        now += 120_000
        self.assertEqual(self.wd.step(now), [])  # 2 resets done: back off 600 s first
        self.assertEqual(self.wd.mode, BACKOFF)
        self.assertEqual(self.wd.step(now + 599_999), [])
        self.assertEqual(self.wd.step(now + 600_000), [False])
        self.assertEqual(self.state["consecutive"], 3)
        now += 600_000 + 5000
        self.assertEqual(self.wd.step(now), [True])
        now += 120_000
        self.assertEqual(self.wd.step(now), [])
        self.assertEqual(self.wd.until - now, 1_200_000)  # doubled

    def test_disarm_stops_it(self):
        self.wd.heartbeat(0)
        self.wd.disarm()
        self.assertEqual(self.wd.step(1_000_000), [])

    def test_wraps_of_the_tick_counter(self):
        try:
            from time import ticks_add
        except ImportError:
            return
        start = ticks_add(0, -1000)  # just before the counter wraps
        self.wd.heartbeat(start)
        self.assertEqual(self.wd.step(ticks_add(start, 59_999)), [])
        self.assertEqual(self.wd.step(ticks_add(start, 60_000)), [False])


class FanTests(TestCase):
    def test_hysteresis(self):
        fan = Fan(45.0, 40.0)
        self.assertEqual(fan.update(44.9, 0, 0)[0], False)
        self.assertEqual(fan.update(45.0, 2400, 0)[0], True)
        self.assertEqual(fan.update(41.0, 2400, 1000)[0], True)
        self.assertEqual(fan.update(39.9, 2400, 2000)[0], False)

    def test_tach_fault_once_per_fan_on(self):
        fan = Fan(45.0, 40.0)
        fan.update(50.0, 0, 0)
        self.assertIsNone(fan.update(50.0, 0, FAULT_AFTER_MS - 1)[1])
        self.assertEqual(fan.update(50.0, 0, FAULT_AFTER_MS)[1], "fault")
        self.assertIsNone(fan.update(50.0, 0, FAULT_AFTER_MS * 2)[1])

    def test_overheat_once_then_cleared(self):
        hot = Overheat(60.0)
        seen = [hot.update(t) for t in (59.0, 60.0, 61.0, 62.0, 56.0, 54.9, 61.0)]
        self.assertEqual(seen, [None, "overheat", None, None, None, "overheat_cleared", "overheat"])


class SupplyTests(TestCase):
    def test_on_battery_low_and_restored(self):
        s = Supply(11.5, 11.0)
        self.assertEqual(s.update(13.0), [])
        self.assertEqual(s.update(11.4), ["power"])
        self.assertEqual(s.update(11.6), [])  # inside the hysteresis
        self.assertEqual(s.update(10.9), ["low_battery"])
        self.assertEqual(s.update(10.8), [])
        self.assertEqual(s.update(12.0), ["power"])
        self.assertFalse(s.on_battery)


class Sht3xTests(TestCase):
    def test_encode_decode_and_crc(self):
        self.assertEqual(sht3x.crc8(b"\xbe\xef"), 0x92)  # the datasheet's example
        temp, rh = sht3x.decode(sht3x.encode(23.5, 41.0))
        self.assertTrue(abs(temp - 23.5) < 0.01 and abs(rh - 41.0) < 0.01)
        raw = bytearray(sht3x.encode(23.5, 41.0))
        raw[4] ^= 1
        self.assertRaises(sht3x.SensorError, sht3x.decode, bytes(raw))

    def test_no_sensor_on_the_bus(self):
        class Dead:
            def writeto(self, address, data):
                raise OSError(19)

        self.assertRaises(sht3x.SensorError, sht3x.SHT3x(Dead()).measure)
