"""The paho adapter in this test process against a real mosquitto: in-flight accounting through
paho's public on_publish callback, across a broker outage."""

from __future__ import annotations

import time
from typing import Any

from edgepose.config import MqttConfig
from edgepose.mqtt.publisher import MqttPublisher
from edgepose.mqtt.topics import Topics
from tests.conftest import Broker


def wait_until(condition: Any, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def make_publisher(broker: Broker) -> MqttPublisher:
    config = MqttConfig(host=broker.host, port=broker.port, reconnect_min_s=0.2, reconnect_max_s=1.0)
    return MqttPublisher(config, Topics(config.base_topic, "pub"), "edgepose-pub-test", None)


def test_in_flight_counts_until_on_publish_and_survives_an_outage(broker: Broker, subscribe: Any) -> None:
    collector = subscribe(broker, "edgepose/pub/#")
    publisher = make_publisher(broker)
    publisher.start()
    try:
        assert wait_until(lambda: publisher.stats.connected)
        for index in range(50):
            assert publisher.publish("edgepose/pub/n", str(index).encode(), qos=1)
        assert wait_until(lambda: publisher.queued() == 0), publisher.queued()
        assert len(collector.wait_for("pub/n", 50, timeout_s=5)) == 50

        broker.stop()
        assert wait_until(lambda: not publisher.stats.connected)
        assert not publisher.publish("edgepose/pub/lost", b"x", qos=0)  # refused and counted, not queued
        for index in range(5):
            assert publisher.publish("edgepose/pub/later", str(index).encode(), qos=1)
        assert publisher.queued() == 5  # kept by paho for the next connection
        assert publisher.stats.publish_refused == 1

        broker.start()
        assert wait_until(lambda: publisher.stats.connected, 15.0)
        assert wait_until(lambda: publisher.queued() == 0), publisher.queued()
    finally:
        publisher.stop()
    assert publisher.queued() == 0
