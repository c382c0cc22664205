"""MoveNet MultiPose decoding, input sizing and input box, against hand-built tensors."""

from __future__ import annotations

import numpy as np
import pytest

from edgepose.geometry import box_to_frame, paste_region
from edgepose.inference.multipose import (
    decode_multipose,
    detections_to_frame,
    multipose_box,
    multipose_input_size,
)
from edgepose.pose import CropBox


def _row(base: float, box: tuple[float, float, float, float], score: float) -> np.ndarray:
    """One 56-value instance: keypoint k at (base + k/100, base + k/100 + 0.005) with score 0.5 + k/100."""
    row = np.zeros(56)
    for k in range(17):
        row[3 * k : 3 * k + 3] = (base + k / 100, base + k / 100 + 0.005, 0.5 + k / 100)
    row[51:55] = box
    row[55] = score
    return row


def _output() -> np.ndarray:
    out = np.zeros((1, 6, 56), dtype=np.float32)
    out[0, 0] = _row(0.10, (0.1, 0.2, 0.6, 0.4), 0.30)
    out[0, 1] = _row(0.05, (0.0, 0.0, 0.1, 0.1), 0.05)  # below every threshold
    out[0, 2] = _row(0.40, (0.3, 0.5, 0.9, 0.8), 0.80)
    out[0, 3] = _row(0.20, (0.2, 0.2, 0.4, 0.4), 0.11)  # exactly at the TF example's threshold
    return out


def test_decode_keeps_poses_at_or_above_threshold_best_first() -> None:
    det = decode_multipose(_output())
    assert len(det) == 3
    np.testing.assert_allclose(det.scores, [0.80, 0.30, 0.11], rtol=1e-6)
    assert det.keypoints.shape == (3, 17, 3)
    assert det.boxes.shape == (3, 4)
    # row 2 first: keypoint 5 at (0.45, 0.455) score 0.55; box as written
    np.testing.assert_allclose(det.keypoints[0, 5], [0.45, 0.455, 0.55], rtol=1e-6)
    np.testing.assert_allclose(det.keypoints[1, 16], [0.26, 0.265, 0.66], rtol=1e-6)
    np.testing.assert_allclose(det.boxes[0], [0.3, 0.5, 0.9, 0.8], rtol=1e-6)
    np.testing.assert_allclose(det.boxes[1], [0.1, 0.2, 0.6, 0.4], rtol=1e-6)


def test_decode_threshold_is_configurable_and_may_keep_nothing() -> None:
    assert len(decode_multipose(_output(), min_pose_score=0.25)) == 2
    empty = decode_multipose(_output(), min_pose_score=0.9)
    assert len(empty) == 0
    assert empty.keypoints.shape == (0, 17, 3)
    assert empty.boxes.shape == (0, 4)


def test_decode_rejects_other_shapes() -> None:
    with pytest.raises(ValueError, match="56"):
        decode_multipose(np.zeros((1, 1, 17, 3)))


@pytest.mark.parametrize(
    ("frame_hw", "expected_hw"),
    [
        ((480, 640), (192, 256)),  # 256 * 480/640 = 192, already /32
        ((1080, 1920), (160, 256)),  # 144 -> 160
        ((720, 1280), (160, 256)),  # 144 -> 160
        ((640, 480), (256, 192)),  # portrait
        ((500, 500), (256, 256)),
        ((100, 2000), (32, 256)),  # 12.8 -> 13 -> 32, never below one band
        ((1000, 1561), (192, 256)),  # 163.997 -> 164 -> 192
        ((130, 1024), (64, 256)),  # exactly 32.5: tfjs Math.round goes up to 33 -> 64 (Python round: 32)
    ],
)
def test_input_size(frame_hw: tuple[int, int], expected_hw: tuple[int, int]) -> None:
    assert multipose_input_size(*frame_hw) == expected_hw


def test_input_size_rounds_before_padding() -> None:
    # 256 * 375 / 1500 = 64.0 exactly -> 64; 256 * 376/1500 = 64.17 -> rounds to 64 (ceil would give 96)
    assert multipose_input_size(376, 1500) == (64, 256)
    assert multipose_input_size(480, 640, long_side_px=320) == (256, 320)
    with pytest.raises(ValueError, match="multiple of 32"):
        multipose_input_size(480, 640, long_side_px=250)


def test_box_is_the_frame_when_aspects_match() -> None:
    assert multipose_box(480, 640, 192, 256) == CropBox(ymin=0.0, xmin=0.0, ymax=1.0, xmax=1.0)


def test_box_pads_evenly_to_the_input_aspect() -> None:
    # 1920x1080 into 256x160: scale 256/1920; the box is 160/scale = 1200 px tall, 60 px each side
    box = multipose_box(1080, 1920, 160, 256)
    assert (box.ymin, box.xmin, box.ymax, box.xmax) == pytest.approx((-60 / 1080, 0.0, 1 + 60 / 1080, 1.0))
    # In the input that is 8 rows of padding top and bottom around 144 rows of picture.
    region = paste_region(box, 1080, 1920, 160, 256)
    assert (region.dst_y0, region.dst_y1, region.dst_x0, region.dst_x1) == (8, 152, 0, 256)
    # The input's row 8 is the frame's top edge; its centre is the frame's centre.
    np.testing.assert_allclose(box_to_frame(np.array([8 / 160, 0.0]), box), [0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(box_to_frame(np.array([0.5, 0.5]), box), [0.5, 0.5], atol=1e-12)


def test_box_for_portrait_pads_left_and_right() -> None:
    # 480 wide x 1000 tall into 256 x 128: scale 0.256; box 500 px wide, 10 px each side
    box = multipose_box(1000, 480, 256, 128)
    assert (box.ymin, box.xmin, box.ymax, box.xmax) == pytest.approx((0.0, -10 / 480, 1.0, 1 + 10 / 480))


def test_detections_to_frame_maps_keypoints_and_boxes() -> None:
    det = decode_multipose(_output(), min_pose_score=0.5)
    box = multipose_box(1080, 1920, 160, 256)
    framed = detections_to_frame(det, box)
    # y' = -60/1080 + y * 1200/1080, x unchanged; scores untouched
    expected_y = -60 / 1080 + 0.45 * 1200 / 1080
    np.testing.assert_allclose(framed.keypoints[0, 5], [expected_y, 0.455, 0.55], rtol=1e-6)
    np.testing.assert_allclose(
        framed.boxes[0],
        [-60 / 1080 + 0.3 * 1200 / 1080, 0.5, -60 / 1080 + 0.9 * 1200 / 1080, 0.8],
        rtol=1e-6,
    )
    np.testing.assert_allclose(framed.scores, det.scores)
