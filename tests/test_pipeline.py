"""The hand-offs and loops of the pipeline, with the real model and in-memory publishing."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgepose.config import Config
from edgepose.errors import BackendError, ModelError, SourceError
from edgepose.health import PipelineStats
from edgepose.inference.runtime import load_runtime, open_cpu_backend
from edgepose.inference.stage import InferenceResult, PoseStage, Prepared, StageTimings, build_stage
from edgepose.pipeline import (
    END_OF_STREAM,
    CaptureLoop,
    EndOfStream,
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
from edgepose.pose import CropBox
from edgepose.sources.base import Frame
from edgepose.sources.synthetic import SyntheticSource


def _frame(index: int) -> Frame:
    return Frame(np.zeros((48, 64, 3), np.uint8), time.time(), time.monotonic(), index)


class MemoryPublisher:
    """Implements the pipeline's Publisher protocol in memory; `accept` False acts like a lost broker."""

    def __init__(self, refuse_calls: frozenset[int] = frozenset()) -> None:
        self.messages: list[tuple[str, bytes, int, bool]] = []
        self.expiries: list[float | None] = []
        self.refuse_calls = refuse_calls
        self.calls = 0

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool = False,
        expiry_s: float | None = None,
        on_delivery: Callable[[bool], None] | None = None,
    ) -> bool:
        accept = self.calls not in self.refuse_calls
        self.calls += 1
        self.expiries.append(expiry_s)
        if accept:
            self.messages.append((topic, payload, qos, retain))
        if on_delivery is not None:
            on_delivery(accept)  # in memory: delivered at once, or dropped at once
        return accept


def test_latest_frame_slot_keeps_the_freshest_and_counts_the_rest() -> None:
    stats = PipelineStats()
    slot = LatestFrameSlot(stats)
    for index in range(5):
        slot.put(_frame(index))
    item = slot.get(0.1)
    assert isinstance(item, Frame) and item.index == 4
    assert stats.counters.frames_dropped_stale == 4
    assert slot.get(0.01) is None


def test_sequential_slot_never_drops() -> None:
    stop = threading.Event()
    slot = SequentialSlot(stop)
    received: list[int] = []

    def consume() -> None:
        while True:
            item = slot.get(1.0)
            if isinstance(item, EndOfStream):
                return
            if isinstance(item, Frame):
                received.append(item.index)
                time.sleep(0.002)  # a consumer slower than the producer

    consumer = threading.Thread(target=consume)
    consumer.start()
    for index in range(50):
        slot.put(_frame(index))
    slot.put(END_OF_STREAM)
    consumer.join(5)
    assert received == list(range(50))


def test_hand_off_blocks_the_producer_until_taken() -> None:
    stop = threading.Event()
    hand_off = HandOff()
    prepared = object()
    assert hand_off.put(prepared, stop)  # type: ignore[arg-type]
    stop_soon = threading.Timer(0.2, stop.set)
    stop_soon.start()
    started = time.monotonic()
    assert hand_off.put(prepared, stop) is False  # type: ignore[arg-type]
    assert time.monotonic() - started >= 0.15
    assert hand_off.take(0.1) is prepared


def test_invoke_clock_schedules_preparation_just_before_the_interpreter_is_free() -> None:
    clock = InvokeClock()
    assert clock.prepare_due_s() is None
    clock.invoke_started(100.0)
    clock.invoke_done(0.010)
    clock.prepared(0.001)
    clock.invoke_started(200.0)
    due = clock.prepare_due_s()
    assert due is not None and 200.0 + 0.008 < due < 200.0 + 0.009


@pytest.fixture(scope="module")
def stage(lightning_path: Path) -> PoseStage:
    backend = open_cpu_backend(lightning_path, load_runtime("auto"), 2)
    return build_stage(backend, "movenet_lightning_int8", Config().model, "video")


def invoked_queue(stage: PoseStage, frames: Iterable[Frame]) -> queue.Queue[Invoked | EndOfStream]:
    """What the invoke loop hands the publish loop for `frames` (the real stage's outputs), then the end."""
    invoked: queue.Queue[Invoked | EndOfStream] = queue.Queue()
    for frame in frames:
        prepared = stage.prepare(frame, stage.new_input())
        invoked.put(Invoked(prepared, stage.invoke(prepared), 1.0))
    invoked.put(END_OF_STREAM)
    return invoked


def synthetic_frames(count: int) -> list[Frame]:
    source = SyntheticSource(64, 48, fps=None)
    source.open()
    frames = []
    for _ in range(count):
        frame = source.read()
        assert frame is not None
        frames.append(frame)
    return frames


class TimedStage:
    """The real stage, noting when each frame finished preparing and when its invoke started and ended."""

    def __init__(self, stage: PoseStage) -> None:
        self._stage = stage
        self.prepared_s: dict[int, float] = {}
        self.invoke_s: dict[int, tuple[float, float]] = {}

    def __getattr__(self, name: str) -> object:
        return getattr(self._stage, name)

    def prepare(self, frame: Frame, tensor: np.ndarray) -> object:
        prepared = self._stage.prepare(frame, tensor)
        self.prepared_s[frame.index] = time.perf_counter()
        return prepared

    def invoke(self, prepared: Any) -> list[np.ndarray]:
        started = time.perf_counter()
        outputs = self._stage.invoke(prepared)
        self.invoke_s[prepared.frame.index] = (started, time.perf_counter())
        return outputs


def test_threads_together_publish_every_frame_in_order(stage: PoseStage) -> None:
    """prepare -> invoke -> finish+publish on three threads: exactly N messages, seq 0..N-1."""
    stage = TimedStage(stage)  # type: ignore[assignment]
    stats = PipelineStats()
    source = SyntheticSource(640, 480, fps=None)
    source.open()
    hand_off, clock = HandOff(), InvokeClock()
    invoked: queue.Queue[Invoked | EndOfStream] = queue.Queue(maxsize=8)
    publisher = MemoryPublisher()
    prepare = PrepareLoop(InlineFeed(source, stats), stage, hand_off, clock, stats, max_frames=40)
    first = threading.Event()
    invoke = InvokeLoop(stage, hand_off, clock, invoked, stats, first.set)
    publish = PublishLoop(invoked, stage, publisher, "t/keypoints", 0, "dev", stats)
    stops = [threading.Event() for _ in range(3)]
    threads = [
        threading.Thread(target=loop.run, args=(stop,))
        for loop, stop in zip((prepare, invoke, publish), stops, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert first.is_set()
    assert prepare.finished_reason == "--max-frames 40 reached"
    assert stats.counters.frames_inferred == 40
    payloads = [json.loads(payload) for _, payload, _, _ in publisher.messages]
    assert [p["seq"] for p in payloads] == list(range(40))
    assert all(p["smoothed"] for p in payloads)
    # Frames are prepared just in time: a prepared frame waits for the interpreter a fraction of an invoke.
    # Prepared as soon as the previous one was taken instead, it would wait nearly a whole invoke.
    timed: TimedStage = stage  # type: ignore[assignment]
    waits_s = [timed.invoke_s[i][0] - timed.prepared_s[i] for i in range(5, 40)]
    invokes_s = [end - start for start, end in (timed.invoke_s[i] for i in range(5, 40))]
    assert float(np.median(waits_s)) < 0.5 * float(np.median(invokes_s)), (waits_s, invokes_s)


def test_publish_loop_counts_refused_messages_and_gaps_show_in_seq(stage: PoseStage) -> None:
    stats = PipelineStats()
    publisher = MemoryPublisher(refuse_calls=frozenset({2, 3}))
    invoked = invoked_queue(stage, synthetic_frames(6))
    publish = PublishLoop(invoked, stage, publisher, "t/keypoints", 0, "dev", stats)
    publish.run(threading.Event())
    seqs = [json.loads(payload)["seq"] for _, payload, _, _ in publisher.messages]
    assert seqs == [0, 1, 4, 5]
    assert stats.counters.publish_failed == 2 and stats.counters.frames_published == 4


def test_max_fps_throttles_and_counts(stage: PoseStage) -> None:
    stats = PipelineStats()
    publisher = MemoryPublisher()
    base = time.monotonic()
    # 10 frames 20 ms apart = 0.2 s: two fit at 10 fps
    frames = [Frame(np.zeros((48, 64, 3), np.uint8), time.time(), base + index * 0.02, index) for index in range(10)]
    publish = PublishLoop(invoked_queue(stage, frames), stage, publisher, "t", 0, "dev", stats, max_publish_fps=10)
    publish.run(threading.Event())
    assert len(publisher.messages) == 2
    assert stats.counters.frames_dropped_throttle == 8


class FlakySource:
    """A finite sequential source whose read fails (SourceError) at the given read numbers."""

    description = "flaky"
    delivery = "sequential"
    frames_skipped = 0

    def __init__(self, frames: int, failing_reads: frozenset[int]) -> None:
        self.frames = frames
        self.failing_reads = failing_reads
        self.reads = 0
        self.index = 0

    def open(self) -> None:
        pass

    def read(self) -> Frame | None:
        self.reads += 1
        if self.reads in self.failing_reads:
            raise SourceError("injected: camera read failed")
        if self.index >= self.frames:
            return None
        self.index += 1
        return _frame(self.index - 1)

    def close(self) -> None:
        pass


class FlakyStage:
    """A PoseStage whose prepare, invoke and finish each fail for one residue of the frame index mod 4."""

    model_name = "flaky"
    backend_kind = "cpu"

    def new_input(self) -> np.ndarray:
        return np.zeros((1, 4, 4, 3), np.uint8)

    def prepare(self, frame: Frame, tensor: np.ndarray) -> Prepared:
        if frame.index % 4 == 1:
            raise ModelError("injected: preprocessing failed")
        return Prepared(frame, CropBox(0.0, 0.0, 1.0, 1.0), tensor, 0.1)

    def invoke(self, prepared: Prepared) -> list[np.ndarray]:
        if prepared.frame.index % 4 == 2:
            raise BackendError("injected: invoke failed")
        return [np.zeros((1, 1, 17, 3), np.float32)]

    def finish(self, prepared: Prepared, outputs: list[np.ndarray], invoke_ms: float) -> InferenceResult:
        frame = prepared.frame
        if frame.index % 4 == 3:
            raise ModelError("injected: decoding failed")
        return InferenceResult(
            frame.timestamp_s,
            frame.monotonic_s,
            frame.width_px,
            frame.height_px,
            (),
            prepared.box,
            False,
            StageTimings(prepared.preprocess_ms, invoke_ms, 0.1),
            self.model_name,
            self.backend_kind,
        )

    def process(self, frame: Frame) -> InferenceResult:
        prepared = self.prepare(frame, self.new_input())
        return self.finish(prepared, self.invoke(prepared), 0.0)


def test_failures_in_all_four_loops_at_once_are_each_counted_once() -> None:
    """capture, prepare, invoke and publish fail concurrently; each loop owns its failure counter
    (one writer each), and health's frames_failed is their exact sum."""
    frames = 400
    stats = PipelineStats()
    source = FlakySource(frames, failing_reads=frozenset({50, 120}))
    stops = [threading.Event() for _ in range(4)]
    slot = SequentialSlot(stops[0])
    capture = CaptureLoop(source, slot, stats, reopen_backoff_max_s=0.5, on_state=lambda reason: None)
    stage = FlakyStage()
    hand_off, clock = HandOff(), InvokeClock()
    invoked: queue.Queue[Invoked | EndOfStream] = queue.Queue(maxsize=8)
    publisher = MemoryPublisher()
    prepare = PrepareLoop(slot, stage, hand_off, clock, stats, max_frames=None)
    invoke = InvokeLoop(stage, hand_off, clock, invoked, stats, lambda: None)
    publish = PublishLoop(invoked, stage, publisher, "t/keypoints", 0, "dev", stats)
    threads = [
        threading.Thread(target=loop.run, args=(stop,))
        for loop, stop in zip((capture, prepare, invoke, publish), stops, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)

    c = stats.counters
    per_residue = frames // 4
    assert (c.capture_failed, c.prepare_failed, c.invoke_failed, c.decode_failed) == (2, *[per_residue] * 3)
    assert c.frames_failed == 2 + 3 * per_residue
    assert c.frames_captured == frames and c.source_reopens == 2
    assert c.frames_inferred == 2 * per_residue  # prepare and invoke failures never reach the count
    assert c.frames_published == len(publisher.messages) == per_residue
