"""UPS supply voltage: on battery below on_battery_v (0.3 V hysteresis), low battery once per period."""

HYSTERESIS_V = 0.3


class Supply:
    def __init__(self, on_battery_v, low_battery_v):
        self.on_battery_v = on_battery_v
        self.low_battery_v = low_battery_v
        self.on_battery = False
        self.low = False

    def update(self, volts):
        """Returns the events due: "power" (on_battery changed) and/or "low_battery"."""
        events = []
        if volts is None:
            return events
        if not self.on_battery and volts < self.on_battery_v:
            self.on_battery = True
            events.append("power")
        elif self.on_battery and volts >= self.on_battery_v + HYSTERESIS_V:
            self.on_battery = False
            self.low = False
            events.append("power")
        if self.on_battery and not self.low and volts < self.low_battery_v:
            self.low = True
            events.append("low_battery")
        return events
