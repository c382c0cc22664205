"""The one drawing function: poses and the crop box drawn onto a copy of an RGB frame.

Used by `edgepose infer --annotate`, the web live view and the MQTT snapshot, so a picture looks the
same wherever it is seen. Pure: numpy arrays and pose dataclasses in, a new array (or JPEG bytes) out
(OpenCV only draws and encodes; it never reads or writes files here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from edgepose.pose import KEYPOINT_INDEX, CropBox, Pose

# Limbs as pairs of COCO keypoint names; which side a limb is on picks its colour.
SKELETON: tuple[tuple[str, str], ...] = (
    ("nose", "left_eye"),
    ("nose", "right_eye"),
    ("left_eye", "left_ear"),
    ("right_eye", "right_ear"),
    ("left_shoulder", "right_shoulder"),
    ("left_shoulder", "left_elbow"),
    ("left_elbow", "left_wrist"),
    ("right_shoulder", "right_elbow"),
    ("right_elbow", "right_wrist"),
    ("left_shoulder", "left_hip"),
    ("right_shoulder", "right_hip"),
    ("left_hip", "right_hip"),
    ("left_hip", "left_knee"),
    ("left_knee", "left_ankle"),
    ("right_hip", "right_knee"),
    ("right_knee", "right_ankle"),
)

# RGB. The person's left is orange and their right is blue (as in MoveNet's own demos); joints
# and limbs on the midline (nose, shoulder and hip bars) are light green.
LEFT_RGB = (255, 140, 0)
RIGHT_RGB = (30, 144, 255)
CENTRE_RGB = (120, 230, 120)
CROP_RGB = (255, 230, 0)
BOX_RGB = (230, 230, 230)
# Below the threshold a joint is drawn at this opacity: still visible, clearly not trusted.
FADED_ALPHA = 0.35


def _side_colour(*names: str) -> tuple[int, int, int]:
    if all(name.startswith("left_") for name in names):
        return LEFT_RGB
    if all(name.startswith("right_") for name in names):
        return RIGHT_RGB
    if len(names) == 2 and names[0] == "nose":
        return _side_colour(names[1])
    return CENTRE_RGB


def _scale_px(height_px: int, width_px: int) -> int:
    """Line width that reads the same on a 320x240 thumbnail and a 4K photo."""
    return max(2, round(min(height_px, width_px) / 240))


def annotate(
    image_rgb: np.ndarray,
    poses: Sequence[Pose],
    crop: CropBox | None = None,
    score_threshold: float = 0.2,
) -> np.ndarray:
    """A copy of `image_rgb` (H, W, 3 uint8) with each pose's skeleton, its box and the crop box.

    Joints (and limbs touching one) scoring below `score_threshold` are drawn faded rather than
    hidden, so a viewer sees where the model was unsure. The result has the input's size.
    """
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"annotate needs an H x W x 3 uint8 image, got {image_rgb.shape} {image_rgb.dtype}")
    height_px, width_px = image_rgb.shape[:2]
    thickness = _scale_px(height_px, width_px)
    canvas = np.ascontiguousarray(image_rgb).copy()

    def px(x: float, y: float) -> tuple[int, int]:
        return round(x * width_px), round(y * height_px)

    if crop is not None:
        cv2.rectangle(
            canvas, px(crop.xmin, crop.ymin), px(crop.xmax, crop.ymax), CROP_RGB, max(1, thickness // 2), cv2.LINE_8
        )
    for pose in poses:
        if pose.bbox is not None:
            box = pose.bbox
            cv2.rectangle(canvas, px(box.xmin, box.ymin), px(box.xmax, box.ymax), BOX_RGB, 1, cv2.LINE_8)
            if pose.track_id is not None:
                label_at = (round(box.xmin * width_px) + 3, max(12, round(box.ymin * height_px) - 4))
                cv2.putText(canvas, f"#{pose.track_id}", label_at, cv2.FONT_HERSHEY_SIMPLEX, 0.5, BOX_RGB, 1)

    # Untrusted parts first, on a layer blended in at FADED_ALPHA; trusted parts then on top.
    if any(point.score < score_threshold for pose in poses for point in pose.keypoints):
        layer = canvas.copy()
        for pose in poses:
            _draw_pose(layer, pose, px, thickness, lambda trusted: not trusted, score_threshold)
        drawn = np.any(layer != canvas, axis=2)
        canvas[drawn] = (canvas[drawn] * (1 - FADED_ALPHA) + layer[drawn] * FADED_ALPHA).astype(np.uint8)
    for pose in poses:
        _draw_pose(canvas, pose, px, thickness, lambda trusted: trusted, score_threshold)
    return canvas


def _draw_pose(
    target: np.ndarray,
    pose: Pose,
    px: Callable[[float, float], tuple[int, int]],
    thickness: int,
    wanted: Callable[[bool], bool],
    score_threshold: float,
) -> None:
    """Draws the limbs, then the joints, whose trust (all scores >= threshold) `wanted` accepts."""
    by_name = {point.name: point for point in pose.keypoints}
    for first, second in SKELETON:
        a, b = by_name.get(first), by_name.get(second)
        if a is None or b is None or not wanted(a.score >= score_threshold and b.score >= score_threshold):
            continue
        cv2.line(target, px(a.x, a.y), px(b.x, b.y), _side_colour(first, second), thickness, cv2.LINE_AA)
    radius = thickness + 2
    for point in pose.keypoints:
        if point.name not in KEYPOINT_INDEX or not wanted(point.score >= score_threshold):
            continue
        centre = px(point.x, point.y)
        cv2.circle(target, centre, radius, _side_colour(point.name), -1, cv2.LINE_AA)
        cv2.circle(target, centre, radius, (0, 0, 0), 1, cv2.LINE_AA)


def encode_jpeg(image_rgb: np.ndarray, quality: int) -> bytes:
    """An RGB frame as JPEG bytes (the live view's stream and snapshots, the MQTT snapshot)."""
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image_rgb.shape} frame as JPEG")
    return bytes(data.tobytes())
