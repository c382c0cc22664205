"""Wires a Config into source, estimator, publisher and health; owns every thread and the lifecycle.

One stop path for SIGTERM/SIGINT, --max-frames, the end of a finite source and errors:
stop inference and capture, drain the publish queue, publish a last health and `offline`,
disconnect, close the source.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgepose import __version__
from edgepose.config import Config, read_mqtt_password
from edgepose.errors import EXIT_OK, EXIT_SOFTWARE, EdgeposeError
from edgepose.health import STAGES, PipelineStats, RateMeter, SystemReader
from edgepose.inference.movenet import SinglePoseEstimator
from edgepose.inference.runtime import (
    InterpreterBackend,
    effective_threads,
    load_runtime,
    open_cpu_backend,
)
from edgepose.inference.stage import SinglePoseStage
from edgepose.models import ResolvedModel, default_model_dir, load_manifest, resolve_model, sample_paths
from edgepose.mqtt.payloads import HealthReport, encode, health_payload
from edgepose.mqtt.publisher import MqttPublisher
from edgepose.mqtt.topics import Topics
from edgepose.pipeline import (
    CaptureLoop,
    FrameFeed,
    InferenceLoop,
    InferenceResult,
    InlineFeed,
    LatestFrameSlot,
    PublishLoop,
    SequentialSlot,
)
from edgepose.sources.base import FrameSource
from edgepose.sources.factory import open_source

log = logging.getLogger(__name__)

RESULT_QUEUE_DEPTH = 32
JOIN_TIMEOUT_S = 1.5


@dataclass
class RunState:
    """What health reports as `state`; written by the daemon and the capture thread."""

    state: str = "starting"
    camera_problem: str | None = None
    backend_problem: str | None = None

    def current(self) -> tuple[str, str | None]:
        if self.state in ("starting", "stopping"):
            return self.state, None
        problem = self.camera_problem or self.backend_problem
        return ("degraded", problem) if problem else ("running", None)


@dataclass
class Components:
    """Everything built from a Config, before any thread starts."""

    source: FrameSource
    backend: InterpreterBackend
    stage: SinglePoseStage
    model: ResolvedModel
    num_threads: int
    backend_reason: str | None


def build_components(config: Config) -> Components:
    manifest = load_manifest()
    model_dir = default_model_dir(config.model.dir)
    model = resolve_model(config.model.name, model_dir, manifest)
    runtime = load_runtime(config.model.runtime)
    threads, warning = effective_threads(config.model.num_threads)
    if warning:
        log.warning(warning)
    backend = open_cpu_backend(model.path, runtime, threads)
    model_name = model.spec.name if model.spec else model.path.stem
    stage = SinglePoseStage(SinglePoseEstimator(backend), model_name, config.model.score_threshold)
    photos = sample_paths(model_dir, manifest) if config.camera.source == "demo" else None
    source = open_source(config.camera, photos)
    return Components(source, backend, stage, model, threads, "model.backend: cpu")


class Daemon:
    def __init__(
        self,
        config: Config,
        max_frames: int | None = None,
        on_ready: Callable[[], None] | None = None,
        on_status: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.max_frames = max_frames
        self.stop_event = threading.Event()
        self.stats = PipelineStats()
        self.run_state = RunState()
        self._on_ready = on_ready or (lambda: None)
        self._on_status = on_status or (lambda line: None)
        self._rates = RateMeter()
        self._system = SystemReader()
        self._failure: BaseException | None = None
        self.exit_code = EXIT_OK
        self.topics = Topics(config.mqtt.base_topic, config.device_id)

    # -- lifecycle -----------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        if not self.stop_event.is_set():
            log.info("stopping: %s", reason)
        self.stop_event.set()

    def run(self) -> int:
        config = self.config
        components = build_components(config)
        self.components = components
        password = read_mqtt_password(config.mqtt)
        client_id = config.mqtt.client_id or f"edgepose-{config.device_id}"
        self.publisher = MqttPublisher(config.mqtt, self.topics, client_id, password)

        components.source.open()
        log.info(
            "edgepose %s: source %s, model %s (%s, %s %s, %d threads), MQTT %s as %s",
            __version__,
            components.source.description,
            components.stage.model_name,
            components.backend.kind,
            components.backend.runtime.name,
            components.backend.runtime.version,
            components.num_threads,
            self.publisher.address,
            client_id,
        )
        self.publisher.start()
        self._publish_health()

        results: queue.Queue[InferenceResult] = queue.Queue(maxsize=RESULT_QUEUE_DEPTH)
        feed, capture = self._make_feed(components.source)
        inference = InferenceLoop(
            feed,
            components.stage,
            results,
            self.stats,
            self.max_frames,
            config.publish.max_fps,
            on_first_inference=self._first_inference,
            publish_empty=config.publish.include_empty,
        )
        publish_stop = threading.Event()
        publish = PublishLoop(
            results,
            self.publisher,
            self.topics.keypoints,
            config.mqtt.qos.keypoints,
            config.device_id,
            self.stats,
            enabled=config.publish.keypoints,
        )
        threads = [self._thread("publish", publish.run, publish_stop)]
        if capture is not None:
            threads.append(self._thread("capture", capture.run, self.stop_event))
        inference_thread = self._thread("inference", inference.run, self.stop_event, stop_all_when_done=True)
        threads.append(inference_thread)
        for thread in threads:
            thread.start()

        self._supervise()

        self.run_state.state = "stopping"
        self._on_status("stopping")
        inference_thread.join(JOIN_TIMEOUT_S)
        publish_stop.set()
        for thread in threads:
            thread.join(JOIN_TIMEOUT_S)
            if thread.is_alive():
                log.warning("thread %s did not stop within %.1fs", thread.name, JOIN_TIMEOUT_S)
        if inference.finished_reason:
            log.info("finished: %s", inference.finished_reason)
        self._publish_health()
        self.publisher.stop(timeout_s=2.0)
        components.source.close()
        components.backend.close()
        c = self.stats.counters
        log.info(
            "stopped: %d frames captured, %d inferred, %d published, %d publish failures",
            c.frames_captured,
            c.frames_inferred,
            c.frames_published,
            c.publish_failed,
        )
        if self._failure is not None:
            if isinstance(self._failure, EdgeposeError):
                raise self._failure
            return EXIT_SOFTWARE
        return self.exit_code

    def _make_feed(self, source: FrameSource) -> tuple[FrameFeed, CaptureLoop | None]:
        if source.delivery == "on_demand":
            return InlineFeed(source, self.stats), None
        slot: LatestFrameSlot | SequentialSlot
        slot = LatestFrameSlot(self.stats) if source.delivery == "live" else SequentialSlot(self.stop_event)
        capture = CaptureLoop(source, slot, self.stats, self.config.camera.reopen_backoff_max_s, self._camera_problem)
        return slot, capture

    def _thread(
        self,
        name: str,
        target: Callable[[threading.Event], None],
        stop: threading.Event,
        stop_all_when_done: bool = False,
    ) -> threading.Thread:
        def body() -> None:
            try:
                target(stop)
            except BaseException as exc:  # a thread must never die silently
                self._failure = exc
                if isinstance(exc, EdgeposeError):
                    log.error("%s: %s", name, exc)
                else:
                    log.exception("%s thread crashed", name)
                self.stop_event.set()
            finally:
                if stop_all_when_done:
                    self.stop_event.set()

        return threading.Thread(target=body, name=f"edgepose-{name}", daemon=True)

    def _first_inference(self) -> None:
        self.run_state.state = "running"
        log.info("first pose inferred %.2fs after start", time.monotonic() - self.stats.started_monotonic_s)
        self._on_ready()

    def _camera_problem(self, reason: str | None) -> None:
        self.run_state.camera_problem = reason

    def _supervise(self) -> None:
        """The main thread: periodic health and status until something asks to stop."""
        health_interval_s = self.config.health.interval_s
        status_interval_s = self.config.logging.status_interval_s
        next_health_s = time.monotonic() + health_interval_s
        next_status_s = time.monotonic() + (status_interval_s or 1.0)
        while not self.stop_event.wait(0.1):
            now = time.monotonic()
            if now >= next_health_s:
                self._publish_health()
                next_health_s = now + health_interval_s
            if now >= next_status_s:
                line = self.status_line()
                self._on_status(line)
                if status_interval_s:
                    log.info("%s", line)
                next_status_s = now + (status_interval_s or 1.0)

    # -- reporting -----------------------------------------------------------------------------

    def status_line(self) -> str:
        state, reason = self.run_state.current()
        c = self.stats.counters
        uptime = max(1e-9, time.monotonic() - self.stats.started_monotonic_s)
        latency = self.stats.capture_to_publish_ms.percentiles()
        mqtt = "connected" if self.publisher.stats.connected else "disconnected"
        p50 = f"{latency['p50']:.1f}ms" if latency["p50"] is not None else "-"
        line = (
            f"{state} {self.components.backend.kind} {c.frames_inferred / uptime:.1f} fps "
            f"latency p50 {p50} published {c.frames_published} mqtt={mqtt}"
        )
        return f"{line} ({reason})" if reason else line

    def health_report(self) -> HealthReport:
        stats = self.stats
        c = stats.counters
        state, reason = self.run_state.current()
        components = self.components
        return HealthReport(
            device_id=self.config.device_id,
            timestamp_s=time.time(),
            uptime_s=time.monotonic() - stats.started_monotonic_s,
            version=__version__,
            state=state,
            state_reason=reason,
            runtime=components.backend.runtime.name,
            runtime_version=components.backend.runtime.version,
            backend=components.backend.kind,
            backend_reason=components.backend_reason,
            model=components.stage.model_name,
            source=components.source.description,
            num_threads=components.num_threads,
            fps=self._rates.rates(c),
            latency_ms={
                "inference": stats.inference_ms.percentiles(),
                "capture_to_publish": stats.capture_to_publish_ms.percentiles(),
                "frame_age_at_inference": stats.frame_age_at_inference_ms.percentiles(),
                "stages": {name: stats.stages[name].percentiles() for name in STAGES},
            },
            counters={
                "frames_captured": c.frames_captured,
                "frames_inferred": c.frames_inferred,
                "frames_published": c.frames_published,
                "frames_dropped": c.frames_dropped_stale + c.frames_dropped_throttle + c.frames_failed,
                "frames_dropped_stale": c.frames_dropped_stale,
                "frames_dropped_throttle": c.frames_dropped_throttle,
                "frames_failed": c.frames_failed,
                "publish_failed": c.publish_failed,
                "source_reopens": c.source_reopens,
            },
            mqtt={
                "connected": self.publisher.stats.connected,
                "reconnects": max(0, self.publisher.stats.connects - 1),
                "queued": self.publisher.queued(),
                "not_published": c.publish_failed,
                "last_error": self.publisher.stats.last_error,
            },
            system=self._system.read(),
        )

    def _publish_health(self) -> None:
        payload = encode(health_payload(self.health_report()))
        self.publisher.publish_retained_state(self.topics.health, payload, self.config.mqtt.qos.health)
