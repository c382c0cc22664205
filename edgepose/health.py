"""Counters, latency percentiles and rates, and the assembly of the health report from read-only views.

Each counter has exactly one writer thread (named next to it), so plain integer fields are
enough; failures are counted per loop and summed for health. Readers take snapshots. Latency
windows are bounded deques: constant memory forever. Hardware readings (SoC and Coral
temperatures, process figures) come from `system.py` and `inference/edgetpu.py` as plain values.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgepose.mqtt.payloads import HealthReport

LATENCY_WINDOW = 1024
STAGES = ("capture_wait", "preprocess", "invoke", "decode", "publish")


class LatencyWindow:
    """The last LATENCY_WINDOW samples (ms); p50/p95 over them."""

    def __init__(self, size: int = LATENCY_WINDOW) -> None:
        self._samples: deque[float] = deque(maxlen=size)

    def add(self, value_ms: float) -> None:
        self._samples.append(value_ms)

    def percentiles(self) -> dict[str, float | None]:
        samples = list(self._samples)
        if not samples:
            return {"p50": None, "p95": None}
        p50, p95 = np.percentile(np.asarray(samples), [50, 95])
        return {"p50": round(float(p50), 2), "p95": round(float(p95), 2)}


@dataclass
class Counters:
    """One writer per field: the loop named after it. Never increment a field from another thread.
    The exception: the two delivery outcomes, reported by the MQTT client's network thread (or at
    once by the publish loop) and counted under PublishLoop's delivery lock."""

    frames_captured: int = 0  # capture (or prepare, for a source read inline)
    frames_inferred: int = 0  # invoke
    frames_published: int = 0  # delivery: acknowledged by the broker (QoS >= 1) or written (QoS 0)
    frames_dropped_stale: int = 0  # capture: superseded by a fresher frame before inference, by design
    frames_dropped_throttle: int = 0  # publish: over publish.max_fps
    capture_failed: int = 0  # capture: source read errors
    prepare_failed: int = 0  # prepare: preprocessing errors
    invoke_failed: int = 0  # invoke: inference errors
    decode_failed: int = 0  # publish: decoding errors
    publish_failed: int = 0  # delivery: really dropped (QoS 0 while disconnected, queue full, unacked at stop)
    source_reopens: int = 0  # capture

    @property
    def frames_failed(self) -> int:
        """Frames lost to errors in any loop (health's `frames_failed`)."""
        return self.capture_failed + self.prepare_failed + self.invoke_failed + self.decode_failed


@dataclass
class PipelineStats:
    counters: Counters = field(default_factory=Counters)
    stages: dict[str, LatencyWindow] = field(default_factory=lambda: {s: LatencyWindow() for s in STAGES})
    inference_ms: LatencyWindow = field(default_factory=LatencyWindow)
    capture_to_publish_ms: LatencyWindow = field(default_factory=LatencyWindow)
    frame_age_at_inference_ms: LatencyWindow = field(default_factory=LatencyWindow)
    started_monotonic_s: float = field(default_factory=time.monotonic)
    first_publish_monotonic_s: float | None = None
    last_inference_monotonic_s: float | None = None


class RateMeter:
    """Rates of the counters between snapshots at least `min_window_s` apart (fps over the last window).

    Asked more often than that, it returns the last rates rather than a noisy rate over a few ms.
    """

    def __init__(self, min_window_s: float = 1.0) -> None:
        self.min_window_s = min_window_s
        self._last: tuple[float, int, int, int] | None = None
        self._rates = {"capture": 0.0, "inference": 0.0, "published": 0.0}
        self._lock = threading.Lock()

    def rates(self, counters: Counters) -> dict[str, float]:
        now = time.monotonic()
        current = (now, counters.frames_captured, counters.frames_inferred, counters.frames_published)
        with self._lock:
            previous = self._last
            if previous is None:
                self._last = current
                return dict(self._rates)
            elapsed = now - previous[0]
            if elapsed < self.min_window_s:
                return dict(self._rates)
            self._last = current
            self._rates = {
                "capture": round((current[1] - previous[1]) / elapsed, 2),
                "inference": round((current[2] - previous[2]) / elapsed, 2),
                "published": round((current[3] - previous[3]) / elapsed, 2),
            }
            return dict(self._rates)


# -- the health report, from read-only views of the running parts ---------------------------------


@dataclass(frozen=True)
class ModelView:
    runtime: str
    runtime_version: str
    backend: str  # where the next invoke runs: cpu | edgetpu
    backend_reason: str | None
    model: str
    num_threads: int


@dataclass(frozen=True)
class SourceView:
    description: str
    frames_skipped: int


@dataclass(frozen=True)
class MqttView:
    connected: bool
    connects: int
    queued: int
    last_error: str | None
    protocol: str = "5"
    failed_attempts: int = 0
    last_error_at_s: float | None = None  # UNIX time
    session_takeovers: int = 0


@dataclass(frozen=True)
class Readings:
    """What the hardware says right now; read by the caller (system.py, inference/edgetpu.py)."""

    system: dict[str, float | None]
    edgetpu_temp_c: float | None


def assemble_health(
    *,
    device_id: str,
    version: str,
    state: str,
    state_reason: str | None,
    stats: PipelineStats,
    fps: dict[str, float],
    model: ModelView,
    source: SourceView,
    mqtt: MqttView,
    readings: Readings,
    pose_score: float | None = None,
    now_s: float | None = None,
    now_monotonic_s: float | None = None,
) -> HealthReport:
    """The health report from snapshots: no part is asked to do anything, only read."""
    c = stats.counters
    now_s = time.time() if now_s is None else now_s
    now_monotonic_s = time.monotonic() if now_monotonic_s is None else now_monotonic_s
    failed = c.frames_failed
    latency: dict[str, Any] = {
        "inference": stats.inference_ms.percentiles(),
        "capture_to_publish": stats.capture_to_publish_ms.percentiles(),
        "frame_age_at_inference": stats.frame_age_at_inference_ms.percentiles(),
        "stages": {name: stats.stages[name].percentiles() for name in STAGES},
    }
    return HealthReport(
        device_id=device_id,
        timestamp_s=now_s,
        uptime_s=now_monotonic_s - stats.started_monotonic_s,
        version=version,
        state=state,
        state_reason=state_reason,
        runtime=model.runtime,
        runtime_version=model.runtime_version,
        backend=model.backend,
        backend_reason=model.backend_reason,
        edgetpu_temp_c=readings.edgetpu_temp_c,
        model=model.model,
        source=source.description,
        num_threads=model.num_threads,
        fps=fps,
        latency_ms=latency,
        counters={
            "frames_captured": c.frames_captured,
            "frames_inferred": c.frames_inferred,
            "frames_published": c.frames_published,
            "frames_dropped": c.frames_dropped_stale + c.frames_dropped_throttle + failed,
            "frames_dropped_stale": c.frames_dropped_stale,
            "frames_dropped_throttle": c.frames_dropped_throttle,
            "frames_failed": failed,
            "publish_failed": c.publish_failed,
            "source_reopens": c.source_reopens,
            "camera_frames_skipped": source.frames_skipped,
        },
        mqtt={
            "connected": mqtt.connected,
            "protocol": mqtt.protocol,
            "reconnects": max(0, mqtt.connects - 1),
            "failed_attempts": mqtt.failed_attempts,
            "queued": mqtt.queued,
            "not_published": c.publish_failed,
            "last_error": mqtt.last_error,
            "last_error_at": round(mqtt.last_error_at_s, 3) if mqtt.last_error_at_s is not None else None,
            "session_takeovers": mqtt.session_takeovers,
        },
        system=readings.system,
        pose_score=pose_score,
    )
