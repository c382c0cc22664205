"""Runs the daemon's own stage over labelled stills and video frames, in the daemon's order.

Stills go through `stage.process` in stills mode, as `edgepose infer` does. Video frames go
through a video-mode stage one frame at a time. The daemon's pipeline prepares frame N+1 while
frame N is still in the interpreter, so with a file source (or any source faster than the model)
frame N+1's crop comes from frame N-1's keypoints; `pipelined=True` replays exactly that order
(prepare N+1, finish N, invoke N+1) with the stage's own prepare/invoke/finish. `pipelined=False`
is a camera slower than the model: each frame is finished before the next one is prepared.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from edgepose.inference.stage import InferenceResult, PoseStage, Prepared
from edgepose.pose import Pose
from edgepose.sources.base import Frame


@dataclass(frozen=True, eq=False)
class TimedImage:
    image: np.ndarray
    timestamp_s: float


def best_pose(result: InferenceResult) -> Pose | None:
    return max(result.poses, key=lambda p: p.score, default=None)


def run_stills(stage: PoseStage, images: Iterable[np.ndarray]) -> Iterator[InferenceResult]:
    for index, image in enumerate(images):
        yield stage.process(Frame(image, float(index), float(index), index))


def run_video(stage: PoseStage, frames: Iterable[TimedImage], pipelined: bool = True) -> Iterator[InferenceResult]:
    """Results in frame order; time stamps drive the smoothing, as a camera's would."""
    tensors = [stage.new_input(), stage.new_input()]
    pending: tuple[Prepared, list[np.ndarray], float] | None = None
    for index, timed in enumerate(frames):
        # Pipelined frames are a recording's (media time set): the stage then crops each from the
        # same earlier frame the daemon does for a video file, whatever the threads' timing.
        media_time_s = timed.timestamp_s if pipelined else None
        frame = Frame(timed.image, timed.timestamp_s, timed.timestamp_s, index, media_time_s=media_time_s)
        if not pipelined and pending is not None:
            yield stage.finish(*pending)
            pending = None
        prepared = stage.prepare(frame, tensors[index % 2])
        tensors[index % 2] = prepared.tensor
        if pending is not None:
            yield stage.finish(*pending)
        started = time.perf_counter()
        outputs = stage.invoke(prepared)
        # Outputs may be views of the interpreter's buffers: copy before the next invoke.
        pending = (prepared, [np.array(o, copy=True) for o in outputs], (time.perf_counter() - started) * 1e3)
    if pending is not None:
        yield stage.finish(*pending)
