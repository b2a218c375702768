"""Events through the agent outbox to a private mosquitto vs a bare paho QoS 1 publisher.

* ours: ``--events`` events are stored in the outbox (WAL, synchronous=FULL) while the link is
  down, then the link connects and the sender drains them: seq order, ``--window`` in flight,
  each row deleted (group commit) on its PUBACK. The clock runs from CONNACK until the outbox is
  empty, so an event counts as delivered only once PUBACKed *and* deleted.
* baseline: a bare paho-mqtt 2.x client (MQTT v5, loop_start) publishing the same envelopes at
  QoS 1 with the same in-flight window; the clock runs until the last PUBACK.

    python -m bench.agent_throughput [--runs 3] [--events 20000] [--window 100]
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import MqttSection, OutboxSection
from agent.link import Link
from agent.outbox import Outbox
from agent.sender import OutboxSender
from bench.common import exit_on_sigterm, parser, report
from fleet.broker import MosquittoBroker

DEVICE = "bench-device-01"
DATA = {"rule": "red_light", "lane": 2, "speed_kmh": 41.5, "track": 1234, "frames": [1, 2, 3, 4, 5, 6, 7, 8]}


def fill(box: Outbox, events: int) -> None:
    threads = 32

    def emitter() -> None:
        for _ in range(events // threads):
            box.enqueue("camera.count", DATA)

    workers = [threading.Thread(target=emitter) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def run_ours(broker: MosquittoBroker, events: int, window: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        box = Outbox(Path(tmp) / "outbox.db", DEVICE, OutboxSection(max_events=10**7), None)
        fill(box, events)
        total = box.depth
        holder: list[OutboxSender] = []
        settings = MqttSection.model_validate({"broker": broker.url, "inflight_window": window})
        link = Link(
            settings, DEVICE, {"role": "camera"}, lambda _t, _p: None, lambda *a: holder[0].on_ack(*a)
        )
        sender = OutboxSender(box, link, window)
        holder.append(sender)
        connected = threading.Event()
        link.add_connect_hook(connected.set)
        sender.start()
        link.start()
        connected.wait(30)
        start = time.perf_counter()
        while box.depth > 0:
            time.sleep(0.002)
        elapsed = time.perf_counter() - start
        link.stop()
        sender.stop()
        box.close()
    return total / elapsed


def run_baseline(broker: MosquittoBroker, payloads: list[bytes], window: int) -> float:
    done = threading.Event()
    acked = [0]

    def on_publish(_c: mqtt.Client, _u: object, _mid: int, _rc: object, _p: object) -> None:
        acked[0] += 1
        if acked[0] == len(payloads):
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare-paho", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(window)
    client.on_publish = on_publish
    client.connect(broker.config.host, broker.config.port)
    client.loop_start()
    time.sleep(0.2)
    topic = f"city/v1/devices/{DEVICE}/events/camera.count"
    start = time.perf_counter()
    for payload in payloads:
        client.publish(topic, payload, qos=1)
    done.wait(300)
    elapsed = time.perf_counter() - start
    client.loop_stop()
    client.disconnect()
    return len(payloads) / elapsed


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--window", type=int, default=100)
    args = p.parse_args()
    exit_on_sigterm()
    with tempfile.TemporaryDirectory() as tmp:
        broker = MosquittoBroker(Path(tmp) / "broker").start()
        try:
            with tempfile.TemporaryDirectory() as tmp2:
                sample = Outbox(Path(tmp2) / "o.db", DEVICE, OutboxSection(), None)
                sample.enqueue("camera.count", DATA)
                payload = sample.read_after(0, 1)[0].payload
                sample.close()
            payloads = [payload] * args.events
            ours, base = [], []
            for _ in range(args.runs):
                ours.append(run_ours(broker, args.events, args.window))
                base.append(run_baseline(broker, payloads, args.window))
        finally:
            broker.stop()
    print(f"{args.events} events of {len(payload)} bytes, in-flight window {args.window}, QoS 1")
    report(
        "outbox -> mosquitto (PUBACKed and deleted)",
        "events/s",
        ours,
        base,
        baseline_name="bare paho QoS 1",
        target=">= 0.8",
    )


if __name__ == "__main__":
    main()
