"""Smart-crop tests. Every expected box is worked out by hand in pixels on a 480x640 frame."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from edgepose.crop import (
    SECOND_PASS_MIN_KEYPOINTS,
    STABLE_AFTER_FRAMES,
    STABLE_RATIOS,
    CropRegionTracker,
    acquisition_box,
    determine_crop_region,
    low_pass_box,
    refine_crops,
    second_pass_box,
    torso_and_body_range,
    torso_visible,
)
from edgepose.geometry import letterbox_box
from edgepose.pose import KEYPOINT_INDEX, CropBox

H_PX, W_PX = 480, 640


def keypoints_px(points_px: dict[str, tuple[float, float]], score: float = 0.9) -> np.ndarray:
    """(17, 3) frame-normalized keypoints; the named ones at (y_px, x_px) with `score`, the rest at 0."""
    out = np.zeros((17, 3))
    for name, (y_px, x_px) in points_px.items():
        out[KEYPOINT_INDEX[name]] = (y_px / H_PX, x_px / W_PX, score)
    return out


# Hips at y=240 around x=320 (centre (240, 320)); shoulders 100 px up, 30 px either side of the centre.
TORSO_PX = {
    "left_hip": (240.0, 300.0),
    "right_hip": (240.0, 340.0),
    "left_shoulder": (140.0, 290.0),
    "right_shoulder": (140.0, 350.0),
}


def box_px(ymin_px: float, xmin_px: float, ymax_px: float, xmax_px: float) -> CropBox:
    return CropBox(ymin=ymin_px / H_PX, xmin=xmin_px / W_PX, ymax=ymax_px / H_PX, xmax=xmax_px / W_PX)


def assert_box(actual: CropBox, expected: CropBox) -> None:
    assert (actual.ymin, actual.xmin, actual.ymax, actual.xmax) == pytest.approx(
        (expected.ymin, expected.xmin, expected.ymax, expected.xmax), abs=1e-12
    )


def test_torso_only_crop_is_torso_extent_times_1_9() -> None:
    kps = keypoints_px(TORSO_PX)
    # torso reach: y 100 px, x 30 px -> half = max(1.9*100, 1.9*30, 1.2*100, 1.2*30) = 190 px
    box = determine_crop_region(kps, H_PX, W_PX)
    assert_box(box, box_px(240 - 190, 320 - 190, 240 + 190, 320 + 190))
    # square in pixels
    assert (box.ymax - box.ymin) * H_PX == pytest.approx((box.xmax - box.xmin) * W_PX)


def test_outstretched_arms_enlarge_the_crop() -> None:
    """Regression for the RPi example bug: its body loop measured the right hip, never the wrists.

    With that bug the body reach is the right hip's (0 px, 20 px), the torso wins and the box stays
    the 190 px half of the test above. Measured properly, the wrists 250 px from the centre give
    half = 1.2 * 250 = 300 px.
    """
    kps = keypoints_px({**TORSO_PX, "left_wrist": (240.0, 570.0), "right_wrist": (240.0, 70.0)})
    reach = torso_and_body_range(kps, 240.0, 320.0, H_PX, W_PX)
    assert (reach.torso_y_px, reach.torso_x_px) == pytest.approx((100.0, 30.0))
    assert (reach.body_y_px, reach.body_x_px) == pytest.approx((100.0, 250.0))
    box = determine_crop_region(kps, H_PX, W_PX)
    assert_box(box, box_px(240 - 300, 320 - 300, 240 + 300, 320 + 300))


def test_ankles_far_below_enlarge_the_crop_vertically() -> None:
    # ankles 230 px below the hip centre -> half = 1.2 * 230 = 276 px (> 190 from the torso)
    kps = keypoints_px({**TORSO_PX, "left_ankle": (470.0, 310.0), "right_ankle": (470.0, 330.0)})
    assert_box(determine_crop_region(kps, H_PX, W_PX), box_px(240 - 276, 320 - 276, 240 + 276, 320 + 276))


def test_body_joints_below_threshold_are_ignored_and_threshold_itself_counts() -> None:
    kps = keypoints_px({**TORSO_PX, "left_wrist": (240.0, 570.0)})
    kps[KEYPOINT_INDEX["left_wrist"], 2] = 0.19
    assert_box(determine_crop_region(kps, H_PX, W_PX), box_px(50, 130, 430, 510))
    kps[KEYPOINT_INDEX["left_wrist"], 2] = 0.2  # upstream skips only `< 0.2`
    assert_box(determine_crop_region(kps, H_PX, W_PX), box_px(240 - 300, 20, 240 + 300, 620))


def test_torso_visible_needs_a_hip_and_a_shoulder_above_0_2() -> None:
    one_each = keypoints_px({"left_hip": TORSO_PX["left_hip"], "right_shoulder": TORSO_PX["right_shoulder"]})
    assert torso_visible(one_each)
    hips_only = keypoints_px({"left_hip": TORSO_PX["left_hip"], "right_hip": TORSO_PX["right_hip"]})
    assert not torso_visible(hips_only)
    shoulders_only = keypoints_px(
        {"left_shoulder": TORSO_PX["left_shoulder"], "right_shoulder": TORSO_PX["right_shoulder"]}
    )
    assert not torso_visible(shoulders_only)
    at_threshold = keypoints_px(TORSO_PX, score=0.2)  # strict `>` upstream
    assert not torso_visible(at_threshold)


def test_falls_back_to_letterbox_when_torso_not_visible() -> None:
    kps = keypoints_px(TORSO_PX, score=0.1)
    box = determine_crop_region(kps, H_PX, W_PX)
    # 480x640 letterbox: 80 px of padding above and below
    assert_box(box, CropBox(ymin=-80 / 480, xmin=0.0, ymax=1 + 80 / 480, xmax=1.0))
    assert box == letterbox_box(H_PX, W_PX)


def test_falls_back_to_letterbox_when_body_larger_than_frame() -> None:
    # hip centre (240, 100), shoulders 200 px up -> half 380 px; the farthest edge (540 px) does
    # not clamp it, and 380 > max(640, 480) / 2 = 320 -> whole frame
    kps = keypoints_px(
        {
            "left_hip": (240.0, 80.0),
            "right_hip": (240.0, 120.0),
            "left_shoulder": (40.0, 80.0),
            "right_shoulder": (40.0, 120.0),
        }
    )
    assert determine_crop_region(kps, H_PX, W_PX) == letterbox_box(H_PX, W_PX)


def test_half_is_clamped_to_the_farthest_edge() -> None:
    # hip centre (240, 320), shoulders 180 px up -> 1.9 * 180 = 342 px, clamped to max edge distance 320
    kps = keypoints_px(
        {
            "left_hip": (240.0, 310.0),
            "right_hip": (240.0, 330.0),
            "left_shoulder": (60.0, 310.0),
            "right_shoulder": (60.0, 330.0),
        }
    )
    assert_box(determine_crop_region(kps, H_PX, W_PX), box_px(240 - 320, 0, 240 + 320, 640))


def test_clamped_half_keeps_the_box_on_the_hips_when_it_just_fits() -> None:
    """The clamp matters when the farthest edge is exactly half the long side away: the hips sit on the
    vertical centre line (x = 320 of 640) but above the middle (y = 200 of 480).

    Shoulders 180 px up -> 1.9 * 180 = 342 px, clamped to max(320, 320, 200, 280) = 320 px = 640 / 2,
    which is not more than half the long side: a 640 px square centred on the hips, 40 px above the
    letterbox's. Unclamped, 342 px would exceed it and fall back to the letterbox (-80..560).
    """
    kps = keypoints_px(
        {
            "left_hip": (200.0, 310.0),
            "right_hip": (200.0, 330.0),
            "left_shoulder": (20.0, 310.0),
            "right_shoulder": (20.0, 330.0),
        }
    )
    box = determine_crop_region(kps, H_PX, W_PX)
    assert_box(box, box_px(200 - 320, 0, 200 + 320, 640))
    assert box != letterbox_box(H_PX, W_PX)


def test_tracker_first_box_is_unfiltered_then_low_passed_at_0_9() -> None:
    tracker = CropRegionTracker(stable_ratios=None)  # upstream's margins on every frame
    assert tracker.box is None
    assert tracker.box_for_frame(H_PX, W_PX) == letterbox_box(H_PX, W_PX)
    first = tracker.next_box(keypoints_px(TORSO_PX), H_PX, W_PX)
    assert_box(first, box_px(50, 130, 430, 510))
    assert tracker.box_for_frame(H_PX, W_PX) == first

    # The person moves 100 px right: the raw crop would be (50, 230, 430, 610).
    moved = {name: (y, x + 100.0) for name, (y, x) in TORSO_PX.items()}
    second = tracker.next_box(keypoints_px(moved), H_PX, W_PX)
    # 130 + 0.9 * 100 = 220, 510 + 0.9 * 100 = 600
    assert_box(second, box_px(50, 220, 430, 600))
    third = tracker.next_box(keypoints_px(moved), H_PX, W_PX)
    # 220 + 0.9 * 10 = 229
    assert_box(third, box_px(50, 229, 430, 609))


def test_tracker_tightens_the_crop_once_the_track_is_stable_and_widens_it_when_lost() -> None:
    tracker = CropRegionTracker(alpha=1.0)
    kps = keypoints_px(TORSO_PX)
    upstream = determine_crop_region(kps, H_PX, W_PX)
    tight = determine_crop_region(kps, H_PX, W_PX, STABLE_RATIOS)
    assert (tight.xmax - tight.xmin) < 0.9 * (upstream.xmax - upstream.xmin)
    for _ in range(STABLE_AFTER_FRAMES):
        assert_box(tracker.next_box(kps, H_PX, W_PX), upstream)
    assert_box(tracker.next_box(kps, H_PX, W_PX), tight)
    assert tracker.next_box(keypoints_px(TORSO_PX, score=0.05), H_PX, W_PX) == letterbox_box(H_PX, W_PX)
    assert_box(tracker.next_box(kps, H_PX, W_PX), upstream)


def test_tracker_jumps_to_letterbox_when_lost_and_filters_back_in() -> None:
    tracker = CropRegionTracker()
    tracker.next_box(keypoints_px(TORSO_PX), H_PX, W_PX)
    lost = tracker.next_box(keypoints_px(TORSO_PX, score=0.05), H_PX, W_PX)
    assert lost == letterbox_box(H_PX, W_PX)
    back = tracker.next_box(keypoints_px(TORSO_PX), H_PX, W_PX)
    # letterbox in px: (-80, 0, 560, 640); target (50, 130, 430, 510); 0.9 of the way
    assert_box(back, box_px(-80 + 0.9 * 130, 0.9 * 130, 560 - 0.9 * 130, 640 - 0.9 * 130))


def test_tracker_reset_and_frame_size_change_restart_the_filter() -> None:
    tracker = CropRegionTracker()
    tracker.next_box(keypoints_px(TORSO_PX), H_PX, W_PX)
    tracker.reset()
    assert tracker.box is None
    moved = {name: (y, x + 100.0) for name, (y, x) in TORSO_PX.items()}
    assert_box(tracker.next_box(keypoints_px(moved), H_PX, W_PX), box_px(50, 230, 430, 610))
    # A new frame size: the old box is dropped, not blended.
    kps = keypoints_px(TORSO_PX)
    assert tracker.box_for_frame(960, 1280) == letterbox_box(960, 1280)
    assert_box(tracker.next_box(kps, 960, 1280), determine_crop_region(kps, 960, 1280))


def test_low_pass_box_keeps_pixel_squares_square() -> None:
    a = box_px(50, 130, 430, 510)
    b = box_px(-60, 20, 540, 620)
    c = low_pass_box(a, b, 0.9)
    assert (c.ymax - c.ymin) * H_PX == pytest.approx((c.xmax - c.xmin) * W_PX)


def _person_estimator(true_kps: np.ndarray, calls: list[CropBox]) -> Callable[[CropBox], np.ndarray]:
    """A fake model: exact positions, with scores that grow with how tall the person is in the box."""
    seen = true_kps[:, 2] > 0
    person_height = true_kps[seen, 0].max() - true_kps[seen, 0].min()

    def estimate(box: CropBox) -> np.ndarray:
        calls.append(box)
        out = true_kps.copy()
        seen = true_kps[:, 2] > 0
        out[seen, 2] = min(1.0, person_height / (box.ymax - box.ymin))
        return out

    return estimate


def test_refine_crops_keeps_the_better_crop_and_stops_when_it_stops_improving() -> None:
    true_kps = keypoints_px({**TORSO_PX, "left_ankle": (470.0, 310.0), "right_ankle": (470.0, 330.0)})
    calls: list[CropBox] = []
    estimate = _person_estimator(true_kps, calls)
    result = refine_crops(estimate, H_PX, W_PX, max_passes=3)
    crop = box_px(240 - 276, 320 - 276, 240 + 276, 320 + 276)
    # pass 1 letterbox (640 px tall box: score 330/640), pass 2 on the crop (552 px: 330/552).
    # The crop from pass 2's keypoints is the same box, so there is no third run.
    assert len(calls) == 2
    assert calls[0] == letterbox_box(H_PX, W_PX)
    assert_box(calls[1], crop)
    assert result.passes == 2
    assert_box(result.box, crop)
    assert result.keypoints[KEYPOINT_INDEX["left_hip"], 2] == pytest.approx(330 / 552)


def test_refine_crops_keeps_the_first_pass_when_the_crop_is_worse() -> None:
    true_kps = keypoints_px(TORSO_PX)
    calls: list[CropBox] = []

    def estimate(box: CropBox) -> np.ndarray:
        calls.append(box)
        out = true_kps.copy()
        out[true_kps[:, 2] > 0, 2] = 0.9 if len(calls) == 1 else 0.5
        return out

    result = refine_crops(estimate, H_PX, W_PX, max_passes=3)
    assert len(calls) == 2
    assert result.passes == 2
    assert result.box == letterbox_box(H_PX, W_PX)
    assert result.keypoints[KEYPOINT_INDEX["left_hip"], 2] == 0.9


def test_refine_crops_stops_after_one_pass_without_a_torso() -> None:
    calls: list[CropBox] = []

    def estimate(box: CropBox) -> np.ndarray:
        calls.append(box)
        return keypoints_px(TORSO_PX, score=0.1)

    result = refine_crops(estimate, H_PX, W_PX)
    assert calls == [letterbox_box(H_PX, W_PX)]
    assert result.passes == 1
    assert result.box == letterbox_box(H_PX, W_PX)


def test_refine_crops_respects_max_passes() -> None:
    calls: list[CropBox] = []
    step = [0.3]

    def estimate(box: CropBox) -> np.ndarray:
        calls.append(box)
        # The person keeps "growing" in each estimate so every pass finds a new crop and a better score.
        grow_px = 10.0 * len(calls)
        kps = keypoints_px(
            {
                "left_hip": (240.0, 300.0),
                "right_hip": (240.0, 340.0),
                "left_shoulder": (140.0 - grow_px, 290.0),
                "right_shoulder": (140.0 - grow_px, 350.0),
            },
            score=step[0],
        )
        step[0] += 0.1
        return kps

    result = refine_crops(estimate, H_PX, W_PX, max_passes=3)
    assert len(calls) == 3
    assert result.passes == 3
    # the third call's box comes from the second call's keypoints: shoulders 120 px up -> half 228
    assert_box(result.box, box_px(240 - 228, 320 - 228, 240 + 228, 320 + 228))


def test_rejects_wrong_keypoint_shape() -> None:
    with pytest.raises(ValueError, match="17, 3"):
        determine_crop_region(np.zeros((17, 2)), H_PX, W_PX)


def test_second_pass_when_the_crop_was_the_letterbox_or_the_person_reached_its_edge() -> None:
    kps = keypoints_px(TORSO_PX)
    target = determine_crop_region(kps, H_PX, W_PX)
    # Run on the letterbox (no track yet): the frame is worth a second pass on its own crop.
    assert second_pass_box(kps, letterbox_box(H_PX, W_PX), H_PX, W_PX) == target
    # Run on the crop it calls for: nothing to gain.
    assert second_pass_box(kps, target, H_PX, W_PX) is None
    # Run on last frame's crop, but the person moved so a shoulder is at its right edge.
    stale = box_px(50, 130 - 165, 430, 510 - 165)
    assert second_pass_box(kps, stale, H_PX, W_PX) == target
    # A confident keypoint past the edge counts too; an unconfident one does not.
    hand = kps.copy()
    hand[KEYPOINT_INDEX["left_wrist"]] = (240 / H_PX, 530 / W_PX, 0.9)
    assert second_pass_box(hand, target, H_PX, W_PX) is not None
    hand[KEYPOINT_INDEX["left_wrist"], 2] = 0.1
    assert second_pass_box(hand, target, H_PX, W_PX) is None
    # No torso, no anchor for a crop: no second pass.
    assert second_pass_box(keypoints_px(TORSO_PX, score=0.1), letterbox_box(H_PX, W_PX), H_PX, W_PX) is None


def test_acquisition_crop_ignores_unconfident_torso_joints() -> None:
    """A small person seen in the letterbox: head, shoulders, knees and ankles confident, both hips
    at 0.05 and placed far away. Upstream's crop needs a confident hip (and counts torso joints
    whatever their score), so `second_pass_box` has nothing; while nobody is tracked the stage
    then asks `acquisition_box`, which anchors on the confident keypoints."""
    body = {
        "nose": (300, 500),
        "left_shoulder": (320, 510),
        "right_shoulder": (320, 490),
        "left_elbow": (340, 512),
        "right_elbow": (340, 488),
        "left_knee": (380, 506),
        "right_knee": (380, 494),
        "left_ankle": (410, 506),
        "right_ankle": (410, 494),
    }
    kps = keypoints_px(body)  # every keypoint not named sits at (0, 0) with score 0
    for hip in ("left_hip", "right_hip"):
        kps[KEYPOINT_INDEX[hip]] = (100 / H_PX, 60 / W_PX, 0.05)
    letterbox = letterbox_box(H_PX, W_PX)
    assert determine_crop_region(kps, H_PX, W_PX) == letterbox  # upstream: no torso, no crop
    assert second_pass_box(kps, letterbox, H_PX, W_PX) is None
    box = acquisition_box(kps, letterbox, H_PX, W_PX)
    assert box is not None
    # Centred on the confident keypoints' box (y 300-410, x 488-512): (355, 500). Reach: the
    # shoulders 35 px x 1.9 (torso) beat the nose and ankles 55 px x 1.2 (body).
    half_px = max(35 * 1.9, 55 * 1.2)
    assert_box(box, box_px(355 - half_px, 500 - half_px, 355 + half_px, 500 + half_px))
    # One hip confident, the other misplaced: centre on the confident one, not halfway to the other.
    kps[KEYPOINT_INDEX["left_hip"]] = (360 / H_PX, 504 / W_PX, 0.6)
    assert determine_crop_region(kps, H_PX, W_PX) == letterbox  # upstream reaches for the far hip
    assert second_pass_box(kps, letterbox, H_PX, W_PX) is None
    box = acquisition_box(kps, letterbox, H_PX, W_PX)
    assert box is not None
    half_px = max(40 * 1.9, 60 * 1.2)  # shoulders 40 px above the hip (torso), nose 60 px (body)
    assert_box(box, box_px(360 - half_px, 504 - half_px, 360 + half_px, 504 + half_px))
    # A shoulder and fewer than SECOND_PASS_MIN_KEYPOINTS confident keypoints: not enough to go on.
    few = np.zeros_like(kps)
    few[:, :2] = kps[:, :2]
    for name in ("nose", "left_shoulder", "right_shoulder", "left_knee", "left_ankle"):
        few[KEYPOINT_INDEX[name], 2] = 0.9
    assert SECOND_PASS_MIN_KEYPOINTS == 6
    assert acquisition_box(few, letterbox, H_PX, W_PX) is None
    few[KEYPOINT_INDEX["right_ankle"], 2] = 0.9
    assert acquisition_box(few, letterbox, H_PX, W_PX) is not None
    # Only from a crop much wider than the one the keypoints call for (here: that crop itself).
    assert acquisition_box(kps, box, H_PX, W_PX) is None
    # With all four torso joints confident it is upstream's crop.
    assert acquisition_box(keypoints_px(TORSO_PX), letterbox, H_PX, W_PX) == determine_crop_region(
        keypoints_px(TORSO_PX), H_PX, W_PX
    )


def test_wide_shoulders_set_the_crop_through_the_torso_width() -> None:
    # A person lying down: hips 40 px apart, shoulders 120 px to the right and only 10 px higher.
    # torso reach x 120 px (y 10) -> half = 1.9 * 120 = 228 px; the body reach (1.2 * 120) is smaller.
    kps = keypoints_px(
        {
            "left_hip": (240.0, 300.0),
            "right_hip": (240.0, 340.0),
            "left_shoulder": (230.0, 440.0),
            "right_shoulder": (250.0, 440.0),
        }
    )
    assert_box(determine_crop_region(kps, H_PX, W_PX), box_px(240 - 228, 320 - 228, 240 + 228, 320 + 228))


@pytest.mark.parametrize(
    ("hips_px", "shoulders_y_px"),
    [
        ((240.0, 600.0), 20.0),  # near the right edge: the left edge is 600 px away
        ((240.0, 40.0), 20.0),  # near the left edge: the right edge is 600 px away
        ((450.0, 320.0), 230.0),  # near the bottom: the top is 450 px away
        ((30.0, 320.0), 250.0),  # near the top, upside down: the bottom is 450 px away
    ],
)
def test_a_body_larger_than_the_frame_near_any_edge_gets_the_letterbox(
    hips_px: tuple[float, float], shoulders_y_px: float
) -> None:
    """Torso 220 px -> half 418 px; the farthest edge is more than half the long side away, so even
    clamped to it the square would be larger than the frame: the letterbox."""
    hip_y, hip_x = hips_px
    kps = keypoints_px(
        {
            "left_hip": (hip_y, hip_x - 10),
            "right_hip": (hip_y, hip_x + 10),
            "left_shoulder": (shoulders_y_px, hip_x - 10),
            "right_shoulder": (shoulders_y_px, hip_x + 10),
        }
    )
    assert determine_crop_region(kps, H_PX, W_PX) == letterbox_box(H_PX, W_PX)


def test_body_range_is_zero_when_no_joint_is_confident() -> None:
    reach = torso_and_body_range(keypoints_px(TORSO_PX, score=0.1), 240.0, 320.0, H_PX, W_PX)
    assert (reach.torso_y_px, reach.torso_x_px) == pytest.approx((100.0, 30.0))  # the torso counts whatever its score
    assert (reach.body_y_px, reach.body_x_px) == (0.0, 0.0)


@pytest.mark.parametrize("alpha", [0.0, -0.5, 1.5])
def test_tracker_refuses_an_alpha_outside_0_to_1(alpha: float) -> None:
    with pytest.raises(ValueError, match=rf"alpha must be in \(0, 1\], got {alpha}"):
        CropRegionTracker(alpha=alpha)


def test_tracker_with_alpha_1_follows_without_filtering() -> None:
    tracker = CropRegionTracker(alpha=1.0)
    tracker.next_box(keypoints_px(TORSO_PX), H_PX, W_PX)
    moved = {name: (y, x + 100.0) for name, (y, x) in TORSO_PX.items()}
    assert_box(tracker.next_box(keypoints_px(moved), H_PX, W_PX), box_px(50, 230, 430, 610))


def test_refine_crops_runs_at_most_three_passes_by_default_and_one_when_asked() -> None:
    for max_passes, expected in [(None, 3), (1, 1), (2, 2)]:
        calls: list[CropBox] = []

        def estimate(box: CropBox, calls: list[CropBox] = calls) -> np.ndarray:
            calls.append(box)
            grow_px = 10.0 * len(calls)  # a new crop and a better score every pass
            points = {**TORSO_PX, "left_shoulder": (140.0 - grow_px, 290.0), "right_shoulder": (140.0 - grow_px, 350.0)}
            return keypoints_px(points, score=0.2 + 0.1 * len(calls))

        result = (
            refine_crops(estimate, H_PX, W_PX) if max_passes is None else refine_crops(estimate, H_PX, W_PX, max_passes)
        )
        assert len(calls) == result.passes == expected


@pytest.mark.parametrize("max_passes", [0, -1])
def test_refine_crops_needs_at_least_one_pass(max_passes: int) -> None:
    with pytest.raises(ValueError, match=f"max_passes must be at least 1, got {max_passes}"):
        refine_crops(lambda box: keypoints_px(TORSO_PX), H_PX, W_PX, max_passes)


def test_refine_crops_keeps_the_first_pass_when_the_crop_scores_the_same() -> None:
    calls: list[CropBox] = []

    def estimate(box: CropBox) -> np.ndarray:
        calls.append(box)
        return keypoints_px(TORSO_PX, score=0.6)

    result = refine_crops(estimate, H_PX, W_PX)
    assert len(calls) == 2 and result.passes == 2
    assert result.box == letterbox_box(H_PX, W_PX)


def test_refine_crops_hands_back_float64_keypoints_and_counts_one_pass() -> None:
    result = refine_crops(lambda box: keypoints_px(TORSO_PX, score=0.1).astype(np.float32), H_PX, W_PX)
    assert result.keypoints.dtype == np.float64 and result.passes == 1
    calls: list[CropBox] = []

    def improving(box: CropBox) -> np.ndarray:
        calls.append(box)
        return keypoints_px(TORSO_PX, score=0.3 * len(calls)).astype(np.float32)

    result = refine_crops(improving, H_PX, W_PX)
    assert result.passes == 2 and result.keypoints.dtype == np.float64
    assert result.keypoints[KEYPOINT_INDEX["left_hip"], 2] == pytest.approx(0.6)


@pytest.mark.parametrize("at_threshold", ["left_hip", "right_hip", "left_shoulder", "right_shoulder"])
def test_a_joint_exactly_at_0_2_does_not_make_the_torso_visible(at_threshold: str) -> None:
    """Every other torso joint is confident except the partner of `at_threshold`, which is unseen."""
    partner = {
        "left_hip": "right_hip",
        "right_hip": "left_hip",
        "left_shoulder": "right_shoulder",
        "right_shoulder": "left_shoulder",
    }[at_threshold]
    kps = keypoints_px(TORSO_PX, score=0.9)
    kps[KEYPOINT_INDEX[partner], 2] = 0.0
    kps[KEYPOINT_INDEX[at_threshold], 2] = 0.2
    assert not torso_visible(kps)
    kps[KEYPOINT_INDEX[at_threshold], 2] = 0.21
    assert torso_visible(kps)
