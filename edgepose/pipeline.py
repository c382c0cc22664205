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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from edgepose.errors import EdgeposeError, SourceError
from edgepose.health import PipelineStats
from edgepose.mqtt.payloads import KeypointsMessage, encode, keypoints_payload
from edgepose.pose import CropBox, Pose
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
                self.stats.counters.frames_failed += 1
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


@dataclass(frozen=True)
class InferenceResult:
    frame_timestamp_s: float
    frame_monotonic_s: float
    frame_width_px: int
    frame_height_px: int
    poses: tuple[Pose, ...]
    crop: CropBox | None
    smoothed: bool
    inference_ms: float
    model: str
    backend: str


class PoseStage(Protocol):
    """What the inference loop calls for each frame (the estimator plus crop/smoothing state)."""

    @property
    def model_name(self) -> str: ...

    @property
    def backend_kind(self) -> str: ...

    def process(self, frame: Frame, stats: PipelineStats) -> InferenceResult: ...


class InferenceLoop:
    def __init__(
        self,
        feed: FrameFeed,
        pose_stage: PoseStage,
        results: queue.Queue[InferenceResult],
        stats: PipelineStats,
        max_frames: int | None,
        max_publish_fps: float,
        on_first_inference: Callable[[], None],
        publish_empty: bool = True,
    ) -> None:
        self.feed = feed
        self.pose_stage = pose_stage
        self.results = results
        self.stats = stats
        self.max_frames = max_frames
        self.min_publish_interval_s = 1.0 / max_publish_fps if max_publish_fps > 0 else 0.0
        self._on_first_inference = on_first_inference
        self.publish_empty = publish_empty
        self.finished_reason: str | None = None

    def run(self, stop: threading.Event) -> None:
        counters = self.stats.counters
        next_publish_s = 0.0
        while not stop.is_set():
            wait_start = time.perf_counter()
            item = self.feed.get(timeout_s=0.2)
            if item is None:
                continue
            if isinstance(item, EndOfStream):
                self.finished_reason = "end of source"
                return
            self.stats.stages["capture_wait"].add((time.perf_counter() - wait_start) * 1e3)
            self.stats.frame_age_at_inference_ms.add((time.monotonic() - item.monotonic_s) * 1e3)
            try:
                result = self.pose_stage.process(item, self.stats)
            except EdgeposeError as exc:
                counters.frames_failed += 1
                log.error("inference failed: %s", exc)
                continue
            counters.frames_inferred += 1
            self.stats.last_inference_monotonic_s = time.monotonic()
            if counters.frames_inferred == 1:
                self._on_first_inference()
            if not result.poses and not self.publish_empty:
                pass
            elif self.min_publish_interval_s and item.monotonic_s < next_publish_s:
                counters.frames_dropped_throttle += 1
            else:
                next_publish_s = item.monotonic_s + self.min_publish_interval_s
                try:
                    self.results.put_nowait(result)
                except queue.Full:
                    counters.publish_failed += 1
            if self.max_frames is not None and counters.frames_inferred >= self.max_frames:
                self.finished_reason = f"--max-frames {self.max_frames} reached"
                return


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> bool: ...


class PublishLoop:
    """Turns results into keypoints messages; `seq` counts every message attempted, so gaps show loss."""

    def __init__(
        self,
        results: queue.Queue[InferenceResult],
        publisher: Publisher,
        topic: str,
        qos: int,
        device_id: str,
        stats: PipelineStats,
        enabled: bool = True,
    ) -> None:
        self.results = results
        self.publisher = publisher
        self.topic = topic
        self.qos = qos
        self.device_id = device_id
        self.stats = stats
        self.enabled = enabled
        self.seq = 0

    def run(self, stop: threading.Event) -> None:
        """Runs until `stop` is set and the queue is drained, so nothing inferred is left behind."""
        while True:
            try:
                result = self.results.get(timeout=0.1)
            except queue.Empty:
                if stop.is_set():
                    return
                continue
            self.publish_one(result)

    def publish_one(self, result: InferenceResult) -> None:
        start = time.perf_counter()
        counters = self.stats.counters
        if not self.enabled:
            return
        capture_to_publish_ms = (time.monotonic() - result.frame_monotonic_s) * 1e3
        message = KeypointsMessage(
            device_id=self.device_id,
            seq=self.seq,
            timestamp_s=result.frame_timestamp_s,
            frame_width_px=result.frame_width_px,
            frame_height_px=result.frame_height_px,
            model=result.model,
            backend=result.backend,
            inference_ms=result.inference_ms,
            capture_to_publish_ms=capture_to_publish_ms,
            poses=result.poses,
            crop=result.crop,
            smoothed=result.smoothed,
        )
        self.seq += 1
        if self.publisher.publish(self.topic, encode(keypoints_payload(message)), self.qos):
            counters.frames_published += 1
            if self.stats.first_publish_monotonic_s is None:
                self.stats.first_publish_monotonic_s = time.monotonic()
            self.stats.capture_to_publish_ms.add(capture_to_publish_ms)
        else:
            counters.publish_failed += 1
        self.stats.stages["publish"].add((time.perf_counter() - start) * 1e3)
