"""edgepose.client: consume a fleet of edgepose devices from MQTT.

Three parts, usable on their own:

* `Subscription` says what to listen to: one device, every device (`+`), or a shared group
  (`$share/<group>/...`, where the broker hands each keypoints message to one member of the group).
* `FleetClient` is the paho adapter: it subscribes, decodes both payload formats into the same
  `KeypointsFrame`/`Pose` objects (schema-checked), and hands them to a `FleetHandler`.
* `FleetTracker` is a `FleetHandler` that keeps per-device figures: messages, `seq` gaps, rate,
  end-to-end latency (receive time - capture timestamp) and online/offline from the retained status.

    tracker = FleetTracker()
    with FleetClient("broker.lan", 1883, Subscription(share="analytics"), tracker):
        time.sleep(10)
    print(tracker.summary())

Latency across machines is only as good as their clocks: run NTP (chrony) on devices and consumers.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, Protocol

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgepose.errors import BrokerError
from edgepose.mqtt.decode import KeypointsFrame, PayloadError, decode_keypoints
from edgepose.mqtt.payloads import PayloadFormat
from edgepose.mqtt.topics import STATUS_OFFLINE, STATUS_ONLINE

__all__ = [
    "DeviceState",
    "DeviceView",
    "FleetClient",
    "FleetHandler",
    "FleetTracker",
    "KeypointsFrame",
    "PayloadError",
    "Reservoir",
    "Subscription",
    "decode_keypoints",
]

log = logging.getLogger(__name__)

MqttProtocol = Literal["5", "3.1.1"]
PAHO_PROTOCOL = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}

# Percentiles over a bounded sample: a day-long watch keeps constant memory (a uniform reservoir).
LATENCY_RESERVOIR = 200_000
DEVICE_LATENCY_WINDOW = 256


@dataclass
class Reservoir:
    """A uniform sample of at most `size` values from a stream (Vitter's algorithm R), plus the exact
    count and maximum: percentiles of an unbounded stream in constant memory."""

    size: int
    samples: list[float] = field(default_factory=list)
    count: int = 0
    max: float | None = None
    _random: random.Random = field(default_factory=lambda: random.Random(0))

    def add(self, value: float) -> None:
        self.count += 1
        if self.max is None or value > self.max:
            self.max = value
        if len(self.samples) < self.size:
            self.samples.append(value)
        else:
            slot = self._random.randrange(self.count)
            if slot < self.size:
                self.samples[slot] = value

    def percentiles(self) -> tuple[float | None, float | None]:
        """(p50, p95) rounded to 0.01, or Nones when empty."""
        return _percentiles(self.samples)


class DeviceState(str, Enum):
    UNKNOWN = "unknown"  # no status message seen yet
    ONLINE = "online"
    OFFLINE = "offline"  # a clean stop, or the broker's Last Will after the device vanished


@dataclass(frozen=True)
class Subscription:
    """What a consumer listens to. Status and health are never shared: every consumer needs every
    device's state, and brokers do not send retained messages to shared subscriptions."""

    base_topic: str = "edgepose"
    device_id: str | None = None  # None: every device (+)
    share: str | None = None  # a shared-subscription group name

    def __post_init__(self) -> None:
        for name, value in (("device", self.device_id), ("share group", self.share)):
            if value is not None and (not value or any(c in value for c in "+#/")):
                raise ValueError(f"{name} {value!r}: must be non-empty and contain no +, # or /")

    def filters(self) -> list[tuple[str, int]]:
        """(topic filter, qos) pairs to subscribe to."""
        device = self.device_id or "+"
        keypoints = f"{self.base_topic}/{device}/keypoints"
        if self.share:
            keypoints = f"$share/{self.share}/{keypoints}"
        return [
            (keypoints, 0),
            (f"{self.base_topic}/{device}/status", 1),
            (f"{self.base_topic}/{device}/health", 1),
        ]

    def parse(self, topic: str) -> tuple[str, str] | None:
        """`<base>/<device>/<kind>` -> (device, kind), or None for a topic that is not ours."""
        prefix = self.base_topic + "/"
        if not topic.startswith(prefix):
            return None
        device, _, kind = topic[len(prefix) :].partition("/")
        if not device or not kind or "/" in kind:
            return None
        return device, kind


class FleetHandler(Protocol):
    """What a FleetClient calls, on paho's network thread, for each message."""

    def keypoints(self, frame: KeypointsFrame, received_s: float) -> None: ...

    def status(self, device_id: str, text: str, received_s: float) -> None: ...

    def health(self, device_id: str, payload: bytes, received_s: float) -> None: ...

    def invalid(self, device_id: str, error: PayloadError, received_s: float) -> None: ...


RawHook = Callable[[str, bytes, float], None]


class FleetClient:
    """A paho consumer session. `start()` connects and subscribes or raises BrokerError; paho's own
    network thread then decodes and dispatches; `stop()` disconnects. A context manager too."""

    def __init__(
        self,
        host: str,
        port: int,
        subscription: Subscription,
        handler: FleetHandler,
        *,
        validate: bool = True,
        protocol: MqttProtocol = "5",
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        keepalive_s: int = 30,
        on_raw: RawHook | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.subscription = subscription
        self.handler = handler
        self.validate = validate
        self.protocol = protocol
        self.keepalive_s = keepalive_s
        self._on_raw = on_raw
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._failure: str | None = None
        self._stopping = False
        client_id = client_id or f"edgepose-watch-{random.getrandbits(32):08x}"
        if protocol == "5":
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        else:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True
            )
        if username:
            client.username_pw_set(username, password)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        self._client = client
        self.disconnects = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        try:
            self._client.connect(self.host, self.port, keepalive=self.keepalive_s)
        except OSError as exc:
            raise BrokerError(f"cannot connect to MQTT broker {self.address}: {exc.strerror or exc}") from None
        self._client.loop_start()
        if not self._subscribed.wait(timeout_s) or self._failure:
            self.stop()
            reason = self._failure or (
                "no answer" if not self._connected.is_set() else "no subscription acknowledgement"
            )
            hint = " (a broker without MQTT 5 needs --protocol 3.1.1)" if self.protocol == "5" else ""
            raise BrokerError(f"MQTT broker {self.address}: {reason} within {timeout_s:.0f}s{hint}")

    def stop(self) -> None:
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> FleetClient:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- paho callbacks (network thread) ---------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._failure = f"connection refused: {reason_code}"
            self._subscribed.set()
            return
        self._connected.set()
        # Subscribing here re-subscribes after every reconnect.
        client.subscribe(self.subscription.filters())

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        refused = [
            f"{topic} ({code})"
            for (topic, _), code in zip(self.subscription.filters(), reason_codes, strict=False)
            if code.is_failure
        ]
        if refused:
            self._failure = f"subscription refused: {', '.join(refused)}"
        self._subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if self._subscribed.is_set() and not self._stopping:
            self.disconnects += 1
            log.warning("MQTT consumer disconnected from %s (%s); paho reconnects", self.address, reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        received_s = time.time()
        payload = bytes(message.payload)
        topic = message.topic
        if self._on_raw is not None:
            self._on_raw(topic, payload, received_s)
        parsed = self.subscription.parse(topic)
        if parsed is None:
            return
        device_id, kind = parsed
        if kind == "keypoints":
            try:
                frame = decode_keypoints(device_id, payload, self.validate)
            except PayloadError as exc:
                self.handler.invalid(device_id, exc, received_s)
                return
            self.handler.keypoints(frame, received_s)
        elif kind == "status":
            self.handler.status(device_id, payload.decode("utf-8", "replace"), received_s)
        elif kind == "health":
            self.handler.health(device_id, payload, received_s)


# -- tracking ----------------------------------------------------------------------------------


@dataclass
class _Device:
    device_id: str
    state: DeviceState = DeviceState.UNKNOWN
    received: int = 0
    seq_gaps: int = 0  # messages missing between consecutive seqs
    duplicates: int = 0  # a seq seen again (QoS 1 redelivery)
    restarts: int = 0  # seq went back: the daemon restarted and counts from 0 again
    invalid: int = 0
    last_seq: int | None = None
    first_received_s: float | None = None
    last_received_s: float | None = None
    last_status_s: float | None = None
    payload_format: PayloadFormat | None = None
    bytes_received: int = 0
    latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=DEVICE_LATENCY_WINDOW))
    rate_mark: tuple[float, int] | None = None
    rate_per_s: float = 0.0


@dataclass(frozen=True)
class DeviceView:
    """A read-only snapshot of one device, for tables and reports."""

    device_id: str
    state: DeviceState
    received: int
    seq_gaps: int | None
    invalid: int
    rate_per_s: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    last_seen_s: float | None  # seconds since the last keypoints message
    payload_format: PayloadFormat | None
    mean_size_bytes: float | None


class FleetTracker:
    """Per-device figures from a stream of decoded messages. Thread-safe: paho's thread writes,
    anyone reads snapshots.

    In a shared group each member sees an interleaved part of every device's stream, so its `seq`
    gaps say nothing about loss: with `shared=True` gaps are not counted (reported as None); add up
    the members' `received` against what was sent instead.
    """

    def __init__(self, shared: bool = False, clock: Callable[[], float] = time.time) -> None:
        self.shared = shared
        self._clock = clock
        self._lock = threading.Lock()
        self._devices: dict[str, _Device] = {}
        self._latency_ms = Reservoir(LATENCY_RESERVOIR)
        self.started_s = clock()

    def _device(self, device_id: str) -> _Device:
        device = self._devices.get(device_id)
        if device is None:
            device = self._devices[device_id] = _Device(device_id)
        return device

    # -- FleetHandler ----------------------------------------------------------------------------

    def keypoints(self, frame: KeypointsFrame, received_s: float) -> None:
        latency_ms = (received_s - frame.timestamp_s) * 1e3
        with self._lock:
            device = self._device(frame.device_id)
            device.received += 1
            device.bytes_received += frame.size_bytes
            device.payload_format = frame.payload_format
            if device.first_received_s is None:
                device.first_received_s = received_s
            device.last_received_s = received_s
            if device.last_seq is not None:
                step = frame.seq - device.last_seq
                if step == 0:
                    device.duplicates += 1
                elif step < 0:
                    device.restarts += 1
                elif not self.shared:
                    device.seq_gaps += step - 1
            device.last_seq = frame.seq
            if device.state is DeviceState.UNKNOWN:
                device.state = DeviceState.ONLINE  # keypoints flowing: the status message is merely late
            device.latency_ms.append(latency_ms)
            self._latency_ms.add(latency_ms)

    def status(self, device_id: str, text: str, received_s: float) -> None:
        with self._lock:
            device = self._device(device_id)
            device.last_status_s = received_s
            if text == STATUS_ONLINE:
                device.state = DeviceState.ONLINE
            elif text == STATUS_OFFLINE:
                device.state = DeviceState.OFFLINE
            else:
                log.warning("%s: unexpected status payload %r", device_id, text[:40])

    def health(self, device_id: str, payload: bytes, received_s: float) -> None:
        with self._lock:
            self._device(device_id)

    def invalid(self, device_id: str, error: PayloadError, received_s: float) -> None:
        with self._lock:
            device = self._device(device_id)
            device.invalid += 1
            first = device.invalid == 1
        if first:  # once per device: a misconfigured device must not flood the log
            log.warning("invalid keypoints message (further ones from this device are only counted): %s", error)

    # -- reading ---------------------------------------------------------------------------------

    def devices(self) -> list[DeviceView]:
        now_s = self._clock()
        with self._lock:
            views = []
            for device in self._devices.values():
                if device.rate_mark is None and device.first_received_s is not None:
                    # From the first message, not the first look: piped `watch` looks only at the end.
                    device.rate_mark = (device.first_received_s, 1)
                if device.rate_mark is not None and now_s - device.rate_mark[0] >= 1.0:
                    device.rate_per_s = (device.received - device.rate_mark[1]) / (now_s - device.rate_mark[0])
                    device.rate_mark = (now_s, device.received)
                p50, p95 = _percentiles(list(device.latency_ms))
                views.append(
                    DeviceView(
                        device_id=device.device_id,
                        state=device.state,
                        received=device.received,
                        seq_gaps=None if self.shared else device.seq_gaps,
                        invalid=device.invalid,
                        rate_per_s=device.rate_per_s,
                        latency_p50_ms=p50,
                        latency_p95_ms=p95,
                        last_seen_s=None if device.last_received_s is None else now_s - device.last_received_s,
                        payload_format=device.payload_format,
                        mean_size_bytes=device.bytes_received / device.received if device.received else None,
                    )
                )
        return sorted(views, key=lambda v: v.device_id)

    def summary(self) -> dict[str, Any]:
        """The `edgepose watch --json` report."""
        with self._lock:
            devices = list(self._devices.values())
            p50, p95 = self._latency_ms.percentiles()
            latency_max_ms = self._latency_ms.max
        received = sum(d.received for d in devices)
        return {
            "received": received,
            "devices_seen": sum(1 for d in devices if d.received),
            "seq_gaps": None if self.shared else sum(d.seq_gaps for d in devices),
            "latency_ms": {
                "p50": p50,
                "p95": p95,
                "max": None if latency_max_ms is None else round(latency_max_ms, 2),
            },
            "invalid": sum(d.invalid for d in devices),
            "duplicates": sum(d.duplicates for d in devices),
            "restarts": sum(d.restarts for d in devices),
            "duration_s": round(self._clock() - self.started_s, 3),
            "shared": self.shared,
            "states": {state.value: sum(1 for d in devices if d.state is state) for state in DeviceState},
            "devices": {
                d.device_id: {
                    "received": d.received,
                    "seq_gaps": None if self.shared else d.seq_gaps,
                    "last_seq": d.last_seq,
                    "state": d.state.value,
                    "format": d.payload_format.value if d.payload_format else None,
                }
                for d in sorted(devices, key=lambda d: d.device_id)
            },
        }


def _percentiles(samples: list[float]) -> tuple[float | None, float | None]:
    if not samples:
        return None, None
    p50, p95 = np.percentile(np.asarray(samples), [50, 95])
    return round(float(p50), 2), round(float(p95), 2)
