"""publish.keypoints_expiry_s: the daemon's keypoints carry an MQTT 5 message expiry, so a consumer
that comes back to its persistent session is not handed a backlog of stale frames."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgepose.config import load_config
from edgepose.health import PipelineStats
from edgepose.pipeline import PublishLoop
from tests.conftest import Broker, run_edgepose
from tests.test_pipeline import MemoryPublisher, invoked_queue, stage, synthetic_frames  # noqa: F401 - stage: the real Lightning stage


def test_publish_loop_hands_the_expiry_to_the_publisher(stage: Any) -> None:  # noqa: F811
    for expiry_s in (None, 2.0):
        publisher = MemoryPublisher()
        invoked = invoked_queue(stage, synthetic_frames(3))
        loop = PublishLoop(invoked, stage, publisher, "t/keypoints", 1, "dev", PipelineStats(), expiry_s=expiry_s)
        loop.run(threading.Event())
        assert publisher.expiries == [expiry_s] * 3


def test_config_default_and_zero() -> None:
    config, _ = load_config(None)
    assert config.publish.keypoints_expiry_s == 2.0
    config, _ = load_config(None, ["publish.keypoints_expiry_s=0"])
    assert config.publish.keypoints_expiry_s == 0


def _session(broker: Broker, got: list[str]) -> mqtt.Client:
    """An MQTT 5 consumer with a 60 s session and a QoS 1 subscription to every device's keypoints."""
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="analytics-expiry", protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, m: got.append(m.topic)
    client.on_subscribe = lambda *a: subscribed.set()
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 60
    client.connect(broker.host, broker.port, clean_start=False, properties=properties)
    client.loop_start()
    client.subscribe("edgepose/+/keypoints", qos=1)
    assert subscribed.wait(5)
    return client


def test_a_returning_consumer_gets_no_stale_keypoints(broker: Broker, model_dir: Path) -> None:
    got: list[str] = []
    away = _session(broker, got)
    away.disconnect()  # its session keeps the subscription: the broker queues QoS 1 keypoints for it
    away.loop_stop()
    result = run_edgepose(
        *("run", "--max-frames", "10", "--set", "camera.source=synthetic:20", "--set", "device_id=expiring"),
        *("--set", f"mqtt.host={broker.host}", "--set", f"mqtt.port={broker.port}"),
        *("--set", "mqtt.qos.keypoints=1", "--set", "publish.keypoints_expiry_s=1"),
        model_dir=model_dir,
    )
    assert result.returncode == 0, result.stderr
    time.sleep(2.2)  # every frame is now older than its 1 s expiry
    back = _session(broker, got)
    time.sleep(1.0)
    back.disconnect()
    back.loop_stop()
    assert got == []
    # ...and the daemon did publish them, at QoS 1, acknowledged by the broker.
    late: list[bytes] = []
    reader = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="health-reader")
    reader.on_message = lambda c, u, m: late.append(bytes(m.payload))
    reader.connect(broker.host, broker.port)
    reader.subscribe("edgepose/expiring/health", 1)
    reader.loop_start()
    deadline = time.monotonic() + 5
    while not late and time.monotonic() < deadline:
        time.sleep(0.05)
    reader.loop_stop()
    assert late and json.loads(late[-1])["counters"]["frames_published"] == 10
