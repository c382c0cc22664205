"""After a flood the broker could not queue for us: the real publisher (and command handler) against
a real mosquitto, made deterministic by holding the daemon's network thread (what a loaded CPU does
by chance) while the broker's outgoing queue to the daemon fills up.

Why (docs/reliability.md, "Floods"): Debian 12's mosquitto 2.0.11 (upstream since 2.0.16)
silently drops every packet for a client whose outgoing queue holds `max_queued_messages` (1000)
packets: QoS 1 deliveries it has already counted in flight, and PUBACKs for our own messages.
Each lost delivery keeps one of our 20 in-flight slots at the broker, each lost PUBACK one of
paho's 20; with all 20 gone, no QoS 1 message moves in that direction until we reconnect."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgepose.commands import Detection, RuntimeSettings
from edgepose.config import Config, MqttConfig
from edgepose.control import QOS_SUBSCRIPTIONS, build_control
from edgepose.mqtt.homeassistant import DeviceInfo
from edgepose.mqtt.publisher import ACK_TIMEOUT_S, MqttPublisher
from edgepose.mqtt.topics import Topics
from tests.conftest import Broker
from tests.test_publisher import wait_until

pytestmark = pytest.mark.needs_mqtt5  # mosquitto's behaviour is the point (amqtt has no such queue)

DEVICE = "flood"
CLIENT_ID = f"edgepose-{DEVICE}"
SET = f"edgepose/{DEVICE}/set"
# More than mosquitto's default max_inflight_messages (20): enough to use up every in-flight slot.
MORE_THAN_THE_INFLIGHT_LIMIT = 40


@dataclass
class Hold:
    """Holds paho's network thread (in a callback) from the first call until released."""

    holding: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def __call__(self) -> None:
        if not self.holding.is_set():
            self.holding.set()
            self.release.wait(20)


@pytest.fixture
def hold() -> Iterator[Hold]:
    created = Hold()
    yield created
    created.release.set()


@pytest.fixture
def ticking() -> Iterator[Callable[[MqttPublisher], None]]:
    """Calls publisher.tick() every 0.1 s, as the daemon's supervisor does."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(publisher: MqttPublisher) -> None:
        def run() -> None:
            while not stop.wait(0.1):
                publisher.tick()

        threads.append(threading.Thread(target=run, daemon=True))
        threads[-1].start()

    yield start
    stop.set()
    for thread in threads:
        thread.join(5)


@pytest.fixture
def flooder(broker: Broker) -> Iterator[mqtt.Client]:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="flooder")
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


@pytest.fixture
def publisher(broker: Broker) -> Iterator[MqttPublisher]:
    created = MqttPublisher(MqttConfig(host=broker.host, port=broker.port), Topics("edgepose", DEVICE), CLIENT_ID, None)
    created.start()
    assert wait_until(lambda: created.stats.connected, 10)
    yield created
    created.stop(timeout_s=0.5)


def fill_the_brokers_queue(broker: Broker, flooder: mqtt.Client, hold: Hold, first: bytes = b"hold") -> None:
    """Send `first` until it holds our network thread (the subscription is made once connected),
    then bad commands at QoS 0 until mosquitto says its queue for us is full (each batch is followed
    by a QoS 1 message elsewhere, acknowledged once the broker has handled the batch)."""

    def sent_and_held() -> bool:
        flooder.publish(SET, first, qos=1).wait_for_publish(5)
        return hold.holding.wait(0.5)

    assert wait_until(sent_and_held, 10), "nothing reached the network thread"
    deadline = time.monotonic() + 20
    while f"Outgoing messages are being dropped for client {CLIENT_ID}" not in broker.log_path.read_text():
        assert time.monotonic() < deadline, "the broker's queue for us never filled up"
        for _ in range(100):
            flooder.publish(SET, b"x" * 8000, qos=0)
        flooder.publish("elsewhere", b"", qos=1).wait_for_publish(5)


def test_the_command_subscription_survives_deliveries_the_broker_dropped(
    broker: Broker, flooder: mqtt.Client, publisher: MqttPublisher, hold: Hold
) -> None:
    received: list[bytes] = []

    def on_message(topic: str, payload: bytes) -> None:
        hold()
        received.append(payload)

    publisher.subscribe(SET, QOS_SUBSCRIPTIONS, on_message)
    fill_the_brokers_queue(broker, flooder, hold)
    for _ in range(MORE_THAN_THE_INFLIGHT_LIMIT):
        flooder.publish(SET, b"{", qos=1).wait_for_publish(5)  # a subscription at QoS 1 loses these
    hold.release.set()

    def probe_arrives() -> bool:
        flooder.publish(SET, b"probe", qos=1).wait_for_publish(5)
        return wait_until(lambda: b"probe" in received, 1.0)

    assert wait_until(probe_arrives, 5), f"no message on {SET} after the flood ({len(received)} before)"


def test_messages_whose_acknowledgement_the_broker_dropped_are_sent_again(
    broker: Broker,
    flooder: mqtt.Client,
    publisher: MqttPublisher,
    hold: Hold,
    subscribe: Any,
    ticking: Callable[[MqttPublisher], None],
) -> None:
    collector = subscribe(broker, "edgepose/flood/events")
    publisher.subscribe(SET, QOS_SUBSCRIPTIONS, lambda topic, payload: hold())
    ticking(publisher)
    fill_the_brokers_queue(broker, flooder, hold)
    outcomes: list[bool] = []
    for index in range(25):  # more than paho's 20 in flight: the last ones wait in paho's queue
        publisher.publish("edgepose/flood/events", str(index).encode(), qos=1, on_delivery=outcomes.append)
    hold.release.set()  # our PUBLISHes go out now; the broker's PUBACKs meet its full queue

    assert wait_until(lambda: len(outcomes) == 25, ACK_TIMEOUT_S + 10), f"{len(outcomes)} of 25 acknowledged"
    assert all(outcomes) and publisher.queued() == 0
    assert publisher.stats.connects == 2 and publisher.stats.session_takeovers == 0
    assert "acknowledged none of our" in (publisher.stats.last_error or "")
    assert {int(p) for p in collector.wait_for("/events", 25, timeout_s=5)} == set(range(25))


def test_commands_arrive_and_are_answered_after_a_flood_the_broker_dropped(
    broker: Broker, flooder: mqtt.Client, hold: Hold, subscribe: Any, ticking: Callable[[MqttPublisher], None]
) -> None:
    """The daemon's parts end to end: command handler, publisher, supervisor ticks."""
    replies = subscribe(broker, f"{SET}/result")
    config = Config.model_validate(
        {"device_id": DEVICE, "mqtt": {"host": broker.host, "port": broker.port}, "homeassistant": {"discovery": False}}
    )
    publisher = MqttPublisher(config.mqtt, Topics(config.mqtt.base_topic, DEVICE), CLIENT_ID, None)
    applied: list[RuntimeSettings] = []

    class Target:
        def apply_settings(self, settings: RuntimeSettings) -> None:
            hold()
            applied.append(settings)

    publisher.start()
    ticking(publisher)
    try:
        assert wait_until(lambda: publisher.stats.connected, 10)
        with build_control(config, publisher, Target(), DeviceInfo(DEVICE, "m", "1", None, 30.0)):
            fill_the_brokers_queue(broker, flooder, hold, first=b'{"detection": "pause"}')
            for _ in range(MORE_THAN_THE_INFLIGHT_LIMIT):
                flooder.publish(SET, b"{", qos=1).wait_for_publish(5)
            hold.release.set()

            # A controller told nothing (or "rate limited") tries again a second later.
            def resumed() -> bool:
                flooder.publish(SET, b'{"detection": "resume"}', qos=1).wait_for_publish(5)
                return wait_until(lambda: any(s.detection is Detection.RUNNING for s in applied), 1.0)

            assert wait_until(resumed, 10), "no command reached the daemon after the flood"
            answered = ACK_TIMEOUT_S + 5
            assert wait_until(lambda: [json.loads(p) for p in replies.on("/result")].count({"ok": True}) >= 2, answered)
    finally:
        publisher.stop(timeout_s=0.5)
