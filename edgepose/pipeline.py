"""The pipeline: source -> (feed) -> estimate -> (queue) -> publish, one stage per thread.

Capture, inference and publishing overlap so that the interpreter's invoke loop is the only
limit. The hand-offs are where latency is won or lost:
  * a live camera feeds a one-slot "latest frame wins" hand-off: a frame superseded before
    inference is dropped (and counted), so inference never works on a stale frame;
  * a file feeds a one-slot blocking hand-off: every frame is used, decoding overlaps invoke;
  * a synthetic source is read inline at the moment inference wants a frame.
The stages do not start threads themselves; the daemon owns every thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edgepose.errors import EdgeposeError, SourceError
from edgepose.health import PipelineStats
from edgepose.inference.stage import InferenceResult, PoseStage, Prepared, StageTimings
from edgepose.mqtt.payloads import KeypointsMessage, PayloadFormat, keypoints_bytes
from edgepose.sources.base import Frame, FrameSource

log = logging.getLogger(__name__)


class EndOfStream:
    """Marker handed through a feed when a finite source has no more frames."""


END_OF_STREAM = EndOfStream()
FeedItem = Frame | EndOfStream | None  # None: nothing arrived within the timeout


class FrameFeed(Protocol):
    def get(self, timeout_s: float) -> FeedItem: ...


class LatestFrameSlot:
    """One slot; a new frame replaces an untaken one. The replaced frame counts as dropped-stale."""

    def __init__(self, stats: PipelineStats) -> None:
        self._stats = stats
        self._condition = threading.Condition()
        self._item: Frame | EndOfStream | None = None

    def put(self, item: Frame | EndOfStream) -> None:
        with self._condition:
            if isinstance(self._item, Frame):
                self._stats.counters.frames_dropped_stale += 1
            self._item = item
            self._condition.notify()

    def get(self, timeout_s: float) -> FeedItem:
        with self._condition:
            if self._item is None:
                self._condition.wait(timeout_s)
            item, self._item = self._item, None
            return item


class SequentialSlot:
    """One slot; the producer waits for the consumer, so no frame is dropped."""

    def __init__(self, stop: threading.Event) -> None:
        self._queue: queue.Queue[Frame | EndOfStream] = queue.Queue(maxsize=1)
        self._stop = stop

    def put(self, item: Frame | EndOfStream) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(self, timeout_s: float) -> FeedItem:
        try:
            return self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None


class InlineFeed:
    """Reads the source in the consumer's thread: for sources whose read costs nothing."""

    def __init__(self, source: FrameSource, stats: PipelineStats) -> None:
        self._source = source
        self._stats = stats

    def get(self, timeout_s: float) -> FeedItem:
        frame = self._source.read()
        if frame is None:
            return END_OF_STREAM
        self._stats.counters.frames_captured += 1
        return frame


class CaptureLoop:
    """Reads a live or sequential source on its own thread; reopens it with back-off on failure."""

    def __init__(
        self,
        source: FrameSource,
        slot: LatestFrameSlot | SequentialSlot,
        stats: PipelineStats,
        reopen_backoff_max_s: float,
        on_state: Callable[[str | None], None],
    ) -> None:
        self.source = source
        self.slot = slot
        self.stats = stats
        self.reopen_backoff_max_s = reopen_backoff_max_s
        self._on_state = on_state  # called with a reason while the source is down, None when back

    def run(self, stop: threading.Event) -> None:
        backoff_s = 0.5
        while not stop.is_set():
            try:
                frame = self.source.read()
            except SourceError as exc:
                self.stats.counters.capture_failed += 1
                self._on_state(f"camera: {exc}")
                log.warning("%s; reopening in %.1fs", exc, backoff_s)
                if stop.wait(backoff_s):
                    break
                backoff_s = min(backoff_s * 2, self.reopen_backoff_max_s)
                self._reopen()
                continue
            if frame is None:
                self.slot.put(END_OF_STREAM)
                return
            if backoff_s != 0.5:
                backoff_s = 0.5
                self._on_state(None)
                log.info("%s: frames flowing again", self.source.description)
            self.stats.counters.frames_captured += 1
            self.slot.put(frame)

    def _reopen(self) -> None:
        try:
            self.source.close()
        except EdgeposeError as exc:
            log.debug("closing %s before reopen: %s", self.source.description, exc)
        try:
            self.source.open()
            self.stats.counters.source_reopens += 1
        except EdgeposeError as exc:
            log.warning("reopening %s failed: %s", self.source.description, exc)


@dataclass(frozen=True, eq=False)
class Invoked:
    """A prepared frame with the interpreter's raw outputs, on its way to finish + publish."""

    prepared: Prepared
    outputs: list[np.ndarray]
    invoke_ms: float


class InvokeClock:
    """When the current invoke started and how long invokes take, so the next frame is prepared
    just before the interpreter is free: fresh (low latency) yet ready (no idle interpreter)."""

    def __init__(self) -> None:
        self.started_s: float | None = None
        self.invoke_ema_s = 0.0
        self.prepare_ema_s = 0.0

    def invoke_started(self, now_s: float) -> None:
        self.started_s = now_s

    def invoke_done(self, duration_s: float) -> None:
        self.started_s = None
        self.invoke_ema_s = duration_s if not self.invoke_ema_s else 0.9 * self.invoke_ema_s + 0.1 * duration_s

    def prepared(self, duration_s: float) -> None:
        self.prepare_ema_s = duration_s if not self.prepare_ema_s else 0.9 * self.prepare_ema_s + 0.1 * duration_s

    def prepare_due_s(self) -> float | None:
        """perf_counter time to start preparing the next frame, or None for now."""
        started = self.started_s
        if started is None or not self.invoke_ema_s:
            return None
        return started + self.invoke_ema_s - self.prepare_ema_s - PREPARE_MARGIN_S


# Slack for the thread wake-up between "prepared" and "invoke": too small and the interpreter idles.
PREPARE_MARGIN_S = 0.0007


class HandOff:
    """One prepared input waiting for the interpreter; the producer waits until it is taken."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._item: Prepared | EndOfStream | None = None

    def put(self, item: Prepared | EndOfStream, stop: threading.Event) -> bool:
        with self._condition:
            while self._item is not None:
                if stop.is_set():
                    return False
                self._condition.wait(0.1)
            self._item = item
            self._condition.notify_all()
            return True

    def wait_taken(self, stop: threading.Event) -> None:
        with self._condition:
            while self._item is not None and not stop.is_set():
                self._condition.wait(0.1)

    def take(self, timeout_s: float) -> Prepared | EndOfStream | None:
        with self._condition:
            if self._item is None:
                self._condition.wait(timeout_s)
            item, self._item = self._item, None
            self._condition.notify_all()
            return item


class PrepareLoop:
    """Takes the freshest frame just in time and writes it into a free input tensor."""

    def __init__(
        self,
        feed: FrameFeed,
        stage: PoseStage,
        hand_off: HandOff,
        clock: InvokeClock,
        stats: PipelineStats,
        max_frames: int | None,
    ) -> None:
        self.feed = feed
        self.stage = stage
        self.hand_off = hand_off
        self.clock = clock
        self.stats = stats
        self.max_frames = max_frames
        self.prepared_count = 0
        self.finished_reason: str | None = None

    def run(self, stop: threading.Event) -> None:
        # Two tensors: one is being copied into the interpreter while the other is filled.
        tensors = [self.stage.new_input(), self.stage.new_input()]
        while not stop.is_set():
            if self.max_frames is not None and self.prepared_count >= self.max_frames:
                self.finished_reason = f"--max-frames {self.max_frames} reached"
                self.hand_off.put(END_OF_STREAM, stop)
                return
            self.hand_off.wait_taken(stop)
            due_s = self.clock.prepare_due_s()
            if due_s is not None:
                delay_s = due_s - time.perf_counter()
                if 0 < delay_s < 1.0:
                    time.sleep(delay_s)
            wait_start = time.perf_counter()
            item = self.feed.get(timeout_s=0.2)
            if item is None:
                continue
            if isinstance(item, EndOfStream):
                self.finished_reason = "end of source"
                self.hand_off.put(END_OF_STREAM, stop)
                return
            begun = time.perf_counter()
            self.stats.stages["capture_wait"].add((begun - wait_start) * 1e3)
            self.stats.frame_age_at_inference_ms.add((time.monotonic() - item.monotonic_s) * 1e3)
            tensor = tensors[self.prepared_count % 2]
            try:
                prepared = self.stage.prepare(item, tensor)
            except EdgeposeError as exc:
                self.stats.counters.prepare_failed += 1
                log.error("preprocessing failed: %s", exc)
                continue
            tensors[self.prepared_count % 2] = prepared.tensor
            self.clock.prepared(time.perf_counter() - begun)
            if not self.hand_off.put(prepared, stop):
                return
            self.prepared_count += 1


class InvokeLoop:
    """The only thread that touches the interpreter: invoke back to back, hand outputs on."""

    def __init__(
        self,
        stage: PoseStage,
        hand_off: HandOff,
        clock: InvokeClock,
        invoked: queue.Queue[Invoked | EndOfStream],
        stats: PipelineStats,
        on_first_inference: Callable[[], None],
    ) -> None:
        self.stage = stage
        self.hand_off = hand_off
        self.clock = clock
        self.invoked = invoked
        self.stats = stats
        self._on_first_inference = on_first_inference

    def run(self, stop: threading.Event) -> None:
        """Runs until the preparer says end of stream, or `stop` is set and nothing is waiting."""
        counters = self.stats.counters
        while True:
            item = self.hand_off.take(timeout_s=0.1)
            if item is None:
                if stop.is_set():
                    return
                continue
            if isinstance(item, EndOfStream):
                self.invoked.put(item)
                return
            started = time.perf_counter()
            self.clock.invoke_started(started)
            try:
                outputs = self.stage.invoke(item)
            except EdgeposeError as exc:
                self.clock.invoke_done(time.perf_counter() - started)
                counters.invoke_failed += 1
                log.error("inference failed: %s", exc)
                continue
            duration_s = time.perf_counter() - started
            self.clock.invoke_done(duration_s)
            counters.frames_inferred += 1
            self.stats.last_inference_monotonic_s = time.monotonic()
            self.invoked.put(Invoked(item, outputs, duration_s * 1e3))
            if counters.frames_inferred == 1:
                self._on_first_inference()


def record_timings(stats: PipelineStats, timings: StageTimings) -> None:
    """The stage measures, the pipeline records: one writer (the publish thread) for these windows."""
    stats.stages["preprocess"].add(timings.preprocess_ms)
    stats.stages["invoke"].add(timings.invoke_ms)
    stats.stages["decode"].add(timings.decode_ms)
    stats.inference_ms.add(timings.invoke_ms)


class Publisher(Protocol):
    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool = False,
        expiry_s: float | None = None,
        on_delivery: Callable[[bool], None] | None = None,
    ) -> bool: ...


# Takes every finished frame with its result (the web live view's LiveFeed.offer); must never block.
LiveSink = Callable[[np.ndarray, InferenceResult], None]


def keypoints_message(result: InferenceResult, device_id: str, seq: int) -> KeypointsMessage:
    """The keypoints message for a finished frame, its latency measured up to now."""
    return KeypointsMessage(
        device_id=device_id,
        seq=seq,
        timestamp_s=result.frame_timestamp_s,
        frame_width_px=result.frame_width_px,
        frame_height_px=result.frame_height_px,
        model=result.model,
        backend=result.backend,
        inference_ms=result.inference_ms,
        capture_to_publish_ms=(time.monotonic() - result.frame_monotonic_s) * 1e3,
        poses=result.poses,
        crop=result.crop,
        smoothed=result.smoothed,
    )


class PublishLoop:
    """Finishes each invoked frame (decode, crop, smoothing), offers it to the live view, publishes it.

    `seq` counts every keypoints message attempted, so gaps show loss to a subscriber.
    `frames_published` counts what the broker acknowledged (QoS >= 1) or what was written to the
    socket (QoS 0), `publish_failed` what was really dropped: the publisher reports each message's
    fate later, from its network thread, so these two are counted under a lock.
    """

    def __init__(
        self,
        invoked: queue.Queue[Invoked | EndOfStream],
        stage: PoseStage,
        publisher: Publisher,
        topic: str,
        qos: int,
        device_id: str,
        stats: PipelineStats,
        enabled: bool = True,
        max_publish_fps: float = 0.0,
        publish_empty: bool = True,
        payload_format: PayloadFormat = PayloadFormat.JSON,
        live: LiveSink | None = None,
        expiry_s: float | None = None,
        observers: Sequence[Callable[[np.ndarray, InferenceResult], None]] = (),
    ) -> None:
        self.invoked = invoked
        self.live = live
        self.stage = stage
        self.publisher = publisher
        self.topic = topic
        self.qos = qos
        self.device_id = device_id
        self.stats = stats
        self.enabled = enabled
        self.min_publish_interval_s = 1.0 / max_publish_fps if max_publish_fps > 0 else 0.0
        self.publish_empty = publish_empty
        self.payload_format = payload_format
        self.expiry_s = expiry_s  # MQTT 5 message expiry: a stale frame is worth nothing to a returning consumer
        # Told every finished frame (presence, the live view), whether or not keypoints are published.
        self.observers = tuple(observers)
        self.seq = 0
        self._next_publish_s = 0.0
        self._delivery_lock = threading.Lock()

    def run(self, stop: threading.Event) -> None:
        """Runs until end of stream, or `stop` is set and the queue is drained: nothing inferred is lost."""
        while True:
            try:
                item = self.invoked.get(timeout=0.1)
            except queue.Empty:
                if stop.is_set():
                    return
                continue
            if isinstance(item, EndOfStream):
                return
            try:
                result = self.stage.finish(item.prepared, item.outputs, item.invoke_ms)
            except EdgeposeError as exc:
                self.stats.counters.decode_failed += 1
                log.error("decoding failed: %s", exc)
                continue
            record_timings(self.stats, result.timings)
            if self.live is not None:
                self.live(item.prepared.frame.image, result)
            for observe in self.observers:
                observe(item.prepared.frame.image, result)
            self.publish_one(result)

    def set_publishing(self, enabled: bool, max_publish_fps: float) -> None:
        """A remote command changed publish.keypoints / publish.max_fps (two plain assignments)."""
        self.min_publish_interval_s = 1.0 / max_publish_fps if max_publish_fps > 0 else 0.0
        self.enabled = enabled

    def publish_one(self, result: InferenceResult) -> None:
        counters = self.stats.counters
        if not self.enabled or (not result.poses and not self.publish_empty):
            return
        if self.min_publish_interval_s:
            if result.frame_monotonic_s < self._next_publish_s:
                counters.frames_dropped_throttle += 1
                return
            self._next_publish_s = result.frame_monotonic_s + self.min_publish_interval_s
        start = time.perf_counter()
        message = keypoints_message(result, self.device_id, self.seq)
        self.seq += 1
        payload = keypoints_bytes(message, self.payload_format)
        if self.publisher.publish(self.topic, payload, self.qos, expiry_s=self.expiry_s, on_delivery=self._delivered):
            if self.stats.first_publish_monotonic_s is None:
                self.stats.first_publish_monotonic_s = time.monotonic()
            self.stats.capture_to_publish_ms.add((time.monotonic() - result.frame_monotonic_s) * 1e3)
        self.stats.stages["publish"].add((time.perf_counter() - start) * 1e3)

    def _delivered(self, delivered: bool) -> None:
        counters = self.stats.counters
        with self._delivery_lock:
            if delivered:
                counters.frames_published += 1
            else:
                counters.publish_failed += 1
