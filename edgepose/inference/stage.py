"""The per-frame pose stage: estimator + score threshold, producing pipeline results."""

from __future__ import annotations

from edgepose.health import PipelineStats
from edgepose.inference.movenet import SinglePoseEstimator, keypoints_to_pose
from edgepose.pipeline import InferenceResult
from edgepose.sources.base import Frame


class SinglePoseStage:
    """One MoveNet single-pose estimate per frame; a pose below `score_threshold` is not reported."""

    def __init__(self, estimator: SinglePoseEstimator, model_name: str, score_threshold: float) -> None:
        self.estimator = estimator
        self._model_name = model_name
        self.score_threshold = score_threshold

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def backend_kind(self) -> str:
        return self.estimator.backend.kind

    def process(self, frame: Frame, stats: PipelineStats) -> InferenceResult:
        raw = self.estimator.estimate(frame.image)
        timings = raw.timings
        stats.stages["preprocess"].add(timings.preprocess_ms)
        stats.stages["invoke"].add(timings.invoke_ms)
        stats.stages["decode"].add(timings.decode_ms)
        stats.inference_ms.add(timings.invoke_ms)
        pose = keypoints_to_pose(raw.keypoints)
        poses = (pose,) if pose.score >= self.score_threshold else ()
        return InferenceResult(
            frame_timestamp_s=frame.timestamp_s,
            frame_monotonic_s=frame.monotonic_s,
            frame_width_px=frame.width_px,
            frame_height_px=frame.height_px,
            poses=poses,
            crop=raw.box,
            smoothed=False,
            inference_ms=timings.invoke_ms,
            model=self._model_name,
            backend=self.backend_kind,
        )
