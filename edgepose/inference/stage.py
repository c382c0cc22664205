"""Per-frame pose stages: a model family's estimator plus the state carried between frames.

A stage turns a Frame into an InferenceResult. Single-pose MoveNet carries a crop region and a
keypoint smoother from frame to frame; MultiPose carries a tracker (ids) and per-track
smoothing; PoseNet is the legacy single-pose path. Which stage a model gets is read from its
own tensors, so a .tflite path works without naming its family.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from edgepose.config import ModelConfig
from edgepose.crop import (
    SECOND_PASS_WIDE_RATIO,
    STABLE_RATIOS,
    CropRegionTracker,
    acquisition_box,
    box_side_ratio,
    mean_keypoint_score,
    refine_crops,
    second_pass_box,
)
from edgepose.errors import ModelError
from edgepose.geometry import box_to_frame, crop_and_resize_into, frame_to_box, letterbox_box
from edgepose.inference.movenet import SinglePoseEstimator, decode_singlepose, keypoints_to_pose
from edgepose.inference.multipose import (
    decode_multipose,
    detections_to_frame,
    multipose_box,
    multipose_input_size,
)
from edgepose.inference.posenet import decode_single_pose, posenet_preprocess_into
from edgepose.inference.runtime import InferenceBackend
from edgepose.pose import NUM_KEYPOINTS, BoundingBox, CropBox, Pose
from edgepose.smoothing import KeypointSmoother, OneEuroParams
from edgepose.sources.base import Frame
from edgepose.tracking import PoseTracker

Mode = Literal["video", "stills"]
Family = Literal["movenet_singlepose", "movenet_multipose", "posenet"]


@dataclass(frozen=True)
class StageTimings:
    """Where one frame's time went inside the stage; the pipeline records them, the stage keeps no stats."""

    preprocess_ms: float
    invoke_ms: float
    decode_ms: float


@dataclass(frozen=True)
class InferenceResult:
    frame_timestamp_s: float
    frame_monotonic_s: float
    frame_width_px: int
    frame_height_px: int
    poses: tuple[Pose, ...]
    crop: CropBox | None
    smoothed: bool
    timings: StageTimings
    model: str
    backend: str

    @property
    def inference_ms(self) -> float:
        return self.timings.invoke_ms


@dataclass(frozen=True, eq=False)
class Prepared:
    """A frame written into a model input tensor, waiting for (or past) its invoke."""

    frame: Frame
    box: CropBox  # the frame region the tensor shows
    tensor: np.ndarray
    preprocess_ms: float


class PoseStage(Protocol):
    """prepare (any thread) -> invoke (the invoke thread) -> finish (the publish thread).

    Split so the pipeline can prepare the next frame and finish the previous one while the
    interpreter runs; `process` does the three in a row for still images and tests.
    """

    @property
    def model_name(self) -> str: ...

    @property
    def backend_kind(self) -> str: ...

    def new_input(self) -> np.ndarray: ...

    def prepare(self, frame: Frame, tensor: np.ndarray) -> Prepared: ...

    def invoke(self, prepared: Prepared) -> list[np.ndarray]: ...

    def finish(self, prepared: Prepared, outputs: list[np.ndarray], invoke_ms: float) -> InferenceResult: ...

    def process(self, frame: Frame) -> InferenceResult: ...

    def set_live(self, score_threshold: float, smoothing: bool) -> None: ...


class _StageBase:
    backend: InferenceBackend
    _model_name: str
    score_threshold: float
    _smoother: KeypointSmoother | None = None
    # Set by build_stage, so smoothing can be switched on at run time even when the config had it off.
    _one_euro_params: OneEuroParams | None = None
    _video: bool = True

    def set_live(self, score_threshold: float, smoothing: bool) -> None:
        """Applied by a remote command from another thread: each is one attribute assignment, and
        finish() reads `_smoother` once per frame, so a frame sees either the old or the new filter."""
        self.score_threshold = score_threshold
        if not smoothing:
            self._smoother = None
        elif self._smoother is None and self._video and self._one_euro_params is not None:
            self._smoother = KeypointSmoother(self._one_euro_params)

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def backend_kind(self) -> str:
        return self.backend.kind

    def new_input(self) -> np.ndarray:
        spec = self.backend.input_spec
        return np.zeros(spec.shape, dtype=spec.dtype)

    def invoke(self, prepared: Prepared) -> list[np.ndarray]:
        # Only the invoke thread touches the interpreter, so a resize (MultiPose) happens here too.
        if prepared.tensor.shape != self.backend.input_spec.shape:
            self.backend.resize_input(prepared.tensor.shape)
        return self.backend.invoke(prepared.tensor)

    def prepare(self, frame: Frame, tensor: np.ndarray) -> Prepared:
        raise NotImplementedError

    def finish(self, prepared: Prepared, outputs: list[np.ndarray], invoke_ms: float) -> InferenceResult:
        raise NotImplementedError

    def process(self, frame: Frame) -> InferenceResult:
        prepared = self.prepare(frame, self.new_input())
        started = time.perf_counter()
        outputs = self.invoke(prepared)
        return self.finish(prepared, outputs, (time.perf_counter() - started) * 1e3)

    def _single_pose_result(
        self, prepared: Prepared, keypoints: np.ndarray, invoke_ms: float, started_s: float
    ) -> InferenceResult:
        """Smooth (video), threshold and record one frame-normalized (17, 3) pose."""
        frame = prepared.frame
        smoother = self._smoother
        if smoother is not None:
            keypoints[:, :2] = smoother.update(keypoints[:, :2], frame.scene_time_s, frame.height_px, frame.width_px)
        pose = keypoints_to_pose(keypoints)
        timings = StageTimings(prepared.preprocess_ms, invoke_ms, (time.perf_counter() - started_s) * 1e3)
        poses = (pose,) if pose.score >= self.score_threshold else ()
        return self._result(prepared, poses, smoother is not None, timings)

    def _result(
        self, prepared: Prepared, poses: tuple[Pose, ...], smoothed: bool, timings: StageTimings
    ) -> InferenceResult:
        frame = prepared.frame
        return InferenceResult(
            frame_timestamp_s=frame.timestamp_s,
            frame_monotonic_s=frame.monotonic_s,
            frame_width_px=frame.width_px,
            frame_height_px=frame.height_px,
            poses=poses,
            crop=prepared.box,
            smoothed=smoothed,
            timings=timings,
            model=self._model_name,
            backend=self.backend_kind,
        )


def detect_family(backend: InferenceBackend) -> Family:
    """The model family from its tensors: MoveNet single [1,1,17,3], MultiPose [1,6,56], PoseNet 4 maps."""
    outputs = backend.output_specs
    shapes = [spec.shape for spec in outputs]
    if len(outputs) == 1 and int(np.prod(outputs[0].shape)) == NUM_KEYPOINTS * 3:
        return "movenet_singlepose"
    if len(outputs) == 1 and len(shapes[0]) == 3 and shapes[0][2] == 56:
        return "movenet_multipose"
    if len(outputs) == 4 and [s[-1] for s in shapes] == [17, 34, 32, 32]:
        return "posenet"
    raise ModelError(
        f"unsupported model: outputs {shapes}; expected MoveNet single-pose [1,1,17,3], "
        "MoveNet MultiPose [1,6,56] or PoseNet heatmaps/offsets/displacements"
    )


def _one_euro(config: ModelConfig) -> OneEuroParams:
    return OneEuroParams(
        min_cutoff_hz=config.smoothing.min_cutoff_hz,
        beta=config.smoothing.beta,
        derivative_cutoff_hz=config.smoothing.derivative_cutoff_hz,
    )


# A recording's frame N is cropped from frame N-2's keypoints: the pipeline prepares frame N while
# N-1 is in the interpreter, so N-2 is the newest frame that is always finished by then.
RECORDING_CROP_LAG_FRAMES = 2
# How long a recording's frame waits for the frame its crop comes from (normally a fraction of a
# millisecond: that frame's finish runs alongside). Past this, a frame that failed or was dropped
# is given up on and the newest box is used.
RECORDING_CROP_WAIT_S = 0.5


class SharedCrop:
    """The crop tracker shared by prepare() and invoke() (readers) and finish() (the writer), which
    run on different threads.

    Live frames take the newest box. A recording's frames (`Frame.media_time_s` set) take the box
    made from a fixed earlier frame, waiting for it if its finish is still running: which box a frame
    gets never depends on thread timing, so a video gives the same keypoints on any machine and
    under any load, the same as `edgepose eval`'s replay of the pipeline's order.
    """

    def __init__(self, tracker: CropRegionTracker) -> None:
        self.tracker = tracker
        self._changed = threading.Condition()
        # (frame index, frame size, box for the frames after it) for the last few finished frames.
        self._boxes_after: deque[tuple[int, tuple[int, int], CropBox]] = deque(maxlen=8)

    def box_for(self, frame: Frame) -> CropBox:
        """The box to prepare `frame` with."""
        with self._changed:
            if frame.media_time_s is not None:
                if frame.index < RECORDING_CROP_LAG_FRAMES:
                    return letterbox_box(frame.height_px, frame.width_px)
                box = self._wait_for_box_after(frame.index - RECORDING_CROP_LAG_FRAMES, frame)
                if box is not None:
                    return box
            return self.tracker.box_for_frame(frame.height_px, frame.width_px)

    def newest_box(self, frame: Frame) -> CropBox | None:
        """The box made from the frame just before `frame` (for a recording) or the newest one, if any."""
        with self._changed:
            if frame.media_time_s is not None and frame.index >= 1:
                box = self._wait_for_box_after(frame.index - 1, frame)
                if box is not None:
                    return box
            same_size = self.tracker.frame_size_px == (frame.height_px, frame.width_px)
            return self.tracker.box if same_size else None

    def update(self, keypoints: np.ndarray, frame: Frame) -> None:
        """Follow the person from a finished frame's keypoints (frames in order, one thread)."""
        with self._changed:
            box = self.tracker.next_box(keypoints, frame.height_px, frame.width_px)
            if frame.media_time_s is not None:  # only a recording's frames ask for an earlier frame's box
                self._boxes_after.append((frame.index, (frame.height_px, frame.width_px), box))
                self._changed.notify_all()

    def _wait_for_box_after(self, index: int, frame: Frame) -> CropBox | None:
        size = (frame.height_px, frame.width_px)

        def box_after() -> CropBox | None:
            # Newest first: a source reopened by a reload counts its frames from 0 again.
            for seen_index, seen_size, box in reversed(self._boxes_after):
                if seen_index == index and seen_size == size:
                    return box
            return None

        # wait_for returns the predicate's last value: the box, or None once the wait timed out.
        return self._changed.wait_for(box_after, RECORDING_CROP_WAIT_S)


class SinglePoseStage(_StageBase):
    """MoveNet single-pose. Video: the crop follows the person and keypoints are one-euro smoothed.
    Stills: every frame stands alone, refined by re-running on the crop it finds.

    Video accuracy fixes (docs/pose-quality.md): `second_pass` re-runs a frame whose crop was the
    letterbox or missed the person; `tight_crop` narrows the crop's margins once the track is stable.
    Both default on; off gives upstream tfjs behaviour, for comparison.
    """

    def __init__(
        self,
        estimator: SinglePoseEstimator,
        model_name: str,
        score_threshold: float,
        smart_crop: bool = True,
        smoothing: OneEuroParams | None = None,
        mode: Mode = "video",
        second_pass: bool = True,
        tight_crop: bool = True,
    ) -> None:
        self.estimator = estimator
        self.backend = estimator.backend
        self._model_name = model_name
        self.score_threshold = score_threshold
        self.mode = mode
        self.smart_crop = smart_crop
        tracker = CropRegionTracker(stable_ratios=STABLE_RATIOS if tight_crop else None)
        self._crop = SharedCrop(tracker) if smart_crop and mode == "video" else None
        self._smoother = KeypointSmoother(smoothing) if smoothing is not None and mode == "video" else None
        self.second_pass = second_pass
        self.second_passes = 0  # how many frames needed one (read by eval and tests)
        self._scratch: np.ndarray | None = None

    def invoke(self, prepared: Prepared) -> list[np.ndarray]:
        """One invoke, and a second one on a better crop when this frame's crop was wrong.

        The crop a video frame is run on comes from an earlier frame, so it is the letterbox while a
        track starts and it can miss a person who moved. `second_pass_box` tells from this frame's
        own keypoints; the second pass runs here, on the invoke thread that owns the interpreter,
        into a scratch tensor. Its keypoints are returned in the coordinates of `prepared.box` so
        finish() decodes either pass the same way. The pass with the higher mean score is kept, as
        the stills refinement does.
        """
        outputs = super().invoke(prepared)
        if self._crop is None or not self.second_pass:
            return outputs
        frame = prepared.frame
        first = decode_singlepose(outputs[0], prepared.box)
        box = second_pass_box(first, prepared.box, frame.height_px, frame.width_px)
        if box is None:
            # This frame alone does not show the torso, but a frame finished since this one was
            # prepared may have started a track (the pipeline prepares one frame ahead).
            tracked = self._crop.newest_box(frame)
            if tracked is not None and box_side_ratio(prepared.box, tracked) > SECOND_PASS_WIDE_RATIO:
                box = tracked
            elif tracked is None or tracked == letterbox_box(frame.height_px, frame.width_px):
                # Nobody tracked: a small person's letterbox pass can have confident head,
                # shoulders and legs but misplaced hips; anchor on the confident keypoints.
                box = acquisition_box(first, prepared.box, frame.height_px, frame.width_px)
        if box is None:
            return outputs
        if self._scratch is None:
            self._scratch = self.estimator.new_input()
        effective = self.estimator.prepare_into(frame.image, box, self._scratch)
        second = decode_singlepose(self.backend.invoke(self._scratch)[0], effective)
        self.second_passes += 1
        if mean_keypoint_score(second) <= mean_keypoint_score(first):
            return outputs
        raw = second.copy()
        raw[:, :2] = frame_to_box(second[:, :2], prepared.box)
        return [raw.reshape(outputs[0].shape).astype(np.float32)]

    def prepare(self, frame: Frame, tensor: np.ndarray) -> Prepared:
        start = time.perf_counter()
        requested = None
        if self._crop is not None:
            requested = self._crop.box_for(frame)
        box = self.estimator.prepare_into(frame.image, requested, tensor, frame.scaled)
        return Prepared(frame, box, tensor, (time.perf_counter() - start) * 1e3)

    def finish(self, prepared: Prepared, outputs: list[np.ndarray], invoke_ms: float) -> InferenceResult:
        start = time.perf_counter()
        frame = prepared.frame
        keypoints = decode_singlepose(outputs[0], prepared.box)
        if self._crop is not None:
            self._crop.update(keypoints, frame)
        return self._single_pose_result(prepared, keypoints, invoke_ms, start)

    def process(self, frame: Frame) -> InferenceResult:
        if not (self.mode == "stills" and self.smart_crop):
            return super().process(frame)
        totals = [0.0, 0.0, 0.0]
        used: dict[int, CropBox] = {}

        def estimate(box: CropBox) -> np.ndarray:
            raw = self.estimator.estimate(frame.image, box)
            totals[0] += raw.timings.preprocess_ms
            totals[1] += raw.timings.invoke_ms
            totals[2] += raw.timings.decode_ms
            used[id(box)] = raw.box
            return raw.keypoints

        refined = refine_crops(estimate, frame.height_px, frame.width_px)
        pose = keypoints_to_pose(refined.keypoints)
        box = used.get(id(refined.box), refined.box)
        prepared = Prepared(frame, box, self.estimator.new_input(), totals[0])
        poses = (pose,) if pose.score >= self.score_threshold else ()
        return self._result(prepared, poses, False, StageTimings(*totals))


class MultiPoseStage(_StageBase):
    """MoveNet MultiPose: dynamic input sized to the frame's aspect, up to 6 poses with ids and boxes."""

    def __init__(
        self,
        backend: InferenceBackend,
        model_name: str,
        score_threshold: float,
        smoothing: OneEuroParams | None = None,
        mode: Mode = "video",
        long_side_px: int = 256,
    ) -> None:
        if backend.input_spec.dtype != np.uint8:
            raise ModelError(f"MultiPose input must be uint8, got {backend.input_spec.dtype}")
        self.backend = backend
        self._model_name = model_name
        self.score_threshold = score_threshold
        self.long_side_px = long_side_px
        self._tracker = PoseTracker() if mode == "video" else None
        self._smoother = KeypointSmoother(smoothing) if smoothing is not None and mode == "video" else None

    def prepare(self, frame: Frame, tensor: np.ndarray) -> Prepared:
        start = time.perf_counter()
        in_h, in_w = multipose_input_size(frame.height_px, frame.width_px, self.long_side_px)
        if tensor.shape != (1, in_h, in_w, 3):
            # The model takes any multiple of 32: the input follows the frame's aspect.
            tensor = np.zeros((1, in_h, in_w, 3), np.uint8)
        box = crop_and_resize_into(frame.image, multipose_box(frame.height_px, frame.width_px, in_h, in_w), tensor[0])
        return Prepared(frame, box, tensor, (time.perf_counter() - start) * 1e3)

    def finish(self, prepared: Prepared, outputs: list[np.ndarray], invoke_ms: float) -> InferenceResult:
        start = time.perf_counter()
        frame = prepared.frame
        detections = detections_to_frame(decode_multipose(outputs[0], self.score_threshold), prepared.box)
        keypoints = detections.keypoints
        ids: list[int] | None = None
        if self._tracker is not None:
            tracked = self._tracker.update(keypoints, frame.scene_time_s, detections.boxes, detections.scores)
            ids = [int(i) for i in tracked]
        smoothed = False
        smoother = self._smoother
        if smoother is not None and ids:
            keypoints = keypoints.copy()
            keypoints[..., :2] = smoother.update(
                keypoints[..., :2], frame.scene_time_s, frame.height_px, frame.width_px, track_ids=ids
            )
            smoothed = True
        poses = []
        for index in range(len(detections)):
            ymin, xmin, ymax, xmax = (float(v) for v in detections.boxes[index])
            poses.append(
                Pose(
                    keypoints=keypoints_to_pose(keypoints[index]).keypoints,
                    score=float(detections.scores[index]),
                    track_id=ids[index] if ids is not None else None,
                    bbox=BoundingBox(xmin=xmin, ymin=ymin, xmax=xmax, ymax=ymax),
                )
            )
        timings = StageTimings(prepared.preprocess_ms, invoke_ms, (time.perf_counter() - start) * 1e3)
        return self._result(prepared, tuple(poses), smoothed, timings)


class PoseNetStage(_StageBase):
    """Legacy PoseNet MobileNetV1: letterboxed float input, single-pose heatmap + offset decoding."""

    def __init__(
        self,
        backend: InferenceBackend,
        model_name: str,
        score_threshold: float,
        smoothing: OneEuroParams | None = None,
        mode: Mode = "video",
    ) -> None:
        spec = backend.input_spec
        if spec.dtype != np.float32 or len(spec.shape) != 4:
            raise ModelError(f"PoseNet input must be float32 [1, H, W, 3], got {spec.dtype} {spec.shape}")
        self.backend = backend
        self._model_name = model_name
        self.score_threshold = score_threshold
        self._staging = np.zeros(spec.shape[1:], np.uint8)
        self._smoother = KeypointSmoother(smoothing) if smoothing is not None and mode == "video" else None

    def prepare(self, frame: Frame, tensor: np.ndarray) -> Prepared:
        start = time.perf_counter()
        box = crop_and_resize_into(frame.image, letterbox_box(frame.height_px, frame.width_px), self._staging)
        posenet_preprocess_into(self._staging, tensor)
        return Prepared(frame, box, tensor, (time.perf_counter() - start) * 1e3)

    def finish(self, prepared: Prepared, outputs: list[np.ndarray], invoke_ms: float) -> InferenceResult:
        start = time.perf_counter()
        heatmaps, offsets, *_ = outputs
        in_h, in_w = prepared.tensor.shape[1], prepared.tensor.shape[2]
        model_keypoints = decode_single_pose(heatmaps, offsets, in_h, in_w)
        keypoints = model_keypoints.copy()
        keypoints[:, :2] = box_to_frame(model_keypoints[:, :2], prepared.box)
        return self._single_pose_result(prepared, keypoints, invoke_ms, start)


def build_stage(backend: InferenceBackend, model_name: str, config: ModelConfig, mode: Mode) -> PoseStage:
    family = detect_family(backend)
    params = _one_euro(config)
    smoothing = params if config.smoothing.enabled else None
    stage: _StageBase
    if family == "movenet_singlepose":
        stage = SinglePoseStage(
            SinglePoseEstimator(backend), model_name, config.score_threshold, config.smart_crop, smoothing, mode
        )
    elif family == "movenet_multipose":
        stage = MultiPoseStage(backend, model_name, config.score_threshold, smoothing, mode)
    else:
        stage = PoseNetStage(backend, model_name, config.score_threshold, smoothing, mode)
    stage._one_euro_params = params
    stage._video = mode == "video"
    return stage
