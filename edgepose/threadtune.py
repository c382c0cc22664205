"""`model.num_threads: auto`: the interpreter thread count that gives the highest PIPELINE rate.

The raw invoke loop is fastest with every core, but the daemon also prepares, decodes and
publishes each frame on other threads, and that CPU comes out of the invoke when the interpreter
takes all cores (on a 2-core x86 box, 2 threads gave the highest raw rate but not the highest
pipeline rate). So each candidate (1 .. cores) runs the daemon's own pipeline loops in process for
a short while: synthetic frames at the camera's size -> prepare -> invoke -> decode, crop,
smoothing -> payload encoded (not sent: no broker is needed), and the count with the highest rate
of encoded payloads wins.

It is measured once per model and machine and cached in `num_threads.json` in the model directory
(a state directory under systemd). The key names the model file (name, size, modification time),
the machine (architecture, CPU model, core count), the runtime, and the frame size, so a new model,
a moved SD card or a runtime upgrade measure again. Delete the file to force a new measurement.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgepose.config import ModelConfig
from edgepose.errors import EdgeposeError
from edgepose.health import PipelineStats
from edgepose.inference.runtime import Runtime, open_cpu_backend
from edgepose.inference.stage import build_stage
from edgepose.pipeline import (
    EndOfStream,
    HandOff,
    InlineFeed,
    InvokeClock,
    Invoked,
    InvokeLoop,
    PrepareLoop,
    PublishLoop,
)
from edgepose.sources.synthetic import SyntheticSource

log = logging.getLogger(__name__)

CACHE_FILE = "num_threads.json"
MEASURE_WARMUP_FRAMES = 20
MEASURE_S = 1.5

MeasureFn = Callable[[int], float]  # thread count -> pipeline frames per second


def cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo (x86 `model name`, Raspberry Pi `Model`), else platform's."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or "unknown"
    for field in ("model name", "Model", "Hardware"):
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == field and value.strip():
                return value.strip()
    return platform.processor() or "unknown"


def cache_key(model_path: Path, runtime: Runtime, frame_size_px: tuple[int, int], cores: int) -> str:
    stat = model_path.stat()
    width_px, height_px = frame_size_px
    return (
        f"{model_path.name} {stat.st_size}B mtime {int(stat.st_mtime)} | {platform.machine()} {cpu_model()} "
        f"x{cores} | {runtime.name} {runtime.version} | {width_px}x{height_px}"
    )


def pick_threads(
    model_path: Path,
    runtime: Runtime,
    cache_dir: Path,
    frame_size_px: tuple[int, int],
    measure: MeasureFn | None = None,
    cores: int | None = None,
) -> int:
    """The cached choice for this model and machine, or measure 1..cores, cache and return the best."""
    cores = cores or os.cpu_count() or 1
    key = cache_key(model_path, runtime, frame_size_px, cores)
    cache_path = cache_dir / CACHE_FILE
    cache = _read_cache(cache_path)
    entry = cache.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("threads"), int) and 1 <= entry["threads"] <= cores:
        threads: int = entry["threads"]
        log.info("model.num_threads auto: %d (measured before, %s)", threads, cache_path)
        return threads
    if measure is None:
        measure = _pipeline_measure(model_path, runtime, frame_size_px)
    log.info("model.num_threads auto: measuring the pipeline rate at 1..%d threads (once for this model)", cores)
    rates_fps = {count: measure(count) for count in range(1, cores + 1)}
    # On a tie the fewer threads: they leave more CPU to everything else on the device.
    threads = max(rates_fps, key=lambda count: (round(rates_fps[count], 1), -count))
    log.info(
        "model.num_threads auto: %d (%s)",
        threads,
        ", ".join(f"{count} threads {fps:.1f} fps" for count, fps in rates_fps.items()),
    )
    cache[key] = {
        "threads": threads,
        "pipeline_fps": {str(count): round(fps, 2) for count, fps in rates_fps.items()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_cache(cache_path, cache)
    return threads


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("model.num_threads auto: ignoring unreadable %s (%s); measuring again", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, cache: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(cache, indent=2, sort_keys=True) + "\n")
        partial.replace(path)  # atomic: a crash mid-write never leaves half a file
    except OSError as exc:
        log.warning("model.num_threads auto: cannot cache the choice in %s (%s); will measure again", path, exc)


class _CountingPublisher:
    """Takes the encoded payloads the publish loop makes, and counts them."""

    def __init__(self) -> None:
        self.count = 0

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool = False,
        expiry_s: float | None = None,
        on_delivery: Callable[[bool], None] | None = None,
    ) -> bool:
        self.count += 1
        if on_delivery is not None:
            on_delivery(True)
        return True


def _pipeline_measure(model_path: Path, runtime: Runtime, frame_size_px: tuple[int, int]) -> MeasureFn:
    def measure(threads: int) -> float:
        return measure_pipeline_fps(model_path, runtime, threads, frame_size_px)

    return measure


def measure_pipeline_fps(
    model_path: Path,
    runtime: Runtime,
    threads: int,
    frame_size_px: tuple[int, int],
    duration_s: float | None = None,
) -> float:
    """Payloads per second out of the daemon's prepare/invoke/publish loops, on their own threads."""
    backend = open_cpu_backend(model_path, runtime, threads)
    try:
        stage = build_stage(backend, model_path.stem, ModelConfig(), "video")
        stats = PipelineStats()
        source = SyntheticSource(*frame_size_px, fps=None)
        source.open()
        hand_off, clock = HandOff(), InvokeClock()
        invoked: queue.Queue[Invoked | EndOfStream] = queue.Queue(maxsize=8)
        publisher = _CountingPublisher()
        stop = threading.Event()
        runs: list[Callable[[threading.Event], None]] = [
            PrepareLoop(InlineFeed(source, stats), stage, hand_off, clock, stats, max_frames=None).run,
            InvokeLoop(stage, hand_off, clock, invoked, stats, lambda: None).run,
            PublishLoop(invoked, stage, publisher, "threadtune", 0, "threadtune", stats).run,
        ]
        workers = [threading.Thread(target=run, args=(stop,), name="edgepose-threadtune") for run in runs]
        for worker in workers:
            worker.start()
        try:
            deadline_s = time.monotonic() + 30.0
            while publisher.count < MEASURE_WARMUP_FRAMES and time.monotonic() < deadline_s:
                time.sleep(0.01)
            first_count, first_s = publisher.count, time.perf_counter()
            time.sleep(MEASURE_S if duration_s is None else duration_s)
            rate_fps = (publisher.count - first_count) / (time.perf_counter() - first_s)
        finally:
            stop.set()
            for worker in workers:
                worker.join(5.0)
        source.close()
    finally:
        backend.close()
    if rate_fps <= 0:
        raise EdgeposeError(f"model.num_threads auto: no frames came through the pipeline at {threads} threads")
    return rate_fps
