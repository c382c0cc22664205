"""PoseNet MobileNetV1 (posenet_mobilenet_v1_100_257x257_multi_kpt_stripped.tflite): pre- and post-processing.

The model takes float32 [1, 257, 257, 3] scaled to -1..1 and returns, on a 9x9 grid (output
stride 32): heatmap logits [1, 9, 9, 17], short-range offsets [1, 9, 9, 34] (17 y then 17 x, in
input pixels), and forward/backward displacements [1, 9, 9, 32] (16 y then 16 x, in input
pixels) along the edges of the part tree.

Single-pose decoding follows tfjs-models `posenet/src/single_pose/decode_single_pose.ts`: per
keypoint, the heatmap argmax cell times the stride plus that cell's offset. The TF Lite Raspberry
Pi example (`ml/posenet.py`) maps cells with `cell / 8 * 257` (32.125 px a cell, not the stride)
and truncates to int, which is up to about a pixel off; the stride is used here.

Multi-pose decoding is a port of tfjs-models `posenet/src/multi_pose/` (`decode_multiple_poses.ts`,
`build_part_with_score_queue.ts`, `decode_pose.ts`): local heatmap maxima above a threshold, in
descending score, each a root candidate unless within `nms_radius_px` of the same part of a pose
already found; from a root the other parts are reached by following the displacements along the
tree (backward edges towards the nose, then forward edges towards the limbs).

All returned coordinates are normalized to the model input (input pixels / input size), so the
letterbox `CropBox` the input was made from maps them to the frame with `geometry.box_to_frame`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepose.pose import KEYPOINT_INDEX, NUM_KEYPOINTS

INPUT_SIZE_PX = 257
OUTPUT_STRIDE_PX = 32
# tfjs-models posenet MULTI_PERSON_INFERENCE_CONFIG.
DEFAULT_MAX_DETECTIONS = 5
DEFAULT_SCORE_THRESHOLD = 0.5
DEFAULT_NMS_RADIUS_PX = 20.0
# tfjs kLocalMaximumRadius: a root candidate is the largest score in its 3x3 neighbourhood.
_LOCAL_MAXIMUM_RADIUS = 1

# tfjs posenet `poseChain`, (parent, child), rooted at the nose. Edge i uses displacement channel
# i (y) and i + 16 (x).
POSE_CHAIN: tuple[tuple[int, int], ...] = tuple(
    (KEYPOINT_INDEX[parent], KEYPOINT_INDEX[child])
    for parent, child in (
        ("nose", "left_eye"),
        ("left_eye", "left_ear"),
        ("nose", "right_eye"),
        ("right_eye", "right_ear"),
        ("nose", "left_shoulder"),
        ("left_shoulder", "left_elbow"),
        ("left_elbow", "left_wrist"),
        ("left_shoulder", "left_hip"),
        ("left_hip", "left_knee"),
        ("left_knee", "left_ankle"),
        ("nose", "right_shoulder"),
        ("right_shoulder", "right_elbow"),
        ("right_elbow", "right_wrist"),
        ("right_shoulder", "right_hip"),
        ("right_hip", "right_knee"),
        ("right_knee", "right_ankle"),
    )
)


def posenet_preprocess_into(rgb: np.ndarray, out: np.ndarray) -> None:
    """Write (v - 127.5) / 127.5 of uint8 RGB into float32 `out` (same shape, or with a batch of 1)."""
    target = out[0] if out.ndim == rgb.ndim + 1 and out.shape[0] == 1 else out
    if target.shape != rgb.shape:
        raise ValueError(f"output {out.shape} does not fit input {rgb.shape}")
    np.subtract(rgb, 127.5, out=target, casting="unsafe")
    np.divide(target, 127.5, out=target)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-logits)), dtype=np.float64)


def _unbatch(tensor: np.ndarray, channels: int, name: str) -> np.ndarray:
    arr = np.asarray(tensor, dtype=np.float64)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or arr.shape[2] != channels:
        shape = np.shape(tensor)
        raise ValueError(f"{name} must be [1, H, W, {channels}] or [H, W, {channels}], got {shape}")
    return arr


def _normalize(points_px: np.ndarray, input_height_px: int, input_width_px: int) -> np.ndarray:
    return points_px / np.array([input_height_px, input_width_px], dtype=np.float64)


def decode_single_pose(
    heatmaps: np.ndarray,
    offsets: np.ndarray,
    input_height_px: int = INPUT_SIZE_PX,
    input_width_px: int = INPUT_SIZE_PX,
    output_stride_px: int = OUTPUT_STRIDE_PX,
) -> np.ndarray:
    """(17, 3) [y, x, score], input-normalized: each keypoint at its heatmap's best cell plus offset."""
    logits = _unbatch(heatmaps, NUM_KEYPOINTS, "heatmaps")
    offs = _unbatch(offsets, 2 * NUM_KEYPOINTS, "offsets")
    grid_h, grid_w, _ = logits.shape
    # argmax over the logits: the same cell as over sigmoid scores, without float32 saturation ties.
    flat = logits.reshape(grid_h * grid_w, NUM_KEYPOINTS).argmax(axis=0)
    cell_y, cell_x = np.divmod(flat, grid_w)
    parts = np.arange(NUM_KEYPOINTS)
    out = np.empty((NUM_KEYPOINTS, 3))
    out[:, 0] = cell_y * output_stride_px + offs[cell_y, cell_x, parts]
    out[:, 1] = cell_x * output_stride_px + offs[cell_y, cell_x, parts + NUM_KEYPOINTS]
    out[:, :2] = _normalize(out[:, :2], input_height_px, input_width_px)
    out[:, 2] = _sigmoid(logits[cell_y, cell_x, parts])
    return out


@dataclass(frozen=True, eq=False)
class DecodedPose:
    keypoints: np.ndarray  # (17, 3) [y, x, score], input-normalized
    # Mean keypoint score, counting only parts not already claimed by an earlier pose.
    score: float


def _round_half_up(values: np.ndarray) -> np.ndarray:
    # JS Math.round, which tfjs uses; numpy rounds halves to even.
    return np.floor(values + 0.5).astype(np.int64)


class _Fields:
    """The model outputs of one image, in input pixels, with the lookups decoding needs."""

    def __init__(
        self,
        scores: np.ndarray,
        offsets: np.ndarray,
        displacements_fwd: np.ndarray,
        displacements_bwd: np.ndarray,
        output_stride_px: int,
    ) -> None:
        self.scores = scores
        self.offsets = offsets
        self.fwd = displacements_fwd
        self.bwd = displacements_bwd
        self.stride_px = output_stride_px
        self.grid_h, self.grid_w, _ = scores.shape
        self.num_edges = displacements_fwd.shape[2] // 2

    def position_px(self, cell_y: int, cell_x: int, part: int) -> np.ndarray:
        return np.array(
            [
                cell_y * self.stride_px + self.offsets[cell_y, cell_x, part],
                cell_x * self.stride_px + self.offsets[cell_y, cell_x, part + NUM_KEYPOINTS],
            ]
        )

    def nearest_cell(self, point_px: np.ndarray) -> tuple[int, int]:
        cell = _round_half_up(point_px / self.stride_px)
        return (
            int(np.clip(cell[0], 0, self.grid_h - 1)),
            int(np.clip(cell[1], 0, self.grid_w - 1)),
        )

    def traverse(
        self, edge: int, source_px: np.ndarray, target_part: int, displacements: np.ndarray
    ) -> tuple[np.ndarray, float]:
        """Follow `edge`'s displacement from a known part to `target_part`: (position_px, score)."""
        src_y, src_x = self.nearest_cell(source_px)
        at_source = displacements[src_y, src_x]
        displacement = np.array([at_source[edge], at_source[self.num_edges + edge]])
        cell_y, cell_x = self.nearest_cell(source_px + displacement)
        return self.position_px(cell_y, cell_x, target_part), float(self.scores[cell_y, cell_x, target_part])


def _decode_pose(
    fields: _Fields, root_part: int, root_cell: tuple[int, int], root_score: float
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (17, 2) in input px and scores (17,) of the pose grown from one root part."""
    positions = np.zeros((NUM_KEYPOINTS, 2))
    scores = np.zeros(NUM_KEYPOINTS)
    known = np.zeros(NUM_KEYPOINTS, dtype=bool)
    positions[root_part] = fields.position_px(root_cell[0], root_cell[1], root_part)
    scores[root_part] = root_score
    known[root_part] = True
    # Towards the root first (child -> parent, backward displacements), from the leaves' end of the
    # chain, then away from it (parent -> child, forward displacements), exactly as upstream orders it.
    for edge in reversed(range(len(POSE_CHAIN))):
        parent, child = POSE_CHAIN[edge]
        if known[child] and not known[parent]:
            positions[parent], scores[parent] = fields.traverse(edge, positions[child], parent, fields.bwd)
            known[parent] = True
    for edge in range(len(POSE_CHAIN)):
        parent, child = POSE_CHAIN[edge]
        if known[parent] and not known[child]:
            positions[child], scores[child] = fields.traverse(edge, positions[parent], child, fields.fwd)
            known[child] = True
    return positions, scores


def _root_candidates(scores: np.ndarray, score_threshold: float) -> list[tuple[int, int, int, float]]:
    """Local maxima (y, x, part, score) at or above the threshold, best first; ties in scan order."""
    r = _LOCAL_MAXIMUM_RADIUS
    padded = np.pad(scores, ((r, r), (r, r), (0, 0)), constant_values=-np.inf)
    grid_h, grid_w, _ = scores.shape
    neighbourhood_max = np.full(scores.shape, -np.inf)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            np.maximum(neighbourhood_max, padded[dy : dy + grid_h, dx : dx + grid_w], out=neighbourhood_max)
    # Upstream rejects a cell only if a neighbour is strictly greater, so plateaus give several roots.
    ys, xs, parts = np.nonzero((scores >= score_threshold) & (scores >= neighbourhood_max))
    found = scores[ys, xs, parts]
    order = np.argsort(-found, kind="stable")
    return [(int(ys[i]), int(xs[i]), int(parts[i]), float(found[i])) for i in order]


def _claimed(poses_px: list[np.ndarray], point_px: np.ndarray, part: int, nms_radius_sq_px: float) -> bool:
    return any(float(((pose[part] - point_px) ** 2).sum()) <= nms_radius_sq_px for pose in poses_px)


def decode_multiple_poses(
    heatmaps: np.ndarray,
    offsets: np.ndarray,
    displacements_fwd: np.ndarray,
    displacements_bwd: np.ndarray,
    input_height_px: int = INPUT_SIZE_PX,
    input_width_px: int = INPUT_SIZE_PX,
    output_stride_px: int = OUTPUT_STRIDE_PX,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    nms_radius_px: float = DEFAULT_NMS_RADIUS_PX,
) -> list[DecodedPose]:
    """Up to `max_detections` poses in decreasing root-score order (tfjs `decodeMultiplePoses`)."""
    if nms_radius_px <= 0:
        raise ValueError(f"nms_radius_px must be positive, got {nms_radius_px}")
    num_edges = len(POSE_CHAIN)
    fields = _Fields(
        scores=_sigmoid(_unbatch(heatmaps, NUM_KEYPOINTS, "heatmaps")),
        offsets=_unbatch(offsets, 2 * NUM_KEYPOINTS, "offsets"),
        displacements_fwd=_unbatch(displacements_fwd, 2 * num_edges, "displacements_fwd"),
        displacements_bwd=_unbatch(displacements_bwd, 2 * num_edges, "displacements_bwd"),
        output_stride_px=output_stride_px,
    )
    nms_radius_sq_px = nms_radius_px * nms_radius_px
    poses_px: list[np.ndarray] = []
    poses: list[DecodedPose] = []
    for cell_y, cell_x, part, score in _root_candidates(fields.scores, score_threshold):
        if len(poses) >= max_detections:
            break
        root_px = fields.position_px(cell_y, cell_x, part)
        if _claimed(poses_px, root_px, part, nms_radius_sq_px):
            continue
        positions_px, scores = _decode_pose(fields, part, (cell_y, cell_x), score)
        claimed = [_claimed(poses_px, positions_px[k], k, nms_radius_sq_px) for k in range(NUM_KEYPOINTS)]
        unclaimed_score_sum = float(scores[~np.array(claimed, dtype=bool)].sum())
        keypoints = np.empty((NUM_KEYPOINTS, 3))
        keypoints[:, :2] = _normalize(positions_px, input_height_px, input_width_px)
        keypoints[:, 2] = scores
        poses.append(DecodedPose(keypoints=keypoints, score=unclaimed_score_sum / NUM_KEYPOINTS))
        poses_px.append(positions_px)
    return poses
