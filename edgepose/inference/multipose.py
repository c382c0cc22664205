"""MoveNet MultiPose Lightning: input size, input box and output decoding (pure numpy).

The model takes any input whose sides are multiples of 32 and returns [1, 6, 56]: per row, 17 x
(y, x, score) then (ymin, xmin, ymax, xmax, score), normalized to the input tensor. Sizing follows
tfjs-models `pose-detection/src/movenet/detector.ts` (`estimateMultiplePoses`: longer side =
256, shorter side rounded then padded up to a multiple of 32) and the TF Lite Raspberry Pi example
(`utils.keep_aspect_ratio_resizer`). Both paste the frame in the top-left corner and pad the bottom
or right; here the padding is split evenly, like the letterbox, so the input is just another
`CropBox` over the frame and `geometry.crop_and_resize_into` / `box_to_frame` serve unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgepose.geometry import box_to_frame
from edgepose.pose import NUM_KEYPOINTS, CropBox

INPUT_DIVISOR_PX = 32
DEFAULT_LONG_SIDE_PX = 256  # tfjs MOVENET_MULTIPOSE_DEFAULT_MAX_DIMENSION, TF example input_size
MAX_INSTANCES = 6
INSTANCE_SIZE = NUM_KEYPOINTS * 3 + 5  # 56
_BOX_START = NUM_KEYPOINTS * 3  # 51
_SCORE_INDEX = _BOX_START + 4  # 55
# The TF Lite Raspberry Pi example keeps poses scoring >= 0.11 (`detect(detection_threshold=0.11)`);
# tfjs uses DEFAULT_MIN_POSE_SCORE 0.25. The example's value keeps people the 0.25 cut would drop
# at a distance; callers wanting fewer false positives pass 0.25.
DEFAULT_MIN_POSE_SCORE = 0.11


@dataclass(frozen=True, eq=False)
class MultiPoseDetections:
    """Kept poses, highest score first. Coordinates are normalized to whatever box they refer to."""

    keypoints: np.ndarray  # (N, 17, 3) [y, x, score]
    boxes: np.ndarray  # (N, 4) [ymin, xmin, ymax, xmax]
    scores: np.ndarray  # (N,)

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def multipose_input_size(
    frame_height_px: int, frame_width_px: int, long_side_px: int = DEFAULT_LONG_SIDE_PX
) -> tuple[int, int]:
    """(height, width) of the input tensor for a frame: longer side `long_side_px`, aspect kept, /32."""
    if frame_height_px <= 0 or frame_width_px <= 0:
        raise ValueError(f"frame size must be positive, got {frame_width_px}x{frame_height_px}")
    if long_side_px <= 0 or long_side_px % INPUT_DIVISOR_PX:
        raise ValueError(f"long side must be a positive multiple of {INPUT_DIVISOR_PX}, got {long_side_px}")
    aspect = min(frame_height_px, frame_width_px) / max(frame_height_px, frame_width_px)
    exact_short_px = long_side_px * aspect
    # tfjs rounds (Math.round, halves up) before padding up; ceil-ing first, as the TF example
    # does, can add a whole 32-px band of padding for a fraction of a pixel.
    short_px = math.floor(exact_short_px + 0.5)
    short_px = max(INPUT_DIVISOR_PX, math.ceil(short_px / INPUT_DIVISOR_PX) * INPUT_DIVISOR_PX)
    if frame_width_px >= frame_height_px:
        return short_px, long_side_px
    return long_side_px, short_px


def multipose_box(
    frame_height_px: int,
    frame_width_px: int,
    input_height_px: int,
    input_width_px: int,
) -> CropBox:
    """The frame, padded evenly to the input's aspect: the region an in_h x in_w input shows."""
    if min(frame_height_px, frame_width_px, input_height_px, input_width_px) <= 0:
        raise ValueError(
            f"sizes must be positive: frame {frame_width_px}x{frame_height_px}, "
            f"input {input_width_px}x{input_height_px}"
        )
    scale = min(input_height_px / frame_height_px, input_width_px / frame_width_px)
    box_height_px = input_height_px / scale
    box_width_px = input_width_px / scale
    pad_y = (box_height_px - frame_height_px) / 2 / frame_height_px
    pad_x = (box_width_px - frame_width_px) / 2 / frame_width_px
    return CropBox(ymin=-pad_y, xmin=-pad_x, ymax=1.0 + pad_y, xmax=1.0 + pad_x)


def decode_multipose(
    output: np.ndarray,
    min_pose_score: float = DEFAULT_MIN_POSE_SCORE,
) -> MultiPoseDetections:
    """Split the model's [1, N, 56] output into poses scoring >= `min_pose_score`, in input coordinates."""
    raw = np.asarray(output)
    if raw.ndim == 3 and raw.shape[0] == 1:
        raw = raw[0]
    if raw.ndim != 2 or raw.shape[1] != INSTANCE_SIZE:
        raise ValueError(f"expected a [1, N, {INSTANCE_SIZE}] MultiPose output, got {np.shape(output)}")
    # Compare in the model's own precision: float32(0.11) < 0.11, which would drop a pose scored
    # exactly at the threshold.
    keep = np.flatnonzero(raw[:, _SCORE_INDEX] >= np.asarray(min_pose_score, dtype=raw.dtype))
    rows = raw.astype(np.float64)
    scores = rows[:, _SCORE_INDEX]
    # Stable, so equal scores keep the model's order.
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    return MultiPoseDetections(
        keypoints=rows[keep, :_BOX_START].reshape(-1, NUM_KEYPOINTS, 3).copy(),
        boxes=rows[keep, _BOX_START:_SCORE_INDEX].copy(),
        scores=scores[keep].copy(),
    )


def detections_to_frame(detections: MultiPoseDetections, box: CropBox) -> MultiPoseDetections:
    """Map input-normalized keypoints and boxes through `box` (see `multipose_box`) to the frame."""
    keypoints = detections.keypoints.copy()
    keypoints[..., :2] = box_to_frame(detections.keypoints[..., :2], box)
    corners = detections.boxes.reshape(-1, 2, 2)  # [[ymin, xmin], [ymax, xmax]]
    boxes = box_to_frame(corners, box).reshape(-1, 4)
    return MultiPoseDetections(keypoints=keypoints, boxes=boxes, scores=detections.scores.copy())
