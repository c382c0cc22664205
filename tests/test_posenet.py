"""PoseNet decoding on synthetic output tensors whose answers are known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgepose.inference.posenet import (
    POSE_CHAIN,
    decode_multiple_poses,
    decode_single_pose,
    posenet_preprocess_into,
)
from edgepose.pose import KEYPOINT_INDEX

GRID = 9
STRIDE_PX = 32
INPUT_PX = 257
BACKGROUND_LOGIT = -6.0  # sigmoid 0.0025: never a root at threshold 0.5


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def empty_outputs() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    heatmaps = np.full((1, GRID, GRID, 17), BACKGROUND_LOGIT, dtype=np.float32)
    offsets = np.zeros((1, GRID, GRID, 34), dtype=np.float32)
    fwd = np.zeros((1, GRID, GRID, 32), dtype=np.float32)
    bwd = np.zeros((1, GRID, GRID, 32), dtype=np.float32)
    return heatmaps, offsets, fwd, bwd


def test_preprocess_scales_to_minus_one_one() -> None:
    rgb = np.array([[[0, 127, 255], [128, 64, 1]]], dtype=np.uint8)
    out = np.empty((1, 1, 2, 3), dtype=np.float32)
    posenet_preprocess_into(rgb, out)
    expected = (rgb.astype(np.float64) - 127.5) / 127.5
    np.testing.assert_allclose(out[0], expected, rtol=0, atol=1e-7)
    assert out[0, 0, 0, 0] == -1.0
    assert out[0, 0, 0, 2] == 1.0
    with pytest.raises(ValueError, match="does not fit"):
        posenet_preprocess_into(rgb, np.empty((1, 2, 2, 3), dtype=np.float32))


def test_single_pose_is_argmax_cell_times_stride_plus_offset() -> None:
    heatmaps, offsets, _, _ = empty_outputs()
    expected = np.empty((17, 3))
    for k in range(17):
        cy, cx = k % GRID, (2 * k + 1) % GRID
        oy, ox = float(k - 8), float(8 - k) / 2
        logit = 1.0 + k / 10
        heatmaps[0, cy, cx, k] = logit
        heatmaps[0, (cy + 4) % GRID, cx, k] = logit - 0.5  # a lower second peak elsewhere
        offsets[0, cy, cx, k] = oy
        offsets[0, cy, cx, k + 17] = ox
        expected[k] = ((cy * 32 + oy) / 257, (cx * 32 + ox) / 257, sigmoid(logit))
    got = decode_single_pose(heatmaps, offsets)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    # e.g. keypoint 3: cell (3, 7), offset (-5, 2.5) -> y (96 - 5) / 257, x (224 + 2.5) / 257
    assert got[3, 0] == pytest.approx(91 / 257, rel=1e-6)
    assert got[3, 1] == pytest.approx(226.5 / 257, rel=1e-6)
    assert got[3, 2] == pytest.approx(sigmoid(1.3), rel=1e-6)


def test_single_pose_accepts_unbatched_and_other_input_sizes() -> None:
    heatmaps, offsets, _, _ = empty_outputs()
    heatmaps[0, 2, 3, :] = 4.0
    offsets[0, 2, 3, :17] = 1.0
    offsets[0, 2, 3, 17:] = -1.0
    got = decode_single_pose(heatmaps[0], offsets[0], input_height_px=353, input_width_px=257)
    np.testing.assert_allclose(got[:, 0], 65 / 353, rtol=1e-6)
    np.testing.assert_allclose(got[:, 1], 95 / 257, rtol=1e-6)


def test_traversal_follows_displacements_by_hand() -> None:
    heatmaps, offsets, fwd, bwd = empty_outputs()
    nose, left_eye, left_ear = KEYPOINT_INDEX["nose"], KEYPOINT_INDEX["left_eye"], KEYPOINT_INDEX["left_ear"]
    # root: nose at cell (4, 4), offset (3, -5) -> (131, 123) px
    heatmaps[0, 4, 4, nose] = 3.0
    offsets[0, 4, 4, nose] = 3.0
    offsets[0, 4, 4, nose + 17] = -5.0
    # edge 0 (nose -> left eye), forward, read at the nose's cell: (-30, +33) -> (101, 156) px,
    # nearest cell (round(3.16), round(4.875)) = (3, 5); the eye's offset there is (2, 1)
    assert POSE_CHAIN[0] == (nose, left_eye)
    fwd[0, 4, 4, 0] = -30.0
    fwd[0, 4, 4, 16] = 33.0
    offsets[0, 3, 5, left_eye] = 2.0
    offsets[0, 3, 5, left_eye + 17] = 1.0
    heatmaps[0, 3, 5, left_eye] = 0.0  # score 0.5 there
    poses = decode_multiple_poses(heatmaps, offsets, fwd, bwd)
    assert len(poses) == 1
    kps = poses[0].keypoints
    np.testing.assert_allclose(kps[nose], [131 / 257, 123 / 257, sigmoid(3.0)], rtol=1e-6)
    np.testing.assert_allclose(kps[left_eye], [98 / 257, 161 / 257, 0.5], rtol=1e-6)
    # edge 1 (left eye -> left ear) has zero displacement: the ear lands on the eye's cell (3, 5)
    np.testing.assert_allclose(kps[left_ear], [96 / 257, 160 / 257, sigmoid(BACKGROUND_LOGIT)], rtol=1e-6)


def test_backward_traversal_from_a_leaf_root() -> None:
    heatmaps, offsets, fwd, bwd = empty_outputs()
    wrist, elbow = KEYPOINT_INDEX["left_wrist"], KEYPOINT_INDEX["left_elbow"]
    edge = POSE_CHAIN.index((elbow, wrist))
    # root: wrist at cell (6, 2), offset 0 -> (192, 64) px; backward (-40, +10) -> (152, 74) -> cell (5, 2)
    heatmaps[0, 6, 2, wrist] = 2.0
    bwd[0, 6, 2, edge] = -40.0
    bwd[0, 6, 2, edge + 16] = 10.0
    offsets[0, 5, 2, elbow] = -4.0
    offsets[0, 5, 2, elbow + 17] = 6.0
    poses = decode_multiple_poses(heatmaps, offsets, fwd, bwd)
    np.testing.assert_allclose(poses[0].keypoints[wrist, :2], [192 / 257, 64 / 257], rtol=1e-6)
    np.testing.assert_allclose(poses[0].keypoints[elbow, :2], [156 / 257, 70 / 257], rtol=1e-6)


def _plant(
    outputs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    cells: list[tuple[int, int]],
    offset_px: tuple[float, float],
    logits: list[float],
) -> np.ndarray:
    """Write one person into the tensors: keypoint k at cells[k] * 32 + offset_px, displacements
    along every chain edge pointing exactly from part to part. Returns the (17, 2) px positions."""
    heatmaps, offsets, fwd, bwd = outputs
    pos: np.ndarray = np.array(cells, dtype=np.float64) * STRIDE_PX + np.array(offset_px)
    for k, (cy, cx) in enumerate(cells):
        heatmaps[0, cy, cx, k] = logits[k]
        offsets[0, cy, cx, k] = offset_px[0]
        offsets[0, cy, cx, k + 17] = offset_px[1]
    for edge, (parent, child) in enumerate(POSE_CHAIN):
        py, px = cells[parent]
        cy, cx = cells[child]
        fwd[0, py, px, edge], fwd[0, py, px, edge + 16] = pos[child] - pos[parent]
        bwd[0, cy, cx, edge], bwd[0, cy, cx, edge + 16] = pos[parent] - pos[child]
    return pos


def _figure(col_left: int, col_right: int) -> list[tuple[int, int]]:
    """Cells for a stick figure: head rows 0-1, shoulders 2, elbows 3, wrists 4, hips 5, knees 6, ankles 7."""
    # Parts may share a cell (the nose and the left ear here): each has its own heatmap channel.
    return [
        (1, col_left),  # nose
        (0, col_left),  # left eye
        (0, col_right),  # right eye
        (1, col_left),  # left ear
        (1, col_right),  # right ear
        (2, col_left),  # left shoulder
        (2, col_right),  # right shoulder
        (3, col_left),  # left elbow
        (3, col_right),  # right elbow
        (4, col_left),  # left wrist
        (4, col_right),  # right wrist
        (5, col_left),  # left hip
        (5, col_right),  # right hip
        (6, col_left),  # left knee
        (6, col_right),  # right knee
        (7, col_left),  # left ankle
        (7, col_right),  # right ankle
    ]


def test_two_people_are_decoded_once_each() -> None:
    outputs = empty_outputs()
    logits_a = [3.0] * 17
    logits_a[0] = 4.0  # A's nose is the best root of all
    logits_b = [2.0] * 17
    logits_b[KEYPOINT_INDEX["left_wrist"]] = 2.5  # B is grown from a wrist
    pos_a = _plant(outputs, _figure(2, 1), (5.0, -3.0), logits_a)
    pos_b = _plant(outputs, _figure(7, 6), (-7.0, 4.0), logits_b)
    poses = decode_multiple_poses(*outputs)
    # 34 local maxima above 0.5, but every root after each person's first is within 20 px (here
    # 0 px) of the same part of a pose already found.
    assert len(poses) == 2
    np.testing.assert_allclose(poses[0].keypoints[:, :2], pos_a / 257, rtol=1e-6)
    np.testing.assert_allclose(poses[1].keypoints[:, :2], pos_b / 257, rtol=1e-6)
    np.testing.assert_allclose(poses[0].keypoints[:, 2], [sigmoid(v) for v in logits_a], rtol=1e-6)
    np.testing.assert_allclose(poses[1].keypoints[:, 2], [sigmoid(v) for v in logits_b], rtol=1e-6)
    # no part of B lies near the same part of A, so both scores are plain means
    assert poses[0].score == pytest.approx((sigmoid(4.0) + 16 * sigmoid(3.0)) / 17, rel=1e-6)
    assert poses[1].score == pytest.approx((sigmoid(2.5) + 16 * sigmoid(2.0)) / 17, rel=1e-6)


def test_max_detections_and_threshold() -> None:
    outputs = empty_outputs()
    _plant(outputs, _figure(2, 1), (0.0, 0.0), [3.0] * 17)
    _plant(outputs, _figure(7, 6), (0.0, 0.0), [2.0] * 17)
    assert len(decode_multiple_poses(*outputs, max_detections=1)) == 1
    # sigmoid(2) = 0.881 < 0.9 <= sigmoid(3) = 0.953: only A has a root
    only_a = decode_multiple_poses(*outputs, score_threshold=0.9)
    assert len(only_a) == 1
    assert only_a[0].keypoints[0, 2] == pytest.approx(sigmoid(3.0), rel=1e-6)
    assert decode_multiple_poses(*outputs, score_threshold=0.99) == []


def test_instance_score_skips_parts_claimed_by_an_earlier_pose() -> None:
    outputs = empty_outputs()
    heatmaps, offsets, fwd, bwd = outputs
    nose, left_eye = KEYPOINT_INDEX["nose"], KEYPOINT_INDEX["left_eye"]
    # Pose 1 rooted at a nose at (4, 4); pose 2 at a nose at (4, 7), whose left eye is displaced
    # onto pose 1's left eye cell (4, 4): that eye is claimed, so pose 2 does not count it.
    heatmaps[0, 4, 4, nose] = 3.0
    heatmaps[0, 4, 7, nose] = 2.0
    heatmaps[0, 4, 4, left_eye] = 1.0
    fwd[0, 4, 7, 16] = -96.0  # edge 0 x displacement: (128, 224) -> (128, 128)
    poses = decode_multiple_poses(heatmaps, offsets, fwd, bwd)
    assert len(poses) == 2
    np.testing.assert_allclose(poses[1].keypoints[left_eye, :2], [128 / 257, 128 / 257], rtol=1e-6)
    assert poses[1].keypoints[left_eye, 2] == pytest.approx(sigmoid(1.0), rel=1e-6)
    # Pose 1 sits entirely at (128, 128). Pose 2's left eye, and its left ear reached from that eye,
    # land there too and are claimed; its other 15 parts sit at (128, 224), away from pose 1.
    bg = sigmoid(BACKGROUND_LOGIT)
    assert poses[1].score == pytest.approx((sigmoid(2.0) + 14 * bg) / 17, rel=1e-6)
    assert poses[0].score == pytest.approx((sigmoid(3.0) + sigmoid(1.0) + 15 * bg) / 17, rel=1e-6)


def test_rejects_wrong_shapes() -> None:
    heatmaps, offsets, fwd, bwd = empty_outputs()
    with pytest.raises(ValueError, match="offsets"):
        decode_single_pose(heatmaps, offsets[..., :17])
    with pytest.raises(ValueError, match="displacements_fwd"):
        decode_multiple_poses(heatmaps, offsets, fwd[..., :30], bwd)
