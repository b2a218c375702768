from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleet.broker import MosquittoBroker


def test_retained_message_survives_broker_restart(broker: MosquittoBroker) -> None:
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t-pub", protocol=mqtt.MQTTv5)
    pub.connect(broker.config.host, broker.config.port)
    pub.loop_start()
    pub.publish("x/y", b"hello", qos=1, retain=True).wait_for_publish(5)
    pub.loop_stop()
    pub.disconnect()
    broker.restart()
    got = threading.Event()
    seen: list[bytes | bytearray] = []

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        seen.append(msg.payload)
        got.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t-sub", protocol=mqtt.MQTTv5)
    sub.on_message = on_message
    sub.connect(broker.config.host, broker.config.port)
    sub.subscribe("x/y", qos=1)
    sub.loop_start()
    assert got.wait(5)
    sub.loop_stop()
    sub.disconnect()
    assert seen == [b"hello"]
