"""Counters, latency percentiles, rates and system readings for the health topic and status line.

Each counter has one writer thread (capture, inference or publish), so plain integer fields are
enough; readers take snapshots. Latency windows are bounded deques: constant memory forever.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

from edgepose.inference.edgetpu import apex_nodes, apex_temperature_c

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
    frames_captured: int = 0
    frames_inferred: int = 0
    frames_published: int = 0
    frames_dropped_stale: int = 0  # superseded by a fresher frame before inference: by design
    frames_dropped_throttle: int = 0  # over publish.max_fps
    frames_failed: int = 0  # lost to errors (source read, inference)
    publish_failed: int = 0  # could not be handed to the broker (disconnected, queue full)
    source_reopens: int = 0


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


def read_cpu_temp_c(thermal_root: Path = Path("/sys/class/thermal")) -> float | None:
    """SoC temperature: the Pi exposes it as thermal_zone0 in millidegrees."""
    for zone in sorted(thermal_root.glob("thermal_zone*/temp")):
        try:
            return round(int(zone.read_text().strip()) / 1000.0, 1)
        except (OSError, ValueError):
            continue
    return None


def read_edgetpu_temp_c() -> float | None:
    """The first PCIe/M.2 Coral's temperature (the USB Accelerator reports none)."""
    for node in apex_nodes():
        temperature_c = apex_temperature_c(node.name)
        if temperature_c is not None:
            return round(temperature_c, 1)
    return None


class SystemReader:
    def __init__(self) -> None:
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call primes the measurement interval

    def read(self) -> dict[str, float | None]:
        try:
            load1: float | None = round(os.getloadavg()[0], 2)
        except OSError:
            load1 = None
        return {
            "cpu_percent": round(self._process.cpu_percent(None), 1),
            "memory_rss_mb": round(self._process.memory_info().rss / 1e6, 1),
            "load1": load1,
            "cpu_temp_c": read_cpu_temp_c(),
        }

    def rss_mb(self) -> float:
        return float(self._process.memory_info().rss / 1e6)
