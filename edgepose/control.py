"""The MQTT side of presence and remote control: one part of the daemon's bundle.

  * PresenceMonitor: fed every inferred frame by the publish thread; publishes the retained
    presence topic and the events (person_entered, person_left, fall_detected), and keeps the
    latest frame for snapshots.
  * CommandHandler: receives `<base>/<id>/set` on paho's network thread, refuses bad payloads with
    a reply, applies good ones through the daemon (`Controlled`), replies on `set/result`, and
    re-publishes the retained `state` on every change. Rate-limited by a token bucket.
  * Discovery: Home Assistant's configs, retained, re-sent when Home Assistant announces itself
    on `<prefix>/status`; empty configs when discovery is off.

Runtime changes live until the daemon restarts or reloads; the YAML file stays the source of truth.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import Protocol

import numpy as np

from edgepose.annotate import annotate, encode_jpeg
from edgepose.commands import CommandError, RuntimeSettings, parse_command
from edgepose.config import Config, EventsConfig, PresenceConfig
from edgepose.fall import FallDetector
from edgepose.inference.stage import InferenceResult
from edgepose.mqtt.events import event_payload, presence_payload, result_payload, state_payload
from edgepose.mqtt.homeassistant import PAYLOAD_ONLINE, DeviceInfo, discovery_messages, status_topic
from edgepose.mqtt.payloads import encode
from edgepose.mqtt.topics import Topics
from edgepose.presence import Event, PresenceTracker, PresenceUpdate

log = logging.getLogger(__name__)

QOS_CONTROL = 1  # presence, events, state, replies, snapshots and discovery: each message matters
# Commands and Home Assistant's birth are received at QoS 0 (a QoS 1 publish is delivered to us as
# QoS 0). A QoS 1 delivery holds one of our client's in-flight slots at the broker (Receive Maximum:
# mosquitto's max_inflight_messages, 20) until we acknowledge it. Debian 12's mosquitto 2.0.11 (its
# CVE-2023-28366 fix; upstream since 2.0.16, 2.1.2 too) silently drops any packet for a client whose
# outgoing queue holds max_queued_messages (1000) packets, a QoS 1 delivery it has counted in flight
# included: that slot is never freed. A flood on `set` faster than we read loses dozens; after 20,
# the broker sent us no QoS 1 message until we reconnected (docs/reliability.md). QoS 0 has no slots:
# a flood drops what we cannot read, and the next command arrives. The reply on `set/result` says
# whether a command was applied; one sent while we are offline is not kept for us.
QOS_SUBSCRIPTIONS = 0
SNAPSHOT_JPEG_QUALITY = 85
HA_REPUBLISH_MIN_INTERVAL_S = 2.0  # Home Assistant's birth message is rare; a flood of them is not
REFUSAL_LOG_INTERVAL_S = 10.0
MAX_ERROR_CHARS = 200


class ConnectionStats(Protocol):
    connected: bool
    connects: int  # successful connections so far: a change means a (re)connect


class MessageBus(Protocol):
    """The publisher's face these parts use (edgepose.mqtt.publisher.MqttPublisher)."""

    @property
    def stats(self) -> ConnectionStats: ...

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> bool: ...

    def publish_retained_state(self, topic: str, payload: bytes, qos: int) -> bool: ...

    def subscribe(self, topic: str, qos: int, on_message: Callable[[str, bytes], None]) -> None: ...

    def unsubscribe(self, topic: str, on_message: Callable[[str, bytes], None]) -> None: ...


class Controlled(Protocol):
    """What commands act on; the daemon implements it."""

    def apply_settings(self, settings: RuntimeSettings) -> None: ...


# -- presence and events --------------------------------------------------------------------------


@dataclass(frozen=True)
class LatestFrame:
    image_rgb: np.ndarray
    result: InferenceResult


class PresenceMonitor:
    def __init__(self, bus: MessageBus, topics: Topics, device_id: str, presence: PresenceConfig, events: EventsConfig):
        self._bus = bus
        self._topics = topics
        self._device_id = device_id
        self._tracker = PresenceTracker(presence.enter_frames, presence.leave_s, time.time())
        self._falls = FallDetector(events.fall.down_s) if events.fall.enabled else None
        self._lock = threading.Lock()
        self._latest: LatestFrame | None = None
        self._score_sum = 0.0  # best pose per frame with a pose, since the last health report
        self._score_frames = 0
        self.events_published = 0

    def take_over(self, previous: PresenceMonitor) -> None:
        """Carry who is in the room over from the monitor this one replaces, before it publishes."""
        with previous._lock, self._lock:
            self._tracker.take_over(previous._tracker)
            self._latest = previous._latest

    def publish_current(self) -> None:
        """The retained presence as it stands (at start: "nobody confirmed yet")."""
        with self._lock:
            state = self._tracker.state
        self._publish(PresenceUpdate(state))

    def observe(self, image_rgb: np.ndarray, result: InferenceResult) -> None:
        """Every inferred frame, from the publish thread (whether or not keypoints are published)."""
        with self._lock:
            self._latest = LatestFrame(image_rgb, result)
            if result.poses:
                self._score_sum += max(pose.score for pose in result.poses)
                self._score_frames += 1
            update = self._tracker.observe(len(result.poses), result.frame_timestamp_s, result.frame_monotonic_s)
            falls: tuple[Event, ...] = ()
            if self._falls is not None:
                aspect = result.frame_width_px / max(1, result.frame_height_px)
                falls = self._falls.observe(result.poses, aspect, result.frame_timestamp_s, result.frame_monotonic_s)
        self._publish(update)
        for event in falls:
            log.warning("fall detected (person %s, hips dropped %.1f torso lengths)", event.person, event.drop)
            self._publish(PresenceUpdate(None, (event,)))

    def tick(self) -> None:
        """Time passing without frames (a dead camera, paused detection): someone can still leave."""
        with self._lock:
            update = self._tracker.tick(time.time(), time.monotonic())
        self._publish(update)

    def latest(self) -> LatestFrame | None:
        with self._lock:
            return self._latest

    def pose_score(self) -> float | None:
        """The mean score of the best pose over the frames with a pose since the last call (one
        health interval), or None when there were none. Read by the health report."""
        with self._lock:
            total, frames = self._score_sum, self._score_frames
            self._score_sum, self._score_frames = 0.0, 0
        return total / frames if frames else None

    def _publish(self, update: PresenceUpdate) -> None:
        if update.presence is not None:
            payload = encode(presence_payload(self._device_id, update.presence))
            self._bus.publish_retained_state(self._topics.presence, payload, QOS_CONTROL)
        for event in update.events:
            log.info("event %s", event.kind.value)
            self._bus.publish(self._topics.events, encode(event_payload(self._device_id, event)), QOS_CONTROL)
            self.events_published += 1


def snapshot_jpeg(latest: LatestFrame, score_threshold: float) -> bytes:
    """The annotated picture of a frame, as JPEG (the same drawing as the live view)."""
    result = latest.result
    picture = annotate(latest.image_rgb, result.poses, result.crop, score_threshold)
    try:
        return encode_jpeg(picture, SNAPSHOT_JPEG_QUALITY)
    except ValueError as exc:
        raise CommandError(f"snapshot: {exc}") from exc


# -- commands -------------------------------------------------------------------------------------


class TokenBucket:
    """`burst` commands at once, `rate_per_s` sustained."""

    def __init__(self, rate_per_s: float, burst: int, now_s: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._last_s = now_s

    def take(self, now_s: float) -> bool:
        self._tokens = min(float(self.burst), self._tokens + (now_s - self._last_s) * self.rate_per_s)
        self._last_s = now_s
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


@dataclass
class CommandStats:
    accepted: int = 0
    refused: int = 0
    dropped: int = 0  # over the rate limit: not parsed, not applied


class CommandHandler:
    def __init__(
        self,
        bus: MessageBus,
        topics: Topics,
        device_id: str,
        settings: RuntimeSettings,
        target: Controlled,
        monitor: PresenceMonitor,
        rate_per_s: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bus = bus
        self._topics = topics
        self._device_id = device_id
        self._target = target
        self._monitor = monitor
        self._clock = clock
        self._bucket = TokenBucket(rate_per_s, burst, clock())
        self._lock = threading.Lock()
        self.settings = settings
        self.stats = CommandStats()
        self._dropped_unreported = 0
        self._last_limit_reply_s = float("-inf")
        self._last_refusal_log_s = float("-inf")
        self._refusals_unlogged = 0

    def start(self) -> None:
        self._bus.subscribe(self._topics.set, QOS_SUBSCRIPTIONS, self.on_message)

    def publish_current(self) -> None:
        with self._lock:
            self._publish_state()

    def stop(self) -> None:
        self._bus.unsubscribe(self._topics.set, self.on_message)

    def reset(self, settings: RuntimeSettings) -> None:
        """A reload re-read the YAML file: it is the truth again."""
        with self._lock:
            if settings != self.settings:
                self.settings = settings
                self._publish_state()

    def on_message(self, topic: str, payload: bytes) -> None:
        """paho's network thread: never raises for any payload, never blocks for long."""
        with self._lock:
            now = self._clock()
            if not self._bucket.take(now):
                self.stats.dropped += 1
                self._dropped_unreported += 1
                if now - self._last_limit_reply_s >= 1.0:
                    self._last_limit_reply_s = now
                    count, self._dropped_unreported = self._dropped_unreported, 0
                    self._reply(f"rate limited: {count} command(s) dropped (limit {self._bucket.rate_per_s:g}/s)")
                return
            try:
                self._handle(payload)
            except CommandError as exc:
                self.stats.refused += 1
                self._log_refusal(now, str(exc))
                self._reply(str(exc))
                return
            self.stats.accepted += 1
            self._reply(None)

    def _handle(self, payload: bytes) -> None:
        command = parse_command(payload)
        if command.snapshot:
            latest = self._monitor.latest()
            if latest is None:
                raise CommandError("snapshot: no frame inferred yet")
            self._bus.publish(self._topics.snapshot, snapshot_jpeg(latest, self.settings.score_threshold), QOS_CONTROL)
        new = self.settings.apply(command)
        if new != self.settings:
            self._target.apply_settings(new)
            log.info("command: %s", _describe_change(self.settings, new))
            self.settings = new
            self._publish_state()

    def _publish_state(self) -> None:
        payload = encode(state_payload(self._device_id, self.settings, time.time()))
        self._bus.publish_retained_state(self._topics.state, payload, QOS_CONTROL)

    def _reply(self, error: str | None) -> None:
        if error is not None and len(error) > MAX_ERROR_CHARS:
            error = error[: MAX_ERROR_CHARS - 3] + "..."
        self._bus.publish(self._topics.set_result, encode(result_payload(error)), QOS_CONTROL)

    def _log_refusal(self, now_s: float, reason: str) -> None:
        # A flood of bad commands must not flood the journal: one line per interval, with a count.
        self._refusals_unlogged += 1
        if now_s - self._last_refusal_log_s >= REFUSAL_LOG_INTERVAL_S:
            log.warning("refused %d command(s) on %s; latest: %s", self._refusals_unlogged, self._topics.set, reason)
            self._refusals_unlogged = 0
            self._last_refusal_log_s = now_s


def _describe_change(old: RuntimeSettings, new: RuntimeSettings) -> str:
    def text(value: object) -> str:
        return value.value if isinstance(value, Enum) else str(value)

    changes = [
        f"{name} {text(getattr(old, name))} -> {text(getattr(new, name))}"
        for name in ("detection", "max_fps", "keypoints", "score_threshold", "smoothing")
        if getattr(old, name) != getattr(new, name)
    ]
    return ", ".join(changes) + " (until restart or reload)"


# -- Home Assistant discovery ---------------------------------------------------------------------


class Discovery:
    def __init__(self, bus: MessageBus, info: DeviceInfo, topics: Topics, prefix: str, enabled: bool) -> None:
        self._bus = bus
        self._messages = discovery_messages(info, topics, prefix, enabled)
        self._prefix = prefix
        self._enabled = enabled
        self._last_sent_s = float("-inf")
        self.sent = 0

    def publish_current(self) -> None:
        for message in self._messages:
            self._bus.publish_retained_state(message.topic, message.payload, QOS_CONTROL)

    def start(self) -> None:
        if self._enabled:
            self._bus.subscribe(status_topic(self._prefix), QOS_SUBSCRIPTIONS, self.on_home_assistant_status)

    def stop(self) -> None:
        self._bus.unsubscribe(status_topic(self._prefix), self.on_home_assistant_status)

    def on_home_assistant_status(self, topic: str, payload: bytes) -> None:
        """Home Assistant (re)started and forgot what it discovered: send everything again."""
        now = time.monotonic()
        if payload.strip() != PAYLOAD_ONLINE.encode() or now - self._last_sent_s < HA_REPUBLISH_MIN_INTERVAL_S:
            return
        self._last_sent_s = now
        for message in self._messages:
            self._bus.publish(message.topic, message.payload, QOS_CONTROL, retain=True)
        self.sent += 1
        log.info("Home Assistant is online: discovery sent again (%d configs)", len(self._messages))


# -- the part -------------------------------------------------------------------------------------


class Control:
    """Presence, commands and discovery on one publisher: a part of the daemon's bundle.

    Entering it makes the subscriptions; `tick()` (the daemon's supervisor, every 0.1 s) publishes
    the retained presence, state and discovery configs after every (re)connect and first use — the publisher
    does not keep retained messages while disconnected, and a broker without persistence forgets
    them — and lets presence time out without frames. Leaving drops the subscriptions it still owns
    (a reload may have handed them to its replacement already). The publisher goes offline after
    it: its last will and `offline` tell Home Assistant the entities are unavailable."""

    def __init__(
        self, bus: MessageBus, monitor: PresenceMonitor, commands: CommandHandler | None, discovery: Discovery
    ) -> None:
        self._bus = bus
        self.monitor = monitor
        self.commands = commands
        self.discovery = discovery
        self._published_for_connection: int | None = None

    def __enter__(self) -> Control:
        # Nothing is published here: the first tick() does it, once a reload has carried the
        # presence over from the part this one replaces (or at start, within a tick of 0.1 s).
        if self.commands is not None:
            self.commands.start()
        self.discovery.start()
        return self

    def tick(self) -> None:
        self.monitor.tick()
        stats = self._bus.stats
        if stats.connected and stats.connects != self._published_for_connection:
            self._published_for_connection = stats.connects
            self.monitor.publish_current()
            if self.commands is not None:
                self.commands.publish_current()
            self.discovery.publish_current()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.commands is not None:
            self.commands.stop()
        self.discovery.stop()


def build_control(config: Config, bus: MessageBus, target: Controlled, info: DeviceInfo) -> Control:
    """Runtime settings start from the YAML file, at start and at every rebuild by a reload."""
    topics = Topics(config.mqtt.base_topic, config.device_id)
    monitor = PresenceMonitor(bus, topics, config.device_id, config.presence, config.events)
    commands = None
    if config.commands.enabled:
        settings = RuntimeSettings.from_config(config)
        commands = CommandHandler(
            bus, topics, config.device_id, settings, target, monitor, config.commands.rate_per_s, config.commands.burst
        )
    ha = config.homeassistant
    return Control(bus, monitor, commands, Discovery(bus, info, topics, ha.prefix, ha.discovery))
