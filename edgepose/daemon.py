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
from edgepose.errors import EXIT_OK, EXIT_SOFTWARE, ConfigError, EdgeposeError
from edgepose.health import STAGES, PipelineStats, RateMeter, SystemReader, read_edgetpu_temp_c
from edgepose.inference.backends import cpu_build, model_label, select_backend
from edgepose.inference.runtime import InferenceBackend, load_runtime
from edgepose.inference.stage import Mode, PoseStage, build_stage
from edgepose.models import ResolvedModel, default_model_dir, load_manifest, resolve_model, sample_paths
from edgepose.mqtt.payloads import HealthReport, encode, health_payload
from edgepose.mqtt.publisher import MqttPublisher
from edgepose.mqtt.topics import Topics
from edgepose.pipeline import (
    CaptureLoop,
    EndOfStream,
    FrameFeed,
    HandOff,
    InlineFeed,
    InvokeClock,
    Invoked,
    InvokeLoop,
    LatestFrameSlot,
    PrepareLoop,
    PublishLoop,
    SequentialSlot,
)
from edgepose.sources.base import FrameSource
from edgepose.sources.factory import open_source
from edgepose.systemd import Notifier, WatchdogGate

log = logging.getLogger(__name__)

INVOKED_QUEUE_DEPTH = 8
JOIN_TIMEOUT_S = 1.5
SUPERVISE_TICK_S = 0.1
STATUS_PERIOD_S = 2.0


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
class Inference:
    """The model side, rebuilt when the `model` section changes."""

    backend: InferenceBackend
    stage: PoseStage
    model: ResolvedModel
    num_threads: int
    backend_reason: str | None


def build_inference(config: Config) -> Inference:
    manifest = load_manifest()
    model_dir = default_model_dir(config.model.dir)
    model = resolve_model(config.model.name, model_dir, manifest)
    runtime = load_runtime(config.model.runtime)
    choice = select_backend(config.model, model, manifest, model_dir, runtime)
    mode: Mode = "stills" if config.camera.source.startswith("images:") else "video"
    # The payload names the network the user chose; `backend` says where it runs right now.
    stage = build_stage(choice.backend, model_label(cpu_build(model, manifest, model_dir)), config.model, mode)
    return Inference(choice.backend, stage, choice.model, choice.num_threads, choice.reason)


def build_source(config: Config) -> FrameSource:
    photos = None
    if config.camera.source == "demo":
        photos = sample_paths(default_model_dir(config.model.dir), load_manifest())
    return open_source(config.camera, photos)


def build_publisher(config: Config) -> MqttPublisher:
    password = read_mqtt_password(config.mqtt)
    client_id = config.mqtt.client_id or f"edgepose-{config.device_id}"
    return MqttPublisher(config.mqtt, Topics(config.mqtt.base_topic, config.device_id), client_id, password)


@dataclass
class PipelineThreads:
    """The threads of one pipeline run; a reload stops them, swaps components, starts new ones."""

    stop: threading.Event  # capture and prepare stop taking frames
    invoke_stop: threading.Event  # the interpreter finishes what was handed to it
    publish_stop: threading.Event  # publishing drains what was inferred
    prepare: PrepareLoop
    threads: list[threading.Thread]


class Daemon:
    """Owns the components, the pipeline threads and the lifecycle (start, reload, stop)."""

    def __init__(
        self,
        config: Config,
        max_frames: int | None = None,
        reload_config: Callable[[], Config] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.max_frames = max_frames
        self._reload_config = reload_config
        self.notifier = notifier or Notifier({})
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        self._wake = threading.Event()
        self.stats = PipelineStats()
        self.run_state = RunState()
        self._rates = RateMeter()
        self._status_rates = RateMeter()
        self._system = SystemReader()
        self._failure: BaseException | None = None
        self._seq = 0
        self._ready_sent = False
        self._watchdog = WatchdogGate(self.notifier.watchdog_interval_s) if self.notifier.watchdog_interval_s else None

    # -- requests from signal handlers (must only set flags) ------------------------------------

    def request_stop(self, reason: str) -> None:
        self._stop_reason = reason
        self.stop_event.set()
        self._wake.set()

    def request_reload(self) -> None:
        self.reload_event.set()
        self._wake.set()

    # -- lifecycle -----------------------------------------------------------------------------

    def run(self) -> int:
        self.inference = build_inference(self.config)
        self.source = build_source(self.config)
        self.publisher = build_publisher(self.config)
        self.source.open()
        self._log_setup()
        self.publisher.start()
        self._publish_health()

        while True:
            pipeline = self._start_pipeline()
            self._supervise()
            self._stop_pipeline(pipeline)
            if self.stop_event.is_set():
                if pipeline.prepare.finished_reason:
                    log.info("finished: %s", pipeline.prepare.finished_reason)
                elif getattr(self, "_stop_reason", None):
                    log.info("stopping: %s", self._stop_reason)
                break
            self.reload_event.clear()
            self._reload()
        return self._shutdown()

    def _log_setup(self) -> None:
        inference = self.inference
        log.info(
            "edgepose %s: source %s, model %s (%s, %s %s, %d threads), MQTT %s",
            __version__,
            self.source.description,
            inference.stage.model_name,
            inference.backend.kind,
            inference.backend.runtime.name,
            inference.backend.runtime.version,
            inference.num_threads,
            self.publisher.address,
        )

    def _start_pipeline(self) -> PipelineThreads:
        """capture -> prepare -> invoke -> finish+publish, one thread each (capture only for live/file)."""
        config = self.config
        stop = threading.Event()
        invoke_stop = threading.Event()
        publish_stop = threading.Event()
        feed, capture = self._make_feed(self.source, stop)
        stage = self.inference.stage
        hand_off = HandOff()
        clock = InvokeClock()
        invoked: queue.Queue[Invoked | EndOfStream] = queue.Queue(maxsize=INVOKED_QUEUE_DEPTH)
        prepare = PrepareLoop(feed, stage, hand_off, clock, self.stats, self._frames_left())
        invoke = InvokeLoop(stage, hand_off, clock, invoked, self.stats, self._first_inference)
        publish = PublishLoop(
            invoked,
            stage,
            self.publisher,
            self.publisher.topics.keypoints,
            config.mqtt.qos.keypoints,
            config.device_id,
            self.stats,
            enabled=config.publish.keypoints,
            max_publish_fps=config.publish.max_fps,
            publish_empty=config.publish.include_empty,
        )
        publish.seq = self._seq
        self._publish_loop = publish
        threads = []
        if capture is not None:
            threads.append(self._thread("capture", capture.run, stop))
        threads += [
            self._thread("prepare", prepare.run, stop, stop_daemon_when_done=True),
            self._thread("invoke", invoke.run, invoke_stop),
            self._thread("publish", publish.run, publish_stop),
        ]
        for thread in threads:
            thread.start()
        return PipelineThreads(stop, invoke_stop, publish_stop, prepare, threads)

    def _frames_left(self) -> int | None:
        if self.max_frames is None:
            return None
        return max(0, self.max_frames - self.stats.counters.frames_inferred)

    def _stop_pipeline(self, pipeline: PipelineThreads) -> None:
        """Stop taking frames, then let invoke and publish drain what is already in flight."""
        pipeline.stop.set()
        by_name = {thread.name.removeprefix("edgepose-"): thread for thread in pipeline.threads}
        for name in ("capture", "prepare"):
            if name in by_name:
                by_name[name].join(JOIN_TIMEOUT_S)
        # In order: what the interpreter still holds is inferred, then everything inferred is published.
        pipeline.invoke_stop.set()
        by_name["invoke"].join(JOIN_TIMEOUT_S)
        pipeline.publish_stop.set()
        by_name["publish"].join(JOIN_TIMEOUT_S)
        for thread in pipeline.threads:
            if thread.is_alive():
                log.warning("thread %s did not stop within %.1fs", thread.name, JOIN_TIMEOUT_S)
        self._seq = self._publish_loop.seq

    def _reload(self) -> None:
        """SIGHUP: re-read and validate; apply what changed, or keep running on the old config."""
        self.notifier.reloading()
        if self._reload_config is None:
            log.warning("reload requested but no config file to re-read; ignoring")
            self.notifier.ready(self.status_line())
            return
        try:
            new = self._reload_config()
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload rejected, keeping the running config: %s", problem)
            self.notifier.ready(self.status_line())
            return
        old = self.config
        changed = [name for name in type(new).model_fields if getattr(new, name) != getattr(old, name)]
        try:
            if new.model != old.model:
                # Close first: a USB Coral can be held by one process (one interpreter) at a time.
                self.inference.backend.close()
                try:
                    self.inference = build_inference(new)
                except EdgeposeError:
                    self.inference = build_inference(old)
                    raise
            if new.camera != old.camera or (new.camera.source == "demo" and new.model.dir != old.model.dir):
                source = build_source(new)
                self.source.close()
                source.open()
                self.source = source
            if new.mqtt != old.mqtt or new.device_id != old.device_id:
                publisher = build_publisher(new)
                self.publisher.stop(timeout_s=2.0)
                self.publisher = publisher
                publisher.start()
        except EdgeposeError as exc:
            log.error("reload failed, keeping the running config: %s", exc)
            self.notifier.ready(self.status_line())
            return
        self.config = new
        logging.getLogger().setLevel(new.logging.level)
        log.info("configuration reloaded; changed: %s", ", ".join(changed) or "nothing")
        self._publish_health()
        self.notifier.ready(self.status_line())

    def _shutdown(self) -> int:
        self.run_state.state = "stopping"
        self.notifier.stopping()
        self._publish_health()
        self.publisher.stop(timeout_s=2.0)
        self.source.close()
        self.inference.backend.close()
        c = self.stats.counters
        log.info(
            "stopped: %d frames captured, %d inferred, %d published, %d publish failures",
            c.frames_captured,
            c.frames_inferred,
            c.frames_published,
            c.publish_failed,
        )
        self.notifier.close()
        if self._failure is not None:
            if isinstance(self._failure, EdgeposeError):
                raise self._failure
            return EXIT_SOFTWARE
        return EXIT_OK

    def _make_feed(self, source: FrameSource, stop: threading.Event) -> tuple[FrameFeed, CaptureLoop | None]:
        if source.delivery == "on_demand":
            return InlineFeed(source, self.stats), None
        slot: LatestFrameSlot | SequentialSlot
        slot = LatestFrameSlot(self.stats) if source.delivery == "live" else SequentialSlot(stop)
        capture = CaptureLoop(source, slot, self.stats, self.config.camera.reopen_backoff_max_s, self._camera_problem)
        return slot, capture

    def _thread(
        self,
        name: str,
        target: Callable[[threading.Event], None],
        stop: threading.Event,
        stop_daemon_when_done: bool = False,
    ) -> threading.Thread:
        def body() -> None:
            try:
                target(stop)
                if stop_daemon_when_done and not stop.is_set():
                    self.request_stop("pipeline finished")
            except BaseException as exc:  # a thread must never die silently
                self._failure = exc
                if isinstance(exc, EdgeposeError):
                    log.error("%s: %s", name, exc)
                else:
                    log.exception("%s thread crashed", name)
                self.request_stop(f"{name} failed")

        return threading.Thread(target=body, name=f"edgepose-{name}", daemon=True)

    def _first_inference(self) -> None:
        self.run_state.state = "running"
        if not self._ready_sent:
            self._ready_sent = True
            log.info("first pose inferred %.2fs after start", time.monotonic() - self.stats.started_monotonic_s)
            # READY only now: systemd should not consider us started before a frame went through the model.
            self.notifier.ready(self.status_line())
            self._wake.set()

    def _camera_problem(self, reason: str | None) -> None:
        self.run_state.camera_problem = reason

    def _supervise(self) -> None:
        """The main thread: health, status and watchdog until a stop or a reload is requested."""
        next_health_s = time.monotonic() + self.config.health.interval_s
        next_status_s = time.monotonic() + STATUS_PERIOD_S
        next_log_s = time.monotonic() + (self.config.logging.status_interval_s or float("inf"))
        while not (self.stop_event.is_set() or self.reload_event.is_set()):
            self._wake.wait(SUPERVISE_TICK_S)
            self._wake.clear()
            now = time.monotonic()
            self.run_state.backend_problem = self.inference.backend.degraded_reason
            if self._watchdog is not None and self._watchdog.due(now, self.stats.last_inference_monotonic_s):
                self.notifier.watchdog()
            if now >= next_health_s:
                self._publish_health()
                next_health_s = now + self.config.health.interval_s
            if now >= next_status_s:
                self.notifier.status(self.status_line())
                next_status_s = now + STATUS_PERIOD_S
            if now >= next_log_s:
                log.info("%s", self.status_line())
                next_log_s = now + (self.config.logging.status_interval_s or float("inf"))

    # -- reporting -----------------------------------------------------------------------------

    def status_line(self) -> str:
        """One human line for logs and systemd's STATUS=, e.g. `running cpu 9.8 fps mqtt=connected`."""
        state, reason = self.run_state.current()
        c = self.stats.counters
        fps = self._status_rates.rates(c)["inference"]
        latency = self.stats.capture_to_publish_ms.percentiles()
        mqtt = "connected" if self.publisher.stats.connected else "disconnected"
        p50 = f" latency p50 {latency['p50']:.1f}ms" if latency["p50"] is not None else ""
        line = f"{state} {self.inference.backend.kind} {fps:.1f} fps{p50} published {c.frames_published} mqtt={mqtt}"
        return f"{line} ({reason})" if reason else line

    def health_report(self) -> HealthReport:
        stats = self.stats
        c = stats.counters
        state, reason = self.run_state.current()
        inference = self.inference
        return HealthReport(
            device_id=self.config.device_id,
            timestamp_s=time.time(),
            uptime_s=time.monotonic() - stats.started_monotonic_s,
            version=__version__,
            state=state,
            state_reason=reason,
            runtime=inference.backend.runtime.name,
            runtime_version=inference.backend.runtime.version,
            backend=inference.backend.kind,
            backend_reason=inference.backend.degraded_reason or inference.backend_reason,
            edgetpu_temp_c=read_edgetpu_temp_c(),
            model=inference.stage.model_name,
            source=self.source.description,
            num_threads=inference.num_threads,
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
                "camera_frames_skipped": self.source.frames_skipped,
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
        self.publisher.publish_retained_state(self.publisher.topics.health, payload, self.config.mqtt.qos.health)
