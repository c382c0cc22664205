"""Per-frame pose stages: a model family's estimator plus the state carried between frames.

A stage turns a Frame into an InferenceResult. Single-pose MoveNet carries a crop region and a
keypoint smoother from frame to frame; MultiPose carries a tracker (ids) and per-track
smoothing; PoseNet is the legacy single-pose path. Which stage a model gets is read from its
own tensors, so a .tflite path works without naming its family.
"""

from __future__ import annotations

import time
from typing import Literal, Protocol

import numpy as np

from edgepose.config import ModelConfig
from edgepose.crop import CropRegionTracker, refine_crops
from edgepose.errors import ModelError
from edgepose.geometry import box_to_frame, crop_and_resize_into, letterbox_box
from edgepose.health import PipelineStats
from edgepose.inference.movenet import SinglePoseEstimator, StageTimings, keypoints_to_pose
from edgepose.inference.multipose import (
    decode_multipose,
    detections_to_frame,
    multipose_box,
    multipose_input_size,
)
from edgepose.inference.posenet import decode_single_pose, posenet_preprocess_into
from edgepose.inference.runtime import InferenceBackend
from edgepose.pipeline import InferenceResult
from edgepose.pose import NUM_KEYPOINTS, BoundingBox, CropBox, Pose
from edgepose.smoothing import KeypointSmoother, OneEuroParams
from edgepose.sources.base import Frame
from edgepose.tracking import PoseTracker

Mode = Literal["video", "stills"]
Family = Literal["movenet_singlepose", "movenet_multipose", "posenet"]


class PoseStage(Protocol):
    @property
    def model_name(self) -> str: ...

    @property
    def backend_kind(self) -> str: ...

    def process(self, frame: Frame, stats: PipelineStats) -> InferenceResult: ...


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


def _record(stats: PipelineStats, timings: StageTimings) -> None:
    stats.stages["preprocess"].add(timings.preprocess_ms)
    stats.stages["invoke"].add(timings.invoke_ms)
    stats.stages["decode"].add(timings.decode_ms)
    stats.inference_ms.add(timings.invoke_ms)


def _one_euro(config: ModelConfig) -> OneEuroParams | None:
    if not config.smoothing.enabled:
        return None
    return OneEuroParams(
        min_cutoff_hz=config.smoothing.min_cutoff_hz,
        beta=config.smoothing.beta,
        derivative_cutoff_hz=config.smoothing.derivative_cutoff_hz,
    )


class SinglePoseStage:
    """MoveNet single-pose. Video: the crop follows the person and keypoints are one-euro smoothed.
    Stills: every frame stands alone, refined by re-running on the crop it finds."""

    def __init__(
        self,
        estimator: SinglePoseEstimator,
        model_name: str,
        score_threshold: float,
        smart_crop: bool = True,
        smoothing: OneEuroParams | None = None,
        mode: Mode = "video",
    ) -> None:
        self.estimator = estimator
        self._model_name = model_name
        self.score_threshold = score_threshold
        self.mode = mode
        self.smart_crop = smart_crop
        self._crop = CropRegionTracker() if smart_crop and mode == "video" else None
        self._smoother = KeypointSmoother(smoothing) if smoothing is not None and mode == "video" else None

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def backend_kind(self) -> str:
        return self.estimator.backend.kind

    def process(self, frame: Frame, stats: PipelineStats) -> InferenceResult:
        height_px, width_px = frame.height_px, frame.width_px
        if self.mode == "stills" and self.smart_crop:
            keypoints, box, timings = self._refined(frame.image)
        else:
            requested = self._crop.box_for_frame(height_px, width_px) if self._crop is not None else None
            raw = self.estimator.estimate(frame.image, requested)
            keypoints, box, timings = raw.keypoints, raw.box, raw.timings
            if self._crop is not None:
                self._crop.next_box(keypoints, height_px, width_px)
        _record(stats, timings)
        smoothed = False
        if self._smoother is not None:
            keypoints = keypoints.copy()
            keypoints[:, :2] = self._smoother.update(keypoints[:, :2], frame.timestamp_s, height_px, width_px)
            smoothed = True
        pose = keypoints_to_pose(keypoints)
        return InferenceResult(
            frame_timestamp_s=frame.timestamp_s,
            frame_monotonic_s=frame.monotonic_s,
            frame_width_px=width_px,
            frame_height_px=height_px,
            poses=(pose,) if pose.score >= self.score_threshold else (),
            crop=box,
            smoothed=smoothed,
            inference_ms=timings.invoke_ms,
            model=self._model_name,
            backend=self.backend_kind,
        )

    def _refined(self, image: np.ndarray) -> tuple[np.ndarray, CropBox, StageTimings]:
        totals = [0.0, 0.0, 0.0]
        used: dict[int, CropBox] = {}

        def estimate(box: CropBox) -> np.ndarray:
            raw = self.estimator.estimate(image, box)
            totals[0] += raw.timings.preprocess_ms
            totals[1] += raw.timings.invoke_ms
            totals[2] += raw.timings.decode_ms
            used[id(box)] = raw.box
            return raw.keypoints

        refined = refine_crops(estimate, image.shape[0], image.shape[1])
        return refined.keypoints, used.get(id(refined.box), refined.box), StageTimings(*totals)


class MultiPoseStage:
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
        self._input = np.zeros(backend.input_spec.shape, np.uint8)
        self._frame_size_px: tuple[int, int] | None = None
        self._box = CropBox(0, 0, 1, 1)
        self._tracker = PoseTracker() if mode == "video" else None
        self._smoother = KeypointSmoother(smoothing) if smoothing is not None and mode == "video" else None

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def backend_kind(self) -> str:
        return self.backend.kind

    def _fit_input(self, height_px: int, width_px: int) -> None:
        if self._frame_size_px == (height_px, width_px):
            return
        in_h, in_w = multipose_input_size(height_px, width_px, self.long_side_px)
        self.backend.resize_input((1, in_h, in_w, 3))
        self._input = np.zeros((1, in_h, in_w, 3), np.uint8)
        self._box = multipose_box(height_px, width_px, in_h, in_w)
        self._frame_size_px = (height_px, width_px)

    def process(self, frame: Frame, stats: PipelineStats) -> InferenceResult:
        start = time.perf_counter()
        self._fit_input(frame.height_px, frame.width_px)
        box = crop_and_resize_into(frame.image, self._box, self._input[0])
        prepared = time.perf_counter()
        (output,) = self.backend.invoke(self._input)
        invoked = time.perf_counter()
        detections = detections_to_frame(decode_multipose(output, self.score_threshold), box)
        keypoints = detections.keypoints
        ids: list[int] | None = None
        if self._tracker is not None:
            ids = [
                int(i) for i in self._tracker.update(keypoints, frame.timestamp_s, detections.boxes, detections.scores)
            ]
        smoothed = False
        if self._smoother is not None and ids is not None and len(ids):
            keypoints = keypoints.copy()
            keypoints[..., :2] = self._smoother.update(
                keypoints[..., :2], frame.timestamp_s, frame.height_px, frame.width_px, track_ids=ids
            )
            smoothed = True
        poses = []
        for index in range(len(detections)):
            pose = keypoints_to_pose(keypoints[index])
            ymin, xmin, ymax, xmax = (float(v) for v in detections.boxes[index])
            poses.append(
                Pose(
                    keypoints=pose.keypoints,
                    score=float(detections.scores[index]),
                    track_id=ids[index] if ids is not None else None,
                    bbox=BoundingBox(xmin=xmin, ymin=ymin, xmax=xmax, ymax=ymax),
                )
            )
        decoded = time.perf_counter()
        timings = StageTimings((prepared - start) * 1e3, (invoked - prepared) * 1e3, (decoded - invoked) * 1e3)
        _record(stats, timings)
        return InferenceResult(
            frame_timestamp_s=frame.timestamp_s,
            frame_monotonic_s=frame.monotonic_s,
            frame_width_px=frame.width_px,
            frame_height_px=frame.height_px,
            poses=tuple(poses),
            crop=box,
            smoothed=smoothed,
            inference_ms=timings.invoke_ms,
            model=self._model_name,
            backend=self.backend_kind,
        )


class PoseNetStage:
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
        self._input = np.zeros(spec.shape, np.float32)
        self._staging = np.zeros(spec.shape[1:], np.uint8)
        self._smoother = KeypointSmoother(smoothing) if smoothing is not None and mode == "video" else None

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def backend_kind(self) -> str:
        return self.backend.kind

    def process(self, frame: Frame, stats: PipelineStats) -> InferenceResult:
        start = time.perf_counter()
        in_h, in_w = self._input.shape[1], self._input.shape[2]
        box = crop_and_resize_into(frame.image, letterbox_box(frame.height_px, frame.width_px), self._staging)
        posenet_preprocess_into(self._staging, self._input)
        prepared = time.perf_counter()
        heatmaps, offsets, *_ = self.backend.invoke(self._input)
        invoked = time.perf_counter()
        model_keypoints = decode_single_pose(heatmaps, offsets, in_h, in_w)
        keypoints = model_keypoints.copy()
        keypoints[:, :2] = box_to_frame(model_keypoints[:, :2], box)
        smoothed = False
        if self._smoother is not None:
            keypoints[:, :2] = self._smoother.update(
                keypoints[:, :2], frame.timestamp_s, frame.height_px, frame.width_px
            )
            smoothed = True
        pose = keypoints_to_pose(keypoints)
        decoded = time.perf_counter()
        timings = StageTimings((prepared - start) * 1e3, (invoked - prepared) * 1e3, (decoded - invoked) * 1e3)
        _record(stats, timings)
        return InferenceResult(
            frame_timestamp_s=frame.timestamp_s,
            frame_monotonic_s=frame.monotonic_s,
            frame_width_px=frame.width_px,
            frame_height_px=frame.height_px,
            poses=(pose,) if pose.score >= self.score_threshold else (),
            crop=box,
            smoothed=smoothed,
            inference_ms=timings.invoke_ms,
            model=self._model_name,
            backend=self.backend_kind,
        )


def build_stage(backend: InferenceBackend, model_name: str, config: ModelConfig, mode: Mode) -> PoseStage:
    family = detect_family(backend)
    smoothing = _one_euro(config)
    if family == "movenet_singlepose":
        return SinglePoseStage(
            SinglePoseEstimator(backend), model_name, config.score_threshold, config.smart_crop, smoothing, mode
        )
    if family == "movenet_multipose":
        return MultiPoseStage(backend, model_name, config.score_threshold, smoothing, mode)
    return PoseNetStage(backend, model_name, config.score_threshold, smoothing, mode)
