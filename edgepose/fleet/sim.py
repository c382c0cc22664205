"""`edgepose fleet-sim`: N simulated devices, each a real MQTT session, on a few event loops.

Each device is a paho client with the daemon's Last Will (`offline`, retained), a retained `online`
on connect, retained health at its interval and keypoints at `fps`, built by the daemon's own
payload code (mqtt/payloads.py) from the demo photos' real keypoints. No model runs.

Scaling: no thread per device. One process drives its share of the devices through one
`selectors` loop using paho's external-loop API (socket(), loop_read(), loop_write(),
loop_misc(), want_write()); `processes` such loops split the fleet (one per core is enough).
Sends are scheduled on a heap by due time; `send_lag_ms` is how late each send left the
simulator, so a saturated simulator says so instead of quietly sending fewer messages.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
import multiprocessing
import os
import random
import selectors
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgepose import __version__
from edgepose.client import PAHO_PROTOCOL, MqttProtocol, Reservoir
from edgepose.errors import BrokerError
from edgepose.fleet.replay import replay_cycle
from edgepose.mqtt.payloads import (
    HealthReport,
    KeypointsMessage,
    PayloadFormat,
    encode,
    health_payload,
    keypoints_bytes,
)
from edgepose.mqtt.topics import STATUS_OFFLINE, STATUS_ONLINE, Topics

log = logging.getLogger(__name__)

# The frame the simulated camera reports (the daemon's default capture size).
FRAME_WIDTH_PX = 640
FRAME_HEIGHT_PX = 480
SIM_MODEL = "movenet_lightning_int8"
SIM_INFERENCE_MS = 9.0  # Lightning int8 on a Pi 5 CPU, for the payload's latency field
LAG_SAMPLES_PER_PROCESS = 50_000
CONNECT_TIMEOUT_S = 30.0
MISC_INTERVAL_S = 1.0  # paho's keepalive bookkeeping (PINGREQ) per client
END_TOLERANCE_S = 1e-6


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class SimConfig:
    devices: int
    fps: float
    duration_s: float
    brokers: tuple[BrokerAddress, ...]  # devices are spread over these round-robin
    payload_format: PayloadFormat = PayloadFormat.JSON
    base_topic: str = "edgepose"
    id_prefix: str = "sim"
    protocol: MqttProtocol = "5"
    qos_keypoints: int = 0
    keypoints_expiry_s: int = 0  # MQTT 5 message expiry on keypoints (0: none), as publish.keypoints_expiry_s
    health_interval_s: float = 10.0
    keepalive_s: int = 30
    processes: int = 0  # 0: one per 4000 msg/s, at most the core count
    loss_percent: float = 0.0  # simulated radio loss: a dropped frame still uses up its seq
    seed: int = 0

    def device_id(self, index: int) -> str:
        width = max(4, len(str(self.devices - 1)))
        return f"{self.id_prefix}-{index:0{width}d}"

    def process_count(self) -> int:
        if self.processes > 0:
            return min(self.processes, self.devices)
        wanted = math.ceil(self.devices * self.fps / 4000)
        return max(1, min(wanted, os.cpu_count() or 1, self.devices))


@dataclass
class _Device:
    index: int
    device_id: str
    topics: Topics
    client: mqtt.Client
    broker: BrokerAddress
    connected: bool = False
    refused: str | None = None
    seq: int = 0
    sent: int = 0
    dropped: int = 0
    skipped_late: int = 0
    publish_refused: int = 0
    bytes_sent: int = 0
    frame_index: int = 0
    started_monotonic_s: float = field(default_factory=time.monotonic)


@dataclass
class WorkerReport:
    devices: int = 0
    connected: int = 0
    sent: int = 0
    dropped: int = 0
    skipped_late: int = 0
    publish_refused: int = 0
    bytes_sent: int = 0
    health_sent: int = 0
    send_lag_ms: Reservoir = field(default_factory=lambda: Reservoir(LAG_SAMPLES_PER_PROCESS))
    elapsed_s: float = 0.0


class SimLoop:
    """One selector loop driving a slice of the fleet. Not thread-safe; one per process."""

    def __init__(self, config: SimConfig, indices: range) -> None:
        self.config = config
        self.selector = selectors.DefaultSelector()
        self.devices: list[_Device] = []
        self.report = WorkerReport(devices=len(indices))
        self._random = random.Random(config.seed * 7919 + indices.start)
        self._cycle = replay_cycle()
        self._writing: set[int] = set()
        # One Properties object for every keypoints message: building it per message costs more than the send.
        self._keypoints_properties: Properties | None = None
        if config.protocol == "5" and config.keypoints_expiry_s > 0:
            self._keypoints_properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            self._keypoints_properties.MessageExpiryInterval = config.keypoints_expiry_s
        for index in indices:
            self.devices.append(self._make_device(index))

    # -- sessions ------------------------------------------------------------------------------

    def _make_device(self, index: int) -> _Device:
        config = self.config
        device_id = config.device_id(index)
        topics = Topics(config.base_topic, device_id)
        broker = config.brokers[index % len(config.brokers)]
        protocol = PAHO_PROTOCOL[config.protocol]
        if config.protocol == "5":
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edgepose-{device_id}", protocol=protocol)
        else:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=f"edgepose-{device_id}", protocol=protocol, clean_session=True
            )
        device = _Device(index, device_id, topics, client, broker)
        # The daemon's Last Will: the broker says `offline` for us if we vanish.
        client.will_set(topics.status, STATUS_OFFLINE, qos=1, retain=True)
        client.user_data_set(device)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        return device

    def _on_connect(self, client: mqtt.Client, device: _Device, flags: Any, reason_code: Any, props: Any) -> None:
        if reason_code.is_failure:
            device.refused = str(reason_code)
            return
        device.connected = True
        client.publish(device.topics.status, STATUS_ONLINE, qos=1, retain=True)
        self._publish_health(device)

    def _on_disconnect(self, client: mqtt.Client, device: _Device, flags: Any, reason_code: Any, props: Any) -> None:
        device.connected = False

    def _on_socket_open(self, client: mqtt.Client, device: _Device, sock: Any) -> None:
        self.selector.register(sock, selectors.EVENT_READ, device)

    def _on_socket_close(self, client: mqtt.Client, device: _Device, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(sock)
        self._writing.discard(id(device))

    def connect_all(self, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        for device in self.devices:
            try:
                device.client.connect(device.broker.host, device.broker.port, keepalive=self.config.keepalive_s)
            except OSError as exc:
                raise BrokerError(f"cannot connect to MQTT broker {device.broker}: {exc.strerror or exc}") from None
            self._flush(device)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._poll(0.05)
            pending = [d for d in self.devices if not d.connected and d.refused is None]
            if not pending:
                break
        refused = [d for d in self.devices if d.refused is not None]
        if refused:
            hint = " (a broker without MQTT 5 needs --protocol 3.1.1)" if self.config.protocol == "5" else ""
            raise BrokerError(
                f"MQTT broker {refused[0].broker} refused {refused[0].device_id}: {refused[0].refused}{hint}"
            )
        self.report.connected = sum(1 for d in self.devices if d.connected)
        if self.report.connected < len(self.devices):
            raise BrokerError(
                f"only {self.report.connected} of {len(self.devices)} simulated devices connected "
                f"within {timeout_s:.0f}s"
            )

    # -- the loop ------------------------------------------------------------------------------

    def _flush(self, device: _Device) -> None:
        """Keep the selector's write interest in step with what paho still has to send."""
        sock = device.client.socket()
        if sock is None:
            return
        wants = device.client.want_write()
        key = id(device)
        if wants and key not in self._writing:
            self.selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, device)
            self._writing.add(key)
        elif not wants and key in self._writing:
            self.selector.modify(sock, selectors.EVENT_READ, device)
            self._writing.discard(key)

    def _poll(self, timeout_s: float) -> None:
        for key, mask in self.selector.select(timeout_s):
            device: _Device = key.data
            client = device.client
            if mask & selectors.EVENT_READ:
                client.loop_read()
            if mask & selectors.EVENT_WRITE and client.socket() is not None:
                client.loop_write()
            self._flush(device)

    def run(self, start_monotonic_s: float, start_wall_s: float) -> WorkerReport:
        """Publish from start_monotonic_s for duration_s, then stop every session cleanly."""
        config = self.config
        interval_s = 1.0 / config.fps
        end_s = start_monotonic_s + config.duration_s
        total = len(self.devices)
        # Stagger the fleet evenly over one frame interval, as real cameras are unsynchronised.
        heap = [
            (start_monotonic_s + interval_s * (d.index % max(1, config.devices)) / config.devices, n)
            for n, d in enumerate(self.devices)
        ]
        heapq.heapify(heap)
        next_health = [start_monotonic_s + config.health_interval_s * (n + 1) / max(1, total) for n in range(total)]
        health_heap = [(t, n) for n, t in enumerate(next_health)]
        heapq.heapify(health_heap)
        next_misc_s = start_monotonic_s + MISC_INTERVAL_S
        report = self.report
        loss = config.loss_percent / 100.0
        while True:
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                due_s, n = heapq.heappop(heap)
                device = self.devices[n]
                # More than a frame behind: skip the frames a real camera would have superseded (the
                # daemon drops stale frames before inference, using no seq), so an overloaded
                # simulator reports a shortfall instead of running long.
                behind = int((now - due_s) / interval_s)
                if behind:
                    due_s += behind * interval_s
                    device.skipped_late += behind
                # A frame is due when due < end; the tolerance keeps float steps (0.1 * 10) from adding one.
                if due_s >= end_s - END_TOLERANCE_S:
                    continue
                last = due_s + interval_s >= end_s - END_TOLERANCE_S
                self._send_keypoints(device, due_s, start_monotonic_s, start_wall_s, loss, last)
                report.send_lag_ms.add((time.monotonic() - due_s) * 1e3)
                if not last:
                    heapq.heappush(heap, (due_s + interval_s, n))
                now = time.monotonic()
            while health_heap and health_heap[0][0] <= now:
                due_s, n = heapq.heappop(health_heap)
                self._publish_health(self.devices[n])
                heapq.heappush(health_heap, (due_s + config.health_interval_s, n))
            if now >= next_misc_s:
                for device in self.devices:
                    device.client.loop_misc()
                    self._flush(device)
                next_misc_s = now + MISC_INTERVAL_S
            if not heap:
                break
            self._poll(max(0.0, min(heap[0][0] - time.monotonic(), 0.05)))
        report.elapsed_s = time.monotonic() - start_monotonic_s
        for device in self.devices:
            report.sent += device.sent
            report.dropped += device.dropped
            report.skipped_late += device.skipped_late
            report.publish_refused += device.publish_refused
            report.bytes_sent += device.bytes_sent
        return report

    def _send_keypoints(
        self, device: _Device, due_s: float, start_monotonic_s: float, start_wall_s: float, loss: float, last: bool
    ) -> None:
        seq = device.seq
        device.seq += 1
        pose = self._cycle[(device.frame_index + device.index * 7) % len(self._cycle)]
        device.frame_index += 1
        if loss and not last and self._random.random() < loss:
            device.dropped += 1  # lost on the way: the seq is used up, as on a real lossy link
            return
        message = KeypointsMessage(
            device_id=device.device_id,
            seq=seq,
            timestamp_s=start_wall_s + (due_s - start_monotonic_s),
            frame_width_px=FRAME_WIDTH_PX,
            frame_height_px=FRAME_HEIGHT_PX,
            model=SIM_MODEL,
            backend="cpu",
            inference_ms=SIM_INFERENCE_MS,
            capture_to_publish_ms=max(0.0, (time.monotonic() - due_s) * 1e3),
            poses=(pose,),
            smoothed=True,
        )
        payload = keypoints_bytes(message, self.config.payload_format)
        info = device.client.publish(
            device.topics.keypoints, payload, qos=self.config.qos_keypoints, properties=self._keypoints_properties
        )
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            device.sent += 1
            device.bytes_sent += len(payload)
        else:
            device.publish_refused += 1
        self._flush(device)

    def _publish_health(self, device: _Device) -> None:
        """A schema-valid edgepose.health/1 (consumers validate it like a real device's)."""
        uptime_s = time.monotonic() - device.started_monotonic_s
        inference = {"p50": SIM_INFERENCE_MS, "p95": SIM_INFERENCE_MS}
        unmeasured: dict[str, float | None] = {"p50": None, "p95": None}
        report = HealthReport(
            device_id=device.device_id,
            timestamp_s=time.time(),
            uptime_s=uptime_s,
            version=__version__,
            state="running",
            state_reason=None,
            runtime="litert",
            runtime_version=f"fleet-sim {__version__}",
            backend="cpu",
            backend_reason="simulated device (edgepose fleet-sim): replayed poses, no model runs",
            edgetpu_temp_c=None,
            model=SIM_MODEL,
            source="fleet-sim",
            num_threads=1,
            fps={"capture": self.config.fps, "inference": self.config.fps, "published": self.config.fps},
            latency_ms={
                "inference": inference,
                "capture_to_publish": unmeasured,
                "frame_age_at_inference": unmeasured,
                "stages": {
                    stage: inference if stage == "invoke" else unmeasured
                    for stage in ("capture_wait", "preprocess", "invoke", "decode", "publish")
                },
            },
            counters={
                "frames_captured": device.seq + device.skipped_late,
                "frames_inferred": device.seq,
                "frames_published": device.sent,
                "frames_dropped": device.skipped_late,
                "frames_dropped_stale": device.skipped_late,
                "frames_dropped_throttle": 0,
                "frames_failed": 0,
                "publish_failed": device.publish_refused + device.dropped,
                "source_reopens": 0,
            },
            mqtt={
                "connected": device.connected,
                "protocol": self.config.protocol,
                "reconnects": 0,
                "queued": 0,
                "not_published": device.publish_refused + device.dropped,
            },
            system={"cpu_percent": None, "memory_rss_mb": None, "load1": None, "cpu_temp_c": None},
        )
        info = device.client.publish(device.topics.health, encode(health_payload(report)), qos=1, retain=True)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self.report.health_sent += 1
        self._flush(device)

    def stop_all(self, timeout_s: float = 5.0) -> None:
        """The daemon's clean stop for every session: retained `offline`, then DISCONNECT."""
        for device in self.devices:
            if device.connected:
                device.client.publish(device.topics.status, STATUS_OFFLINE, qos=1, retain=True)
                self._flush(device)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(d.client.want_write() for d in self.devices if d.connected):
            self._poll(0.05)
        for device in self.devices:
            device.client.disconnect()
            device.client.loop_write()
            sock = device.client.socket()
            if sock is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(sock)
        self.selector.close()


# -- processes ---------------------------------------------------------------------------------


def _slices(devices: int, processes: int) -> list[range]:
    bounds = np.linspace(0, devices, processes + 1).round().astype(int)
    return [range(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]


def _worker(config: SimConfig, indices: range, ready: Any, go: Any, start: Any, results: Any) -> None:
    try:
        loop = SimLoop(config, indices)
        loop.connect_all()
    except BrokerError as exc:
        ready.put(str(exc))
        return
    ready.put(None)
    go.wait()
    start_wall_s = start.value
    start_monotonic_s = time.monotonic() + (start_wall_s - time.time())
    report = loop.run(start_monotonic_s, start_wall_s)
    loop.stop_all()
    results.put(report)


def run_fleet(config: SimConfig) -> dict[str, Any]:
    """Run the simulation and return the report: {devices, fps, sent, duration_s, send_lag_ms, ...}."""
    processes = config.process_count()
    slices = _slices(config.devices, processes)
    if len(slices) == 1:
        loop = SimLoop(config, slices[0])
        loop.connect_all()
        start_monotonic_s, start_wall_s = time.monotonic() + 0.1, time.time() + 0.1
        reports = [loop.run(start_monotonic_s, start_wall_s)]
        loop.stop_all()
    else:
        reports = _run_processes(config, slices)
    return _summary(config, len(slices), reports)


def _run_processes(config: SimConfig, slices: list[range]) -> list[WorkerReport]:
    ctx = multiprocessing.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    start = ctx.Value("d", 0.0)
    workers = [
        ctx.Process(target=_worker, args=(config, s, ready, go, start, results), name=f"fleet-sim-{n}", daemon=True)
        for n, s in enumerate(slices)
    ]
    for worker in workers:
        worker.start()
    try:
        problems = [ready.get(timeout=CONNECT_TIMEOUT_S + 30) for _ in workers]
        failed = [p for p in problems if p]
        if failed:
            go.set()
            raise BrokerError(failed[0])
        start.value = time.time() + 0.2  # every loop starts on the same wall-clock instant
        go.set()
        reports = [results.get(timeout=config.duration_s + 60) for _ in workers]
    finally:
        for worker in workers:
            worker.join(5)
            if worker.is_alive():
                worker.terminate()
    return reports


def _summary(config: SimConfig, processes: int, reports: list[WorkerReport]) -> dict[str, Any]:
    merged = Reservoir(LAG_SAMPLES_PER_PROCESS * len(reports))
    for r in reports:
        merged.samples += r.send_lag_ms.samples
    p50, p95 = merged.percentiles()
    sent = sum(r.sent for r in reports)
    elapsed_s = max(r.elapsed_s for r in reports)
    return {
        "devices": config.devices,
        "fps": config.fps,
        "sent": sent,
        "duration_s": round(elapsed_s, 3),
        "send_lag_ms": {
            "p50": p50,
            "p95": p95,
            "max": round(max(r.send_lag_ms.max or 0.0 for r in reports), 2),
        },
        "format": config.payload_format.value,
        "protocol": config.protocol,
        "processes": processes,
        "brokers": [str(b) for b in config.brokers],
        "rate_per_s": round(sent / elapsed_s, 1) if elapsed_s > 0 else 0.0,
        "planned": round(config.devices * config.fps * config.duration_s),
        "skipped_late": sum(r.skipped_late for r in reports),
        "dropped": sum(r.dropped for r in reports),
        "publish_refused": sum(r.publish_refused for r in reports),
        "health_sent": sum(r.health_sent for r in reports),
        "mean_size_bytes": round(sum(r.bytes_sent for r in reports) / sent, 1) if sent else None,
    }


def parse_brokers(text: str) -> tuple[BrokerAddress, ...]:
    """`HOST:PORT[,HOST:PORT...]`; raises ValueError with the part that is wrong."""
    brokers = []
    for part in text.split(","):
        host, sep, port_text = part.strip().rpartition(":")
        if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{part!r} is not HOST:PORT")
        brokers.append(BrokerAddress(host, int(port_text)))
    return tuple(brokers)
