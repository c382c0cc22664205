"""The command handler, presence monitor and discovery in process, on a recording message bus:
rate limiting, refusals that never reach the daemon, state on change only, Home Assistant's birth."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from edgepose.commands import Detection, RuntimeSettings
from edgepose.config import Config, EventsConfig, FallConfig, PresenceConfig
from edgepose.control import CommandHandler, Discovery, PresenceMonitor, TokenBucket, build_control
from edgepose.inference.stage import InferenceResult
from edgepose.mqtt.homeassistant import DeviceInfo
from edgepose.mqtt.topics import Topics
from edgepose.pose import KEYPOINT_NAMES, Keypoint, Pose

TOPICS = Topics("edgepose", "pi")


@dataclass
class Stats:
    connected: bool = True
    connects: int = 1


@dataclass
class Bus:
    published: list[tuple[str, bytes, bool]] = field(default_factory=list)
    subscriptions: dict[str, Callable[[str, bytes], None]] = field(default_factory=dict)
    subscribed_qos: dict[str, int] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> bool:
        self.published.append((topic, payload, retain))
        return True

    def publish_retained_state(self, topic: str, payload: bytes, qos: int) -> bool:
        # Like MqttPublisher: a retained state is not queued while disconnected.
        return self.stats.connected and self.publish(topic, payload, qos, retain=True)

    def subscribe(self, topic: str, qos: int, on_message: Callable[[str, bytes], None]) -> None:
        self.subscriptions[topic] = on_message
        self.subscribed_qos[topic] = qos

    def unsubscribe(self, topic: str, on_message: Callable[[str, bytes], None]) -> None:
        if self.subscriptions.get(topic) == on_message:
            del self.subscriptions[topic]

    def on(self, topic: str) -> list[bytes]:
        return [payload for t, payload, _ in self.published if t == topic]


@dataclass
class Target:
    applied: list[RuntimeSettings] = field(default_factory=list)

    def apply_settings(self, settings: RuntimeSettings) -> None:
        self.applied.append(settings)


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def _pose(score: float = 0.8) -> Pose:
    return Pose(tuple(Keypoint(n, 0.3 + i / 60, 0.2 + i / 30, score) for i, n in enumerate(KEYPOINT_NAMES)), score)


def _result(poses: tuple[Pose, ...], t: float) -> InferenceResult:
    return InferenceResult(1.7e9 + t, t, 64, 48, poses, None, False, 5.0, "m", "cpu")


def _handler(bus: Bus, target: Target, clock: Clock, monitor: PresenceMonitor | None = None) -> CommandHandler:
    monitor = monitor or PresenceMonitor(bus, TOPICS, "pi", PresenceConfig(), EventsConfig())
    settings = RuntimeSettings.from_config(Config())
    handler = CommandHandler(bus, TOPICS, "pi", settings, target, monitor, rate_per_s=2.0, burst=3, clock=clock)
    handler.start()
    handler.publish_current()
    return handler


def _replies(bus: Bus) -> list[dict[str, object]]:
    return [json.loads(p) for p in bus.on(TOPICS.set_result)]


def test_good_command_applies_replies_and_publishes_state_once() -> None:
    bus, target, clock = Bus(), Target(), Clock()
    handler = _handler(bus, target, clock)
    assert json.loads(bus.on(TOPICS.state)[0])["detection"] == "running"
    bus.subscriptions[TOPICS.set](TOPICS.set, b'{"detection": "pause"}')
    assert [s.detection for s in target.applied] == [Detection.PAUSED]
    assert json.loads(bus.on(TOPICS.state)[-1])["detection"] == "paused"
    # The same again changes nothing: a reply, no new state, nothing applied.
    clock.now_s += 1
    handler.on_message(TOPICS.set, b'{"detection": "pause"}')
    assert len(target.applied) == 1 and len(bus.on(TOPICS.state)) == 2
    assert _replies(bus) == [{"ok": True}, {"ok": True}]
    assert all(retain for t, _, retain in bus.published if t == TOPICS.state)
    assert not any(retain for t, _, retain in bus.published if t == TOPICS.set_result)


def test_refused_commands_never_reach_the_daemon() -> None:
    bus, target, clock = Bus(), Target(), Clock()
    handler = _handler(bus, target, clock)
    for payload in (b'{"detection": 1}', b"\xff", b'{"publish": {"max_fps": 2, "bogus": 1}}'):
        clock.now_s += 1
        handler.on_message(TOPICS.set, payload)
    assert target.applied == [] and len(bus.on(TOPICS.state)) == 1
    assert [r["ok"] for r in _replies(bus)] == [False, False, False]
    assert handler.stats.refused == 3 and handler.stats.accepted == 0


def test_rate_limit_drops_and_answers_at_most_once_a_second() -> None:
    bus, target, clock = Bus(), Target(), Clock()
    handler = _handler(bus, target, clock)
    for _ in range(50):
        handler.on_message(TOPICS.set, b'{"publish": {"max_fps": 1}}')
    replies = _replies(bus)
    assert replies[:3] == [{"ok": True}] * 3  # the burst
    assert len(replies) == 4 and str(replies[3]["error"]).startswith("rate limited: 1 command(s) dropped")
    assert handler.stats.dropped == 47
    clock.now_s += 1.0  # two more tokens, and one more rate-limit reply allowed
    for _ in range(10):
        handler.on_message(TOPICS.set, b"{}")
    replies = _replies(bus)
    assert [r["ok"] for r in replies[4:6]] == [False, False]  # "{}" is refused: empty
    assert str(replies[6]["error"]).startswith("rate limited: 47 command(s) dropped")
    assert len(replies) == 7


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate_per_s=4.0, burst=2, now_s=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [True, True, False]
    assert bucket.take(0.2) is False and bucket.take(0.3) is True
    assert [bucket.take(10.0) for _ in range(3)] == [True, True, False]


def test_snapshot_needs_a_frame_then_sends_an_annotated_jpeg() -> None:
    bus, target, clock = Bus(), Target(), Clock()
    monitor = PresenceMonitor(bus, TOPICS, "pi", PresenceConfig(), EventsConfig())
    handler = _handler(bus, target, clock, monitor)
    handler.on_message(TOPICS.set, b'{"snapshot": true}')
    assert _replies(bus) == [{"ok": False, "error": "snapshot: no frame inferred yet"}]
    image = np.full((48, 64, 3), 40, np.uint8)
    monitor.observe(image, _result((_pose(),), 1.0))
    handler.on_message(TOPICS.set, b'{"snapshot": true}')
    (jpeg,) = bus.on(TOPICS.snapshot)
    picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == (48, 64, 3) and picture.max() > 100  # the skeleton is drawn on the grey frame
    assert _replies(bus)[-1] == {"ok": True} and target.applied == []


def test_monitor_publishes_presence_events_falls_and_a_windowed_pose_score() -> None:
    bus = Bus()
    monitor = PresenceMonitor(
        bus, TOPICS, "pi", PresenceConfig(enter_frames=2, leave_s=1.0), EventsConfig(fall=FallConfig(enabled=True))
    )
    monitor.publish_current()
    assert json.loads(bus.on(TOPICS.presence)[0])["present"] is False
    image = np.zeros((48, 64, 3), np.uint8)
    monitor.observe(image, _result((_pose(0.6),), 0.0))
    monitor.observe(image, _result((_pose(0.8),), 0.1))
    assert json.loads(bus.on(TOPICS.presence)[-1])["present"] is True
    assert [json.loads(e)["event"] for e in bus.on(TOPICS.events)] == ["person_entered"]
    assert abs((monitor.pose_score() or 0) - 0.7) < 1e-9 and monitor.pose_score() is None  # windowed, reset
    monitor.observe(image, _result((), 0.5))
    monitor.tick()  # the monotonic clock is far past 0.1 + leave_s
    assert json.loads(bus.on(TOPICS.presence)[-1])["present"] is False
    assert [json.loads(e)["event"] for e in bus.on(TOPICS.events)] == ["person_entered", "person_left"]


def test_discovery_resent_on_home_assistant_online_only() -> None:
    bus = Bus()
    info = DeviceInfo("pi", "m", "1", None, 30.0)
    discovery = Discovery(bus, info, TOPICS, "homeassistant", enabled=True)
    discovery.start()
    discovery.publish_current()
    assert len(bus.published) == 11 and all(retain for _, _, retain in bus.published)
    on_status = bus.subscriptions["homeassistant/status"]
    on_status("homeassistant/status", b"offline")
    assert len(bus.published) == 11
    on_status("homeassistant/status", b"online")
    on_status("homeassistant/status", b"online")  # a burst of births: sent once
    assert len(bus.published) == 22 and discovery.sent == 1


def test_discovery_off_removes_and_does_not_listen() -> None:
    bus = Bus()
    discovery = Discovery(bus, DeviceInfo("pi", "m", "1", None, 30.0), TOPICS, "homeassistant", enabled=False)
    discovery.start()
    discovery.publish_current()
    assert len(bus.published) == 11 and all(p == b"" and retain for _, p, retain in bus.published)
    assert "homeassistant/status" not in bus.subscriptions


def test_commands_disabled_subscribes_to_nothing() -> None:
    bus = Bus()
    config = Config.model_validate({"commands": {"enabled": False}, "homeassistant": {"discovery": False}})
    with build_control(config, bus, Target(), DeviceInfo("pi", "m", "1", None, 30.0)) as control:
        assert control.commands is None
    assert bus.subscriptions == {}


def test_commands_and_home_assistant_status_are_received_at_qos_0() -> None:
    """A QoS 1 delivery the broker drops keeps one of our in-flight slots at the broker for good
    (mosquitto 2.0.11 during a flood; tests/test_command_flood.py): subscriptions hold none."""
    bus = Bus()
    with build_control(Config(device_id="pi"), bus, Target(), DeviceInfo("pi", "m", "1", None, 30.0)):
        assert bus.subscribed_qos == {TOPICS.set: 0, "homeassistant/status": 0}


def test_a_replacement_keeps_the_subscriptions_the_old_part_leaves() -> None:
    """Reload order: the new part subscribes, then the old one closes; the new one keeps receiving."""
    bus = Bus()
    info = DeviceInfo("pi", "m", "1", None, 30.0)
    config = Config(device_id="pi")
    old = build_control(config, bus, Target(), info).__enter__()
    new = build_control(config, bus, Target(), info).__enter__()
    old.__exit__(None, None, None)
    assert new.commands is not None
    assert bus.subscriptions == {
        TOPICS.set: new.commands.on_message,
        "homeassistant/status": new.discovery.on_home_assistant_status,
    }
    off = Config.model_validate({"device_id": "pi", "homeassistant": {"discovery": False}})
    newest = build_control(off, bus, Target(), info).__enter__()
    new.__exit__(None, None, None)
    assert newest.commands is not None
    assert bus.subscriptions == {TOPICS.set: newest.commands.on_message}


def test_retained_messages_wait_for_a_connection_and_follow_every_reconnect() -> None:
    bus = Bus(stats=Stats(connected=False, connects=0))
    config = Config(device_id="pi")
    with build_control(config, bus, Target(), DeviceInfo("pi", "m", "1", None, 30.0)) as control:
        assert bus.published == []  # not connected yet: nothing sent, nothing lost
        bus.stats.connected, bus.stats.connects = True, 1
        control.tick()
        topics = [t for t, _, retain in bus.published if retain]
        assert TOPICS.presence in topics and TOPICS.state in topics and len(topics) == 13
        control.tick()
        assert len(bus.published) == 13  # once per connection
        bus.stats.connected = False
        control.tick()
        bus.stats.connected, bus.stats.connects = True, 2
        control.tick()
        assert len(bus.published) == 26
