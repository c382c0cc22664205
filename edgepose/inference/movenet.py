"""MoveNet single-pose: preprocess a frame region into the model input, invoke, decode to a Pose.

Input size and dtype come from the model itself, so Lightning (192) and Thunder (256), int8 and
fp16, go through this one code path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from edgepose.errors import ModelError
from edgepose.geometry import crop_and_resize_into, letterbox_box, paste_scaled_into
from edgepose.inference.runtime import InferenceBackend
from edgepose.pose import NUM_KEYPOINTS, CropBox, Pose, keypoints_from_rows


@dataclass(frozen=True)
class StageTimings:
    preprocess_ms: float
    invoke_ms: float
    decode_ms: float


@dataclass(frozen=True)
class RawEstimate:
    """Keypoints as a (17, 3) array [y, x, score], frame-normalized, with the box the model saw."""

    keypoints: np.ndarray
    box: CropBox
    timings: StageTimings


def keypoints_to_pose(keypoints: np.ndarray) -> Pose:
    """(17, 3) [y, x, score] frame-normalized -> Pose; the pose score is the mean keypoint score."""
    # One tolist() instead of 51 numpy scalar reads: this runs for every frame.
    rows = keypoints.tolist()
    return Pose(keypoints=keypoints_from_rows(rows), score=mean_of_17([row[2] for row in rows]))


def mean_of_17(values: list[float]) -> float:
    """np.mean of 17 float64 values, bit for bit (tested), without numpy's call overhead per frame.

    numpy sums 8 <= n <= 128 values pairwise: eight running sums over strides of 8, added as a
    tree, then the remainder in order; the mean divides that sum by n.
    """
    s = values
    total = ((s[0] + s[8]) + (s[1] + s[9]) + ((s[2] + s[10]) + (s[3] + s[11]))) + (
        ((s[4] + s[12]) + (s[5] + s[13])) + ((s[6] + s[14]) + (s[7] + s[15]))
    )
    return (total + s[16]) / NUM_KEYPOINTS


def decode_singlepose(output: np.ndarray, box: CropBox) -> np.ndarray:
    """MoveNet output [1, 1, 17, 3] (y, x, score in the model input) -> frame-normalized (17, 3)."""
    if output.size != NUM_KEYPOINTS * 3:
        raise ModelError(f"unexpected MoveNet output shape {output.shape}: expected [1, 1, 17, 3]")
    mapped = output.reshape(NUM_KEYPOINTS, 3).astype(np.float64)
    # box_to_frame, in place: y * height + ymin, x * width + xmin; scores pass through.
    yx = mapped[:, :2]
    yx *= (box.ymax - box.ymin, box.xmax - box.xmin)
    yx += (box.ymin, box.xmin)
    return mapped


class SinglePoseEstimator:
    """MoveNet single-pose on a backend: fill an input tensor from a frame region, invoke, decode."""

    def __init__(self, backend: InferenceBackend) -> None:
        spec = backend.input_spec
        if len(spec.shape) != 4 or spec.shape[3] != 3 or spec.shape[1] != spec.shape[2]:
            raise ModelError(f"not a MoveNet single-pose model: input shape {spec.shape}, expected [1, N, N, 3]")
        outputs = backend.output_specs
        if len(outputs) != 1 or int(np.prod(outputs[0].shape)) != NUM_KEYPOINTS * 3:
            shapes = [o.shape for o in outputs]
            raise ModelError(f"not a MoveNet single-pose model: outputs {shapes}, expected one [1, 1, 17, 3]")
        self.backend = backend
        self.input_size_px = spec.shape[1]
        self._input = self.new_input()
        # Float MoveNet variants take 0..255 floats too: resize into uint8, then widen.
        self._staging = None if spec.dtype == np.uint8 else np.zeros(spec.shape[1:], np.uint8)

    def new_input(self) -> np.ndarray:
        spec = self.backend.input_spec
        return np.zeros(spec.shape, dtype=spec.dtype)

    def prepare_into(
        self, frame: np.ndarray, box: CropBox | None, tensor: np.ndarray, scaled: np.ndarray | None = None
    ) -> CropBox:
        """Write `box` of an RGB uint8 frame (default: the letterbox) into `tensor`; the effective box.

        `scaled`: the whole frame already scaled by the camera (Frame.scaled). Used, without any
        resizing, when the box is the letterbox and it has the right size.
        """
        if box is None:
            box = letterbox_box(frame.shape[0], frame.shape[1])
        if scaled is not None and self._staging is None and box == letterbox_box(frame.shape[0], frame.shape[1]):
            effective = paste_scaled_into(scaled, frame.shape[0], frame.shape[1], tensor[0])
            if effective is not None:
                return effective
        if self._staging is None:
            return crop_and_resize_into(frame, box, tensor[0])
        effective = crop_and_resize_into(frame, box, self._staging)
        tensor[0] = self._staging
        return effective

    def estimate(self, frame: np.ndarray, box: CropBox | None = None) -> RawEstimate:
        """Run the model on `box` of an RGB uint8 frame (default: the letterboxed whole frame)."""
        start = time.perf_counter()
        box = self.prepare_into(frame, box, self._input)
        prepared = time.perf_counter()
        (output,) = self.backend.invoke(self._input)
        invoked = time.perf_counter()
        keypoints = decode_singlepose(output, box)
        decoded = time.perf_counter()
        timings = StageTimings(
            preprocess_ms=(prepared - start) * 1e3,
            invoke_ms=(invoked - prepared) * 1e3,
            decode_ms=(decoded - invoked) * 1e3,
        )
        return RawEstimate(keypoints=keypoints, box=box, timings=timings)
