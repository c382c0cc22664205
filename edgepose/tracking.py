"""Keeps person IDs across frames for multi-pose models: greedy matching on OKS or box IoU.

Port of tfjs-models `pose-detection/src/calculators/{tracker,keypoint_tracker,bounding_box_tracker}.ts`,
which the TF Lite Raspberry Pi example (`lite/examples/pose_estimation/raspberry_pi/tracker/`)
also ports. Defaults are tfjs's `DEFAULT_KEYPOINT_TRACKER_CONFIG` and
`DEFAULT_BOUNDING_BOX_TRACKER_CONFIG` (`pose-detection/src/movenet/constants.ts`): max 18 tracks,
max age 1 s, min similarity 0.2 (keypoints) or 0.15 (boxes). The Raspberry Pi example's own config
(max_age 1000 * 1000 "ms", min_similarity 0.4, and OKS on integer pixel coordinates) is not used:
its max_age is really 1000 s, and OKS is defined on normalized coordinates.

Each frame: drop tracks older than max age, score every detection against every track, walk the
detections from most to least confident giving each the unclaimed track it resembles most (if at
least `min_similarity`), start new tracks for the rest, then keep the `max_tracks` freshest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from edgepose.pose import NUM_KEYPOINTS

# Per-keypoint OKS falloff (COCO sigmas, https://cocodataset.org/#keypoints-eval), COCO order.
# fmt: off
COCO_KEYPOINT_FALLOFF: tuple[float, ...] = (
    0.026,                       # nose
    0.025, 0.025, 0.035, 0.035,  # eyes, ears
    0.079, 0.079, 0.072, 0.072,  # shoulders, elbows
    0.062, 0.062, 0.107, 0.107,  # wrists, hips
    0.087, 0.087, 0.089, 0.089,  # knees, ankles
)
# fmt: on

Similarity = Literal["keypoint", "bounding_box"]


@dataclass(frozen=True)
class KeypointSimilarityParams:
    """OKS settings: which keypoints count, how fast similarity falls off with distance."""

    # A keypoint is compared only if both the detection's and the track's score reach this.
    keypoint_confidence_threshold: float = 0.3
    keypoint_falloff: tuple[float, ...] = COCO_KEYPOINT_FALLOFF
    # Fewer comparable keypoints than this and the similarity is 0.
    min_num_keypoints: int = 4

    def __post_init__(self) -> None:
        if len(self.keypoint_falloff) != NUM_KEYPOINTS:
            count = len(self.keypoint_falloff)
            raise ValueError(f"keypoint_falloff needs {NUM_KEYPOINTS} values, got {count}")


@dataclass(frozen=True)
class TrackerConfig:
    similarity: Similarity = "keypoint"
    max_tracks: int = 18  # tfjs: 3x the 6 detections of MultiPose
    max_age_s: float = 1.0
    min_similarity: float = 0.2
    keypoint_params: KeypointSimilarityParams = field(default_factory=KeypointSimilarityParams)

    def __post_init__(self) -> None:
        if self.similarity not in ("keypoint", "bounding_box"):
            raise ValueError(f"similarity must be 'keypoint' or 'bounding_box', got {self.similarity!r}")
        if self.max_tracks < 1:
            raise ValueError(f"max_tracks must be at least 1, got {self.max_tracks}")
        if self.max_age_s < 0:
            raise ValueError(f"max_age_s must not be negative, got {self.max_age_s}")


KEYPOINT_TRACKER_CONFIG = TrackerConfig()
BOUNDING_BOX_TRACKER_CONFIG = TrackerConfig(similarity="bounding_box", min_similarity=0.15)


def _keypoint_box_area(track_keypoints: np.ndarray, threshold: float) -> float:
    """Area of the box around a track's confident keypoints (tfjs `area`).

    Seeding min with 1 and max with 0, as upstream does, gives area 1 when no keypoint qualifies.
    Upstream selects with a strict `>` here, though OKS itself compares with `>=`.
    """
    valid = track_keypoints[track_keypoints[:, 2] > threshold]
    y_min = min(1.0, float(valid[:, 0].min(initial=1.0)))
    y_max = max(0.0, float(valid[:, 0].max(initial=0.0)))
    x_min = min(1.0, float(valid[:, 1].min(initial=1.0)))
    x_max = max(0.0, float(valid[:, 1].max(initial=0.0)))
    return (x_max - x_min) * (y_max - y_min)


def oks_matrix(
    detection_keypoints: np.ndarray, track_keypoints: np.ndarray, params: KeypointSimilarityParams
) -> np.ndarray:
    """(N, M) object keypoint similarity between (N, 17, 3) detections and (M, 17, 3) tracks.

    OKS = mean over keypoints confident in both of exp(-d^2 / (2 * area * (2 * falloff)^2)),
    with d in frame-normalized units and area that of the track's keypoint box.
    """
    det = np.asarray(detection_keypoints, dtype=np.float64).reshape(-1, NUM_KEYPOINTS, 3)
    trk = np.asarray(track_keypoints, dtype=np.float64).reshape(-1, NUM_KEYPOINTS, 3)
    threshold = params.keypoint_confidence_threshold
    areas = np.array([_keypoint_box_area(t, threshold) for t in trk]) + 1e-6  # (M,)
    falloff_sq = (2.0 * np.asarray(params.keypoint_falloff)) ** 2  # (17,)
    d_sq = ((det[:, None, :, :2] - trk[None, :, :, :2]) ** 2).sum(axis=-1)  # (N, M, 17)
    valid = (det[:, None, :, 2] >= threshold) & (trk[None, :, :, 2] >= threshold)  # (N, M, 17)
    per_keypoint = np.exp(-d_sq / (2.0 * areas[None, :, None] * falloff_sq[None, None, :]))
    num_valid = valid.sum(axis=-1)
    total = np.where(valid, per_keypoint, 0.0).sum(axis=-1)
    oks = np.divide(total, num_valid, out=np.zeros_like(total), where=num_valid > 0)
    return np.where(num_valid >= params.min_num_keypoints, oks, 0.0)


def iou_matrix(detection_boxes: np.ndarray, track_boxes: np.ndarray) -> np.ndarray:
    """(N, M) intersection over union of (N, 4) and (M, 4) [ymin, xmin, ymax, xmax] boxes."""
    det = np.asarray(detection_boxes, dtype=np.float64).reshape(-1, 4)
    trk = np.asarray(track_boxes, dtype=np.float64).reshape(-1, 4)
    y0 = np.maximum(det[:, None, 0], trk[None, :, 0])
    x0 = np.maximum(det[:, None, 1], trk[None, :, 1])
    y1 = np.minimum(det[:, None, 2], trk[None, :, 2])
    x1 = np.minimum(det[:, None, 3], trk[None, :, 3])
    overlaps = (y1 > y0) & (x1 > x0)
    intersection = np.where(overlaps, (y1 - y0) * (x1 - x0), 0.0)
    det_area = (det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1])
    trk_area = (trk[:, 2] - trk[:, 0]) * (trk[:, 3] - trk[:, 1])
    union = det_area[:, None] + trk_area[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=overlaps & (union > 0))


@dataclass
class Track:
    track_id: int
    keypoints: np.ndarray  # (17, 3) frame-normalized, as last matched
    box: np.ndarray | None  # (4,) [ymin, xmin, ymax, xmax], as last matched
    last_timestamp_s: float


class PoseTracker:
    """Assigns a stable integer ID (from 1, never reused) to each detected person across frames."""

    def __init__(self, config: TrackerConfig = KEYPOINT_TRACKER_CONFIG) -> None:
        self._config = config
        self._tracks: list[Track] = []
        self._next_id = 1

    @property
    def tracks(self) -> tuple[Track, ...]:
        """Live tracks, freshest first."""
        return tuple(self._tracks)

    def track_ids(self) -> frozenset[int]:
        return frozenset(t.track_id for t in self._tracks)

    def reset(self) -> None:
        """Forget all tracks. IDs keep counting up, so a consumer never sees an old ID reused."""
        self._tracks = []

    def update(
        self,
        keypoints: np.ndarray,
        timestamp_s: float,
        boxes: np.ndarray | None = None,
        scores: np.ndarray | None = None,
    ) -> np.ndarray:
        """Track IDs, one per detection in input order, for (N, 17, 3) frame-normalized keypoints.

        `boxes` (N, 4) are required for bounding-box similarity and stored either way. Detections
        claim tracks in descending `scores` order (upstream assumes the input is already sorted);
        without scores, in input order.
        """
        kps = np.asarray(keypoints, dtype=np.float64).reshape(-1, NUM_KEYPOINTS, 3)
        count = kps.shape[0]
        box_arr = None if boxes is None else np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if box_arr is not None and box_arr.shape[0] != count:
            raise ValueError(f"got {box_arr.shape[0]} boxes for {count} detections")
        if box_arr is None and self._config.similarity == "bounding_box":
            raise ValueError("bounding-box tracking needs boxes")
        if scores is not None and np.shape(scores) != (count,):
            raise ValueError(f"got scores of shape {np.shape(scores)} for {count} detections")

        self._tracks = [t for t in self._tracks if timestamp_s - t.last_timestamp_s <= self._config.max_age_s]
        similarity = self._similarity(kps, box_arr)
        order = range(count) if scores is None else np.argsort(-np.asarray(scores), kind="stable")
        ids = np.zeros(count, dtype=np.int64)
        unmatched_tracks = list(range(len(self._tracks)))
        new_tracks: list[Track] = []
        for det in (int(i) for i in order):
            best_track = -1
            best_similarity = -1.0
            for track_index in unmatched_tracks:
                s = float(similarity[det, track_index])
                if s >= self._config.min_similarity and s > best_similarity:
                    best_track, best_similarity = track_index, s
            det_box = None if box_arr is None else box_arr[det].copy()
            if best_track >= 0:
                track = self._tracks[best_track]
                track.keypoints = kps[det].copy()
                track.box = det_box
                track.last_timestamp_s = timestamp_s
                ids[det] = track.track_id
                unmatched_tracks.remove(best_track)
            else:
                new_tracks.append(Track(self._new_id(), kps[det].copy(), det_box, timestamp_s))
                ids[det] = new_tracks[-1].track_id
        # Sorted stably, freshest first, then cut: the stalest tracks go when there are too many.
        self._tracks = sorted(self._tracks + new_tracks, key=lambda t: -t.last_timestamp_s)
        del self._tracks[self._config.max_tracks :]
        return ids

    def _similarity(self, keypoints: np.ndarray, boxes: np.ndarray | None) -> np.ndarray:
        if not self._tracks or keypoints.shape[0] == 0:
            return np.zeros((keypoints.shape[0], len(self._tracks)))
        if self._config.similarity == "keypoint":
            track_kps = np.stack([t.keypoints for t in self._tracks])
            return oks_matrix(keypoints, track_kps, self._config.keypoint_params)
        assert boxes is not None  # checked in update
        # A track made while boxes were missing cannot match on boxes: NaN overlaps nothing.
        track_boxes = np.stack([np.full(4, np.nan) if t.box is None else t.box for t in self._tracks])
        return iou_matrix(boxes, track_boxes)

    def _new_id(self) -> int:
        track_id = self._next_id
        self._next_id += 1
        return track_id
