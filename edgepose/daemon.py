"""Wires a Config into source, estimator, publisher and health; owns every thread and the lifecycle.

One stop path for SIGTERM/SIGINT, --max-frames, the end of a finite source and errors:
stop inference and capture, drain the publish queue, publish a last health and `offline`,
disconnect, close the source.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from edgepose import __version__
from edgepose.commands import Detection, RuntimeSettings
from edgepose.config import Config
from edgepose.control import Control
from edgepose.errors import EXIT_OK, EXIT_SOFTWARE, ConfigError, EdgeposeError
from edgepose.health import (
    ModelView,
    MqttView,
    PipelineStats,
    RateMeter,
    Readings,
    SourceView,
    assemble_health,
)
from edgepose.inference.edgetpu import read_edgetpu_temp_c
from edgepose.inference.stage import InferenceResult
from edgepose.mqtt.payloads import HealthReport, PayloadFormat, encode, health_payload
from edgepose.nativethread import set_native_name
from edgepose.parts import CONTROL, PARTS, Bundle, PartSpec, ReloadFailed, StoppedWhileBuilding, build_bundle, rebuild
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
    LiveSink,
    PrepareLoop,
    PublishLoop,
    SequentialSlot,
)
from edgepose.sources.base import FrameSource
from edgepose.system import SystemReader
from edgepose.systemd import Notifier, WatchdogGate

log = logging.getLogger(__name__)

INVOKED_QUEUE_DEPTH = 8
JOIN_TIMEOUT_S = 1.5
SUPERVISE_TICK_S = 0.1
STATUS_PERIOD_S = 2.0
FINAL_FLUSH_S = 1.0  # at most this long for queued messages before the final health
HEALTH_EXPIRY_MIN_S = 30.0


class DaemonState(StrEnum):
    """`state` in health; serialised as these strings."""

    STARTING = "starting"
    RUNNING = "running"
    DEGRADED = "degraded"
    PAUSED = "paused"  # detection paused by a command: no inference; status and health go on
    STOPPING = "stopping"


@dataclass
class RunState:
    """What health reports as `state`; written by the daemon and the capture thread."""

    state: DaemonState = DaemonState.STARTING
    camera_problem: str | None = None
    backend_problem: str | None = None
    reload_problem: str | None = None  # the last reload failed: the previous configuration runs
    paused: bool = False

    def current(self) -> tuple[DaemonState, str | None]:
        if self.state in (DaemonState.STARTING, DaemonState.STOPPING):
            return self.state, None
        if self.paused:
            return DaemonState.PAUSED, None
        problems = [p for p in (self.camera_problem, self.backend_problem, self.reload_problem) if p]
        return (DaemonState.DEGRADED, "; ".join(problems)) if problems else (DaemonState.RUNNING, None)


@dataclass
class PipelineThreads:
    """The threads of one pipeline run; a reload stops them, swaps components, starts new ones."""

    stop: threading.Event  # capture and prepare stop taking frames
    invoke_stop: threading.Event  # the interpreter finishes what was handed to it
    publish_stop: threading.Event  # publishing drains what was inferred
    prepare: PrepareLoop
    threads: list[threading.Thread]


class Daemon:
    """Owns the bundle of parts (see parts.py), the pipeline threads and the lifecycle (start, reload, stop)."""

    def __init__(
        self,
        config: Config,
        max_frames: int | None = None,
        reload_config: Callable[[], Config] | None = None,
        notifier: Notifier | None = None,
        parts: Sequence[PartSpec] = PARTS,
    ) -> None:
        self.config = config
        self.part_specs = tuple(parts)  # tests pass instrumented or stand-in parts here
        self.reloads = 0  # reload requests handled, applied or not
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
        self._stop_reason: str | None = None
        self._seq = 0
        self._ready_sent = False
        self._bundle: Bundle | None = None
        self._publish_loop: PublishLoop | None = None
        self.settings: RuntimeSettings = RuntimeSettings.from_config(config)  # changed by remote commands
        self._watchdog = WatchdogGate(self.notifier.watchdog_interval_s) if self.notifier.watchdog_interval_s else None

    @property
    def bundle(self) -> Bundle:
        """The running parts; swapped as a whole by a reload."""
        if self._bundle is None:
            raise RuntimeError("the daemon is not running")
        return self._bundle

    # -- requests from signal handlers and parts (must only set flags) ----------------------------

    def request_stop(self, reason: str) -> None:
        self._stop_reason = reason
        self.stop_event.set()
        self._wake.set()

    def request_reload(self) -> None:
        self.reload_event.set()
        self._wake.set()

    def apply_settings(self, settings: RuntimeSettings) -> None:
        """A remote command changed the runtime settings (called on paho's network thread)."""
        self.settings = settings
        if self._bundle is not None:
            self._bundle.inference.stage.set_live(settings.score_threshold, settings.smoothing)
        publish_loop = self._publish_loop
        if publish_loop is not None:
            publish_loop.set_publishing(settings.keypoints, settings.max_fps)
        paused = settings.detection is Detection.PAUSED
        if paused != self.run_state.paused:
            self.run_state.paused = paused
            self._wake.set()  # the supervisor stops or restarts the pipeline

    def _control(self) -> Control | None:
        bundle = self.bundle
        return bundle.part(CONTROL, Control) if CONTROL in bundle.names else None

    # -- lifecycle -----------------------------------------------------------------------------

    def run(self) -> int:
        """Build the bundle, run the pipeline until stopped (reloading on request), close the bundle.

        Whatever ends the run (a stop request, --max-frames, the end of a file, a failure while
        building or running), every part that was built is closed before this returns.
        """
        try:
            try:
                self._bundle = build_bundle(self.config, self, self.part_specs, self.stop_event)
            except StoppedWhileBuilding:
                log.info("stopping: %s during startup", self._stop_reason)
                return EXIT_OK
            self._log_setup()
            self._publish_health()
            while True:
                # Paused by a command: no pipeline threads (no capture, no inference); the
                # supervisor goes on with health, status, presence and the watchdog.
                paused = self.run_state.paused
                pipeline = None if paused else self._start_pipeline()
                try:
                    self._supervise(paused)
                finally:
                    if pipeline is not None:
                        self._stop_pipeline(pipeline)
                if self.stop_event.is_set():
                    if pipeline is not None and pipeline.prepare.finished_reason:
                        log.info("finished: %s", pipeline.prepare.finished_reason)
                    elif self._stop_reason:
                        log.info("stopping: %s", self._stop_reason)
                    break
                if self.reload_event.is_set():
                    self.reload_event.clear()
                    self._reload()
                    self.reloads += 1
            return self._shutdown()
        finally:
            if self._bundle is not None:
                self._bundle.close()
            self.notifier.close()

    def _log_setup(self) -> None:
        inference = self.bundle.inference
        log.info(
            "edgepose %s: source %s, model %s (%s, %s %s, %d threads), MQTT %s",
            __version__,
            self.bundle.source.description,
            inference.stage.model_name,
            inference.backend.kind,
            inference.backend.runtime.name,
            inference.backend.runtime.version,
            inference.num_threads,
            self.bundle.publisher.address,
        )

    def _start_pipeline(self) -> PipelineThreads:
        """capture -> prepare -> invoke -> finish+publish, one thread each (capture only for live/file)."""
        bundle = self.bundle
        config = bundle.config
        stop = threading.Event()
        invoke_stop = threading.Event()
        publish_stop = threading.Event()
        feed, capture = self._make_feed(bundle.source, stop)
        stage = bundle.inference.stage
        hand_off = HandOff()
        clock = InvokeClock()
        invoked: queue.Queue[Invoked | EndOfStream] = queue.Queue(maxsize=INVOKED_QUEUE_DEPTH)
        prepare = PrepareLoop(feed, stage, hand_off, clock, self.stats, self._frames_left())
        invoke = InvokeLoop(stage, hand_off, clock, invoked, self.stats, self._first_inference)
        publish = PublishLoop(
            invoked,
            stage,
            bundle.publisher,
            bundle.publisher.topics.keypoints,
            config.mqtt.qos.keypoints,
            config.device_id,
            self.stats,
            enabled=self.settings.keypoints,
            max_publish_fps=self.settings.max_fps,
            publish_empty=config.publish.include_empty,
            payload_format=PayloadFormat(config.publish.format),
            live=self._live_sink(bundle),
            expiry_s=config.publish.keypoints_expiry_s or None,
            observers=self._observers(),
        )
        stage.set_live(self.settings.score_threshold, self.settings.smoothing)
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

    @staticmethod
    def _live_sink(bundle: Bundle) -> LiveSink | None:
        """The live view's intake, told the threshold below which the drawing fades joints."""
        feed = bundle.live_feed
        if feed is None:
            return None
        return functools.partial(feed.offer, score_threshold=bundle.config.model.score_threshold)

    def _observers(self) -> tuple[Callable[[np.ndarray, InferenceResult], None], ...]:
        control = self._control()
        return (control.monitor.observe,) if control is not None else ()

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
        if self._publish_loop is not None:
            self._seq = self._publish_loop.seq

    def _reload(self) -> None:
        """SIGHUP: re-read and validate; swap in new parts for what changed, or keep the old ones whole."""
        self.notifier.reloading()
        if self._reload_config is None:
            log.warning("reload requested but no config file to re-read; ignoring")
            self.notifier.ready(self.status_line())
            return
        try:
            new = self._reload_config()
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload rejected, keeping the running configuration: %s", problem)
            self._reload_failed("; ".join(exc.problems))
            return
        old = self.bundle
        changed = [name for name in type(new).model_fields if getattr(new, name) != getattr(old.config, name)]
        try:
            bundle = rebuild(old, new, self)
        except ReloadFailed as exc:
            for problem in exc.problems:
                log.error("reload failed, keeping the running configuration: %s", problem)
            self._reload_failed(str(exc))
            return
        # The swap: one assignment. Then the replaced parts close; the reused ones now belong to `bundle`.
        self._bundle = bundle
        self.config = new
        try:
            old.close_replaced(bundle)
        except Exception:  # the new parts run; a part that fails to close is logged, not fatal
            log.exception("closing the parts the reload replaced")
        # The YAML file is the truth again: what commands changed ends with a reload.
        self.settings = RuntimeSettings.from_config(new)
        self.run_state.paused = False
        control = self._control()
        if control is not None and control.commands is not None:
            control.commands.reset(self.settings)
        self.run_state.reload_problem = None
        logging.getLogger().setLevel(new.logging.level)
        log.info("configuration reloaded; changed: %s", ", ".join(changed) or "nothing")
        self._publish_health()
        self.notifier.ready(self.status_line())

    def _reload_failed(self, why: str) -> None:
        self.run_state.reload_problem = f"reload failed, running the previous configuration: {why}"
        self._publish_health()
        self.notifier.ready(self.status_line())

    def _shutdown(self) -> int:
        self.run_state.state = DaemonState.STOPPING
        self.notifier.stopping()
        # frames_published counts deliveries paho reports on its own thread: let the last keypoints
        # (queued behind presence, events and state) go out first, so the final health counts them.
        publisher = self.bundle.publisher
        deadline_s = time.monotonic() + FINAL_FLUSH_S
        while publisher.stats.connected and publisher.queued() and time.monotonic() < deadline_s:
            time.sleep(0.01)
        self._publish_health()
        self.bundle.close()  # the publisher sends `offline` and disconnects, then source and model close
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
        return EXIT_OK

    def _make_feed(self, source: FrameSource, stop: threading.Event) -> tuple[FrameFeed, CaptureLoop | None]:
        if source.delivery == "on_demand":
            return InlineFeed(source, self.stats), None
        slot: LatestFrameSlot | SequentialSlot
        slot = LatestFrameSlot(self.stats) if source.delivery == "live" else SequentialSlot(stop)
        reopen_max_s = self.bundle.config.camera.reopen_backoff_max_s
        capture = CaptureLoop(source, slot, self.stats, reopen_max_s, self._camera_problem)
        return slot, capture

    def _thread(
        self,
        name: str,
        target: Callable[[threading.Event], None],
        stop: threading.Event,
        stop_daemon_when_done: bool = False,
    ) -> threading.Thread:
        def body() -> None:
            set_native_name(f"ep-{name}")
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
        self.run_state.state = DaemonState.RUNNING
        if not self._ready_sent:
            self._ready_sent = True
            log.info("first pose inferred %.2fs after start", time.monotonic() - self.stats.started_monotonic_s)
            # READY only now: systemd should not consider us started before a frame went through the model.
            self.notifier.ready(self.status_line())
            self._wake.set()

    def _camera_problem(self, reason: str | None) -> None:
        self.run_state.camera_problem = reason

    def _supervise(self, paused: bool = False) -> None:
        """The main thread: health, status, presence and watchdog until a stop, a reload, or a
        pause or resume is requested."""
        next_health_s = time.monotonic() + self.config.health.interval_s
        next_status_s = time.monotonic() + STATUS_PERIOD_S
        next_log_s = time.monotonic() + (self.config.logging.status_interval_s or float("inf"))
        seen_connects = self.bundle.publisher.stats.connects
        control = self._control()
        while not (self.stop_event.is_set() or self.reload_event.is_set() or self.run_state.paused != paused):
            self._wake.wait(SUPERVISE_TICK_S)
            self._wake.clear()
            now = time.monotonic()
            publisher = self.bundle.publisher
            publisher.tick()
            if publisher.stats.connects != seen_connects and publisher.stats.connected:
                # (Re)connected: a fresh health at once, never the one from before the outage.
                seen_connects = publisher.stats.connects
                self._publish_health()
                next_health_s = now + self.config.health.interval_s
            self.run_state.backend_problem = self.bundle.inference.backend.degraded_reason
            if control is not None:
                control.tick()  # retained messages after a (re)connect; presence times out without frames
            # Paused on purpose is progress as far as systemd's watchdog is concerned.
            progress_s = now if paused else self.stats.last_inference_monotonic_s
            if self._watchdog is not None and self._watchdog.due(now, progress_s):
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
        mqtt = "connected" if self.bundle.publisher.stats.connected else "disconnected"
        p50 = f" latency p50 {latency['p50']:.1f}ms" if latency["p50"] is not None else ""
        backend = self.bundle.inference.backend.kind
        line = f"{state} {backend} {fps:.1f} fps{p50} published {c.frames_published} mqtt={mqtt}"
        return f"{line} ({reason})" if reason else line

    def health_report(self) -> HealthReport:
        """Health from read-only views of the running parts; assembled in health.py."""
        state, reason = self.run_state.current()
        bundle = self.bundle
        inference, source, publisher = bundle.inference, bundle.source, bundle.publisher
        backend = inference.backend
        return assemble_health(
            device_id=bundle.config.device_id,
            version=__version__,
            state=state.value,
            state_reason=reason,
            stats=self.stats,
            fps=self._rates.rates(self.stats.counters),
            model=ModelView(
                runtime=backend.runtime.name,
                runtime_version=backend.runtime.version,
                backend=backend.kind,
                backend_reason=backend.degraded_reason or inference.backend_reason,
                model=inference.stage.model_name,
                num_threads=inference.num_threads,
            ),
            source=SourceView(source.description, source.frames_skipped),
            mqtt=MqttView(
                connected=publisher.stats.connected,
                connects=publisher.stats.connects,
                queued=publisher.queued(),
                last_error=publisher.stats.last_error,
                protocol=publisher.stats.protocol,
                failed_attempts=publisher.stats.failed_attempts,
                last_error_at_s=publisher.stats.last_error_at_s,
                session_takeovers=publisher.stats.session_takeovers,
            ),
            readings=Readings(self._system.read(), read_edgetpu_temp_c()),
            pose_score=control.monitor.pose_score() if (control := self._control()) is not None else None,
        )

    def _publish_health(self) -> None:
        publisher = self.bundle.publisher
        payload = encode(health_payload(self.health_report()))
        config = self.bundle.config
        # Retained, and (MQTT 5) expiring after three missed periods: a dead daemon's health does not linger.
        expiry_s = max(3 * config.health.interval_s, HEALTH_EXPIRY_MIN_S)
        publisher.publish_retained_state(publisher.topics.health, payload, config.mqtt.qos.health, expiry_s=expiry_s)
