"""Multi-pose tracker: hand-computed OKS and IoU, ID continuity, expiry and the track limit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgepose.tracking import (
    BOUNDING_BOX_TRACKER_CONFIG,
    KEYPOINT_TRACKER_CONFIG,
    KeypointSimilarityParams,
    PoseTracker,
    TrackerConfig,
    iou_matrix,
    oks_matrix,
)

DT_S = 1.0 / 30.0


def person(center_y: float, center_x: float, score: float = 0.9) -> np.ndarray:
    """A (17, 3) stick figure 0.4 tall, 0.2 wide, centred at (center_y, center_x)."""
    rng = np.random.default_rng(0)  # the same shape for every person
    offsets = rng.uniform(-1.0, 1.0, size=(17, 2)) * np.array([0.2, 0.1])
    kps = np.empty((17, 3))
    kps[:, 0] = center_y + offsets[:, 0]
    kps[:, 1] = center_x + offsets[:, 1]
    kps[:, 2] = score
    return kps


def box_of(kps: np.ndarray) -> np.ndarray:
    return np.array([kps[:, 0].min(), kps[:, 1].min(), kps[:, 0].max(), kps[:, 1].max()])


def test_default_configs_are_tfjs_movenet_defaults() -> None:
    assert KEYPOINT_TRACKER_CONFIG.max_tracks == 18
    assert KEYPOINT_TRACKER_CONFIG.max_age_s == 1.0
    assert KEYPOINT_TRACKER_CONFIG.min_similarity == 0.2
    assert KEYPOINT_TRACKER_CONFIG.keypoint_params.keypoint_confidence_threshold == 0.3
    assert KEYPOINT_TRACKER_CONFIG.keypoint_params.min_num_keypoints == 4
    assert KEYPOINT_TRACKER_CONFIG.keypoint_params.keypoint_falloff[0] == 0.026
    assert KEYPOINT_TRACKER_CONFIG.keypoint_params.keypoint_falloff[11] == 0.107
    assert BOUNDING_BOX_TRACKER_CONFIG.similarity == "bounding_box"
    assert BOUNDING_BOX_TRACKER_CONFIG.min_similarity == 0.15


def test_oks_by_hand() -> None:
    # Track: 4 confident keypoints (nose, eyes, left ear) spanning a 0.2 x 0.1 box -> area 0.02.
    track = np.zeros((17, 3))
    track[0] = (0.5, 0.5, 0.9)
    track[1] = (0.4, 0.45, 0.9)
    track[2] = (0.4, 0.55, 0.9)
    track[3] = (0.6, 0.5, 0.9)
    det = track.copy()
    det[0, 1] += 0.01  # the nose moved 0.01 right; the rest stayed
    det[4] = (0.9, 0.9, 0.9)  # confident in the detection only: not compared
    area = 0.2 * 0.1 + 1e-6
    nose = math.exp(-(0.01**2) / (2 * area * (2 * 0.026) ** 2))
    expected = (nose + 3.0) / 4
    oks = oks_matrix(det[None], track[None], KeypointSimilarityParams())
    assert oks.shape == (1, 1)
    assert oks[0, 0] == pytest.approx(expected, rel=1e-12)
    # 0.01^2 / (2 * 0.020001 * 0.052^2) = 0.9245 -> exp = 0.3967 -> (0.3967 + 3) / 4
    assert expected == pytest.approx(0.8492, abs=1e-4)


def test_oks_is_zero_below_min_keypoints_and_threshold_is_inclusive() -> None:
    track = np.zeros((17, 3))
    track[:4] = (0.5, 0.5, 0.9)
    det = track.copy()
    det[3, 2] = 0.29  # only 3 keypoints confident in both
    assert oks_matrix(det[None], track[None], KeypointSimilarityParams())[0, 0] == 0.0
    det[3, 2] = 0.3  # compared with >=, as upstream
    assert oks_matrix(det[None], track[None], KeypointSimilarityParams())[0, 0] == pytest.approx(1.0)


def test_iou_by_hand() -> None:
    a = np.array([[0.0, 0.0, 0.5, 0.5]])
    b = np.array([[0.25, 0.25, 0.75, 0.75], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]])
    # overlap 0.0625; union 0.25 + 0.25 - 0.0625 = 0.4375; touching edges -> 0; identical -> 1
    np.testing.assert_allclose(iou_matrix(a, b), [[1 / 7, 0.0, 1.0]], rtol=1e-12)


@pytest.mark.parametrize("config", [KEYPOINT_TRACKER_CONFIG, BOUNDING_BOX_TRACKER_CONFIG])
def test_two_people_moving_slowly_keep_their_ids(config: TrackerConfig) -> None:
    tracker = PoseTracker(config)
    for frame in range(60):
        t_s = frame * DT_S
        left = person(0.5, 0.25 + 0.002 * frame)
        right = person(0.5, 0.75 - 0.002 * frame)
        kps = np.stack([left, right]) if frame % 2 else np.stack([right, left])
        boxes = np.stack([box_of(k) for k in kps])
        ids = tracker.update(kps, t_s, boxes=boxes)
        left_id, right_id = (ids[0], ids[1]) if frame % 2 else (ids[1], ids[0])
        assert (right_id, left_id) == (1, 2)
    assert tracker.track_ids() == {1, 2}


def test_someone_leaving_and_someone_else_entering_gets_a_new_id() -> None:
    tracker = PoseTracker()
    a, b = person(0.5, 0.2), person(0.5, 0.5)
    assert tracker.update(np.stack([a, b]), 0.0).tolist() == [1, 2]
    # A leaves; C walks in on the far right, nowhere near A's last place.
    c = person(0.5, 0.85)
    assert tracker.update(np.stack([b, c]), DT_S).tolist() == [2, 3]
    assert tracker.update(np.stack([c, b]), 2 * DT_S).tolist() == [3, 2]


def test_track_expires_after_max_age() -> None:
    tracker = PoseTracker()
    a = person(0.5, 0.3)
    assert tracker.update(a[None], 0.0).tolist() == [1]
    assert tracker.update(a[None], 1.0).tolist() == [1]  # exactly max_age: kept (<=)
    assert tracker.update(np.empty((0, 17, 3)), 1.5).tolist() == []
    assert tracker.track_ids() == {1}
    assert tracker.update(a[None], 2.01).tolist() == [2]  # 1.01 s unseen: expired, new ID


def test_max_tracks_drops_the_stalest() -> None:
    tracker = PoseTracker(TrackerConfig(max_tracks=2))
    a, b, c = person(0.5, 0.15), person(0.5, 0.5), person(0.5, 0.85)
    assert tracker.update(np.stack([a, b]), 0.0).tolist() == [1, 2]
    # C alone: tracks by freshness C(0.1), A(0.0), B(0.0); a stable sort keeps A before B; B is cut
    assert tracker.update(c[None], 0.1).tolist() == [3]
    assert tracker.track_ids() == {1, 3}
    assert tracker.update(np.stack([a, b]), 0.2).tolist() == [1, 4]


def test_higher_score_claims_the_track_first() -> None:
    tracker = PoseTracker()
    a = person(0.5, 0.5)
    tracker.update(a[None], 0.0)
    near = person(0.5, 0.51)
    nearer = person(0.5, 0.505)
    # "near" is listed first but scores higher, so it is matched first and takes ID 1
    ids = tracker.update(np.stack([nearer, near]), DT_S, scores=np.array([0.3, 0.8]))
    assert ids.tolist() == [2, 1]
    # without scores, input order decides
    tracker2 = PoseTracker()
    tracker2.update(a[None], 0.0)
    assert tracker2.update(np.stack([nearer, near]), DT_S).tolist() == [1, 2]


def test_too_few_confident_keypoints_start_a_new_track() -> None:
    tracker = PoseTracker()
    a = person(0.5, 0.5)
    tracker.update(a[None], 0.0)
    faint = a.copy()
    faint[3:, 2] = 0.1  # 3 confident keypoints < min_num_keypoints 4
    assert tracker.update(faint[None], DT_S).tolist() == [2]


def test_bounding_box_tracking_needs_boxes_and_reset_never_reuses_ids() -> None:
    tracker = PoseTracker(BOUNDING_BOX_TRACKER_CONFIG)
    a = person(0.5, 0.5)
    with pytest.raises(ValueError, match="needs boxes"):
        tracker.update(a[None], 0.0)
    assert tracker.update(a[None], 0.0, boxes=box_of(a)[None]).tolist() == [1]
    tracker.reset()
    assert tracker.track_ids() == frozenset()
    assert tracker.update(a[None], DT_S, boxes=box_of(a)[None]).tolist() == [2]
