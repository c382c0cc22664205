"""MoveNet's smart crop: where to look in the next frame, from where the body was in this one.

MoveNet single-pose sees a small square input; running it on a square around the person instead of
the whole letterboxed frame gives the person more input pixels and much better keypoints. This is
the algorithm of tfjs-models `pose-detection/src/movenet/crop_utils.ts` (`determineNextCropRegion`)
and of the TF Lite Raspberry Pi example `lite/examples/pose_estimation/raspberry_pi/ml/movenet.py`
(`_determine_crop_region`), with the crop box low-passed between frames as tfjs `detector.ts` does.

The Raspberry Pi example has a bug this port does not copy: its full-body loop measures
`target_keypoints[joint]`, where `joint` is the last torso joint left over from the loop before,
so every "body" distance is the right hip's and arms and legs never widen the crop. tfjs measures
each keypoint, as done here.

Keypoints come in as a (17, 3) array of frame-normalized [y, x, score]; distances are measured in
pixels (as upstream) so the box is square in pixels; boxes go out frame-normalized as `CropBox`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgepose.geometry import letterbox_box
from edgepose.pose import KEYPOINT_INDEX, NUM_KEYPOINTS, CropBox

# Values from tfjs-models pose-detection/src/movenet/constants.ts and crop_utils.ts.
MIN_CROP_KEYPOINT_SCORE = 0.2
TORSO_EXPANSION_RATIO = 1.9
BODY_EXPANSION_RATIO = 1.2
CROP_FILTER_ALPHA = 0.9


@dataclass(frozen=True)
class ExpansionRatios:
    """How far past the torso and the farthest confident keypoint the crop reaches (upstream: 1.9, 1.2)."""

    torso: float = TORSO_EXPANSION_RATIO
    body: float = BODY_EXPANSION_RATIO


UPSTREAM_RATIOS = ExpansionRatios()
# Once a track is stable the crop can be tighter: measured on clips from the truth photos
# (docs/pose-quality.md), 1.6 / 1.1 gives the person about 15% more input pixels and cuts the clips
# over target; 1.4 / 1.05 starts cutting off hands and feet. Upstream's margins are kept for the
# first crop of a track, when the keypoints it is built from came from a coarse letterbox pass.
STABLE_RATIOS = ExpansionRatios(torso=1.6, body=1.1)
# Frames in a row with a visible torso before the track counts as stable.
STABLE_AFTER_FRAMES = 2

_LEFT_SHOULDER = KEYPOINT_INDEX["left_shoulder"]
_RIGHT_SHOULDER = KEYPOINT_INDEX["right_shoulder"]
_LEFT_HIP = KEYPOINT_INDEX["left_hip"]
_RIGHT_HIP = KEYPOINT_INDEX["right_hip"]
_TORSO = (_LEFT_SHOULDER, _RIGHT_SHOULDER, _LEFT_HIP, _RIGHT_HIP)
_TORSO_SET = frozenset(_TORSO)

EstimateFn = Callable[[CropBox], np.ndarray]


def _check_keypoints(keypoints: np.ndarray) -> None:
    if keypoints.shape != (NUM_KEYPOINTS, 3):
        raise ValueError(f"keypoints must be ({NUM_KEYPOINTS}, 3) [y, x, score], got {keypoints.shape}")


def torso_visible(keypoints: np.ndarray) -> bool:
    """Whether a hip and a shoulder are confident enough to anchor a crop on.

    Upstream compares with a strict `>`: a score of exactly MIN_CROP_KEYPOINT_SCORE does not count.
    """
    _check_keypoints(keypoints)
    return _torso_visible(keypoints.tolist())


# The crop runs once per video frame on 17 keypoints: on Python floats from one tolist() it costs a
# fraction of a dozen numpy calls on a (17, 3) array, and gives the same IEEE doubles.
Rows = list[list[float]]


def _torso_visible(rows: Rows) -> bool:
    hip = rows[_LEFT_HIP][2] > MIN_CROP_KEYPOINT_SCORE or rows[_RIGHT_HIP][2] > MIN_CROP_KEYPOINT_SCORE
    shoulder = rows[_LEFT_SHOULDER][2] > MIN_CROP_KEYPOINT_SCORE or rows[_RIGHT_SHOULDER][2] > MIN_CROP_KEYPOINT_SCORE
    return hip and shoulder


def _reach_px(
    rows: Rows, center_y_px: float, center_x_px: float, frame_height_px: int, frame_width_px: int
) -> tuple[float, float, float, float]:
    """(torso_y, torso_x, body_y, body_x): the largest distances from the centre, in pixels."""
    torso_y = torso_x = body_y = body_x = 0.0
    for index, (y, x, score) in enumerate(rows):
        dist_y = abs(center_y_px - y * frame_height_px)
        dist_x = abs(center_x_px - x * frame_width_px)
        if index in _TORSO_SET:
            torso_y = dist_y if dist_y > torso_y else torso_y
            torso_x = dist_x if dist_x > torso_x else torso_x
        # Upstream counts the torso joints whatever their score, but skips body joints below the
        # threshold with `<`, so a score of exactly MIN_CROP_KEYPOINT_SCORE does count here.
        if score >= MIN_CROP_KEYPOINT_SCORE:
            body_y = dist_y if dist_y > body_y else body_y
            body_x = dist_x if dist_x > body_x else body_x
    return torso_y, torso_x, body_y, body_x


@dataclass(frozen=True)
class BodyRange:
    """Largest distances from the hip centre in pixels: over the 4 torso joints, over all confident joints."""

    torso_y_px: float
    torso_x_px: float
    body_y_px: float
    body_x_px: float


def torso_and_body_range(
    keypoints: np.ndarray, center_y_px: float, center_x_px: float, frame_height_px: int, frame_width_px: int
) -> BodyRange:
    """Upstream `determineTorsoAndBodyRange`, measuring each keypoint (not the RPi example's last joint)."""
    _check_keypoints(keypoints)
    return BodyRange(*_reach_px(keypoints.tolist(), center_y_px, center_x_px, frame_height_px, frame_width_px))


def determine_crop_region(
    keypoints: np.ndarray, frame_height_px: int, frame_width_px: int, ratios: ExpansionRatios = UPSTREAM_RATIOS
) -> CropBox:
    """The square (in pixels) box to run the model on next, centred on the hips and holding the body.

    Falls back to the letterbox (the whole frame) when the torso is not visible, or when the body
    is so large that the crop would be larger than the frame anyway.
    """
    _check_keypoints(keypoints)
    target = _crop_target(keypoints.tolist(), frame_height_px, frame_width_px, ratios)
    return target if target is not None else letterbox_box(frame_height_px, frame_width_px)


def _crop_target(
    rows: Rows, frame_height_px: int, frame_width_px: int, ratios: ExpansionRatios = UPSTREAM_RATIOS
) -> CropBox | None:
    """determine_crop_region on tolist() rows; None when the torso is not visible."""
    if not _torso_visible(rows):
        return None
    # Upstream centres on both hips even when only one of them is confident.
    center_y_px = (rows[_LEFT_HIP][0] + rows[_RIGHT_HIP][0]) / 2 * frame_height_px
    center_x_px = (rows[_LEFT_HIP][1] + rows[_RIGHT_HIP][1]) / 2 * frame_width_px
    torso_y_px, torso_x_px, body_y_px, body_x_px = _reach_px(
        rows, center_y_px, center_x_px, frame_height_px, frame_width_px
    )
    half_px = max(
        torso_x_px * ratios.torso,
        torso_y_px * ratios.torso,
        body_y_px * ratios.body,
        body_x_px * ratios.body,
    )
    return _square_box(center_y_px, center_x_px, half_px, frame_height_px, frame_width_px)


def _square_box(
    center_y_px: float, center_x_px: float, half_px: float, frame_height_px: int, frame_width_px: int
) -> CropBox:
    """The pixel-square box of half side `half_px` around a centre; the letterbox when larger than it."""
    # No point reaching further past the centre than the farthest frame edge.
    half_px = min(
        half_px,
        max(center_x_px, frame_width_px - center_x_px, center_y_px, frame_height_px - center_y_px),
    )
    if half_px > max(frame_width_px, frame_height_px) / 2:
        return letterbox_box(frame_height_px, frame_width_px)
    return CropBox(
        ymin=(center_y_px - half_px) / frame_height_px,
        xmin=(center_x_px - half_px) / frame_width_px,
        ymax=(center_y_px + half_px) / frame_height_px,
        xmax=(center_x_px + half_px) / frame_width_px,
    )


def low_pass_box(previous: CropBox, new: CropBox, alpha: float) -> CropBox:
    """tfjs's LowPassFilter on each edge: move `alpha` of the way from `previous` to `new`.

    A blend of two pixel-square boxes is itself pixel-square, so the crop stays square.
    """
    return CropBox(
        ymin=previous.ymin + alpha * (new.ymin - previous.ymin),
        xmin=previous.xmin + alpha * (new.xmin - previous.xmin),
        ymax=previous.ymax + alpha * (new.ymax - previous.ymax),
        xmax=previous.xmax + alpha * (new.xmax - previous.xmax),
    )


class CropRegionTracker:
    """Carries the crop from one video frame to the next.

    Per frame: run the model on `box_for_frame(h, w)`, then hand the frame-normalized keypoints to
    `next_box`. The box is low-passed (alpha 0.9, tfjs) so it does not jump with keypoint noise.
    One deviation from tfjs: when the torso is lost the box goes straight to the letterbox rather
    than 90% of the way there, because a box slightly inside the frame can cut off the edges where
    the person is most likely to reappear; the filter restarts from the letterbox.
    """

    def __init__(self, alpha: float = CROP_FILTER_ALPHA, stable_ratios: ExpansionRatios | None = STABLE_RATIOS) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self._alpha = alpha
        self._stable_ratios = stable_ratios
        self._box: CropBox | None = None
        self._frame_size_px: tuple[int, int] | None = None
        self._tracked_frames = 0

    @property
    def frame_size_px(self) -> tuple[int, int] | None:
        """(height, width) of the frames `box` was made for."""
        return self._frame_size_px

    @property
    def box(self) -> CropBox | None:
        """The box chosen for the next frame, or None before the first frame and after `reset`."""
        return self._box

    def box_for_frame(self, frame_height_px: int, frame_width_px: int) -> CropBox:
        """The box to run the model on for a frame of this size: the letterbox until one is known."""
        if self._box is None or self._frame_size_px != (frame_height_px, frame_width_px):
            return letterbox_box(frame_height_px, frame_width_px)
        return self._box

    def next_box(self, keypoints: np.ndarray, frame_height_px: int, frame_width_px: int) -> CropBox:
        """Update from this frame's keypoints and return the box for the next frame."""
        if self._frame_size_px != (frame_height_px, frame_width_px):
            # Normalized boxes of another frame size describe other pixels.
            self.reset()
            self._frame_size_px = (frame_height_px, frame_width_px)
        _check_keypoints(keypoints)
        stable = self._stable_ratios is not None and self._tracked_frames >= STABLE_AFTER_FRAMES
        ratios = self._stable_ratios if stable and self._stable_ratios is not None else UPSTREAM_RATIOS
        target = _crop_target(keypoints.tolist(), frame_height_px, frame_width_px, ratios)
        if target is None:  # the torso is lost
            self._box = letterbox_box(frame_height_px, frame_width_px)
            self._tracked_frames = 0
            return self._box
        self._tracked_frames += 1
        self._box = target if self._box is None else low_pass_box(self._box, target, self._alpha)
        return self._box

    def reset(self) -> None:
        self._box = None
        self._frame_size_px = None
        self._tracked_frames = 0


# A frame whose crop was this much wider than the crop its own keypoints call for (the letterbox
# while the track starts, or after it was lost) gets a second pass on the tight crop.
SECOND_PASS_WIDE_RATIO = 1.5
# ...and so does one where a confident keypoint came out this close to (or past) the crop's edge,
# as a fraction of the crop side: the person moved out of the crop the previous frame chose.
SECOND_PASS_EDGE_MARGIN = 0.02


def box_side_ratio(a: CropBox, b: CropBox) -> float:
    """How many times wider (in pixels) box `a` is than box `b`."""
    return float((a.xmax - a.xmin) / (b.xmax - b.xmin))


# A pose with a confident hip or shoulder but not both still anchors a second-pass crop when at
# least this many keypoints are confident: a small person in the letterbox often has confident
# head, shoulders, knees and ankles while both hips score ~0.05. An empty frame gives no keypoint
# above MIN_CROP_KEYPOINT_SCORE and uniform noise 4 (bench/pose_quality_limits.py).
SECOND_PASS_MIN_KEYPOINTS = 6


def _confident_crop_target(rows: Rows, frame_height_px: int, frame_width_px: int) -> CropBox | None:
    """The crop a frame's own pose calls for, from its confident keypoints only.

    Upstream's crop (`_crop_target`) counts the four torso joints whatever their score and centres
    on both hips even when one is unconfident. That is fine for a tracked person, but a frame run
    on the letterbox can have a 24 px tall person whose unconfident hips the model placed hundreds
    of pixels away: upstream's crop then spans the frame and no second pass would run. Here the
    centre is the confident hips (else the confident keypoints' box) and the reach counts confident
    joints only; when all four torso joints are confident this is exactly upstream's crop.
    """
    confident = [i for i, row in enumerate(rows) if row[2] >= MIN_CROP_KEYPOINT_SCORE]
    hips = [i for i in (_LEFT_HIP, _RIGHT_HIP) if rows[i][2] > MIN_CROP_KEYPOINT_SCORE]
    shoulders = [i for i in (_LEFT_SHOULDER, _RIGHT_SHOULDER) if rows[i][2] > MIN_CROP_KEYPOINT_SCORE]
    if not (hips and shoulders) and not ((hips or shoulders) and len(confident) >= SECOND_PASS_MIN_KEYPOINTS):
        return None
    if len(hips) == 2 and all(rows[i][2] > MIN_CROP_KEYPOINT_SCORE for i in _TORSO):
        return _crop_target(rows, frame_height_px, frame_width_px)
    if hips:
        center_y_px = sum(rows[i][0] for i in hips) / len(hips) * frame_height_px
        center_x_px = sum(rows[i][1] for i in hips) / len(hips) * frame_width_px
    else:
        ys = [rows[i][0] for i in confident]
        xs = [rows[i][1] for i in confident]
        center_y_px = (min(ys) + max(ys)) / 2 * frame_height_px
        center_x_px = (min(xs) + max(xs)) / 2 * frame_width_px
    torso_px = body_px = 0.0
    for i in confident:
        reach_px = max(abs(center_y_px - rows[i][0] * frame_height_px), abs(center_x_px - rows[i][1] * frame_width_px))
        body_px = max(body_px, reach_px)
        if i in _TORSO_SET:
            torso_px = max(torso_px, reach_px)
    half_px = max(torso_px * UPSTREAM_RATIOS.torso, body_px * UPSTREAM_RATIOS.body)
    return _square_box(center_y_px, center_x_px, half_px, frame_height_px, frame_width_px)


def _spans_frame(box: CropBox, frame_height_px: int, frame_width_px: int) -> bool:
    """Whether a square crop is as wide as the frame's longer side (to a pixel): the letterbox."""
    return (box.xmax - box.xmin) * frame_width_px >= max(frame_height_px, frame_width_px) - 1


def second_pass_box(keypoints: np.ndarray, used: CropBox, frame_height_px: int, frame_width_px: int) -> CropBox | None:
    """The crop to run this frame again on, or None when the one it was run on was good enough.

    Video runs one pass per frame on the crop chosen from an earlier frame. That crop is wrong in
    two cases the next frame cannot fix in time: it is the letterbox (no track yet, so a small
    person gets a few dozen input pixels), or the person has moved to its edge. Both show in this
    frame's own keypoints, so the frame is run again on the crop they call for (the stills
    refinement, one step). In a steady track neither happens and no extra invoke is spent.
    """
    _check_keypoints(keypoints)
    rows = keypoints.tolist()
    target = _crop_target(rows, frame_height_px, frame_width_px)
    if target is None:
        return None  # no torso: nothing to anchor a crop on
    if _spans_frame(target, frame_height_px, frame_width_px):
        return None  # the body fills the frame: the letterbox is the right crop
    if box_side_ratio(used, target) > SECOND_PASS_WIDE_RATIO:
        return target
    low, high = SECOND_PASS_EDGE_MARGIN, 1.0 - SECOND_PASS_EDGE_MARGIN
    box_h, box_w = used.ymax - used.ymin, used.xmax - used.xmin
    for y, x, score in rows:
        if score >= MIN_CROP_KEYPOINT_SCORE and not (
            low < (y - used.ymin) / box_h < high and low < (x - used.xmin) / box_w < high
        ):
            return target
    return None


def acquisition_box(keypoints: np.ndarray, used: CropBox, frame_height_px: int, frame_width_px: int) -> CropBox | None:
    """The last resort of a frame run on a wide crop while nobody is tracked: a crop from its
    confident keypoints alone (`_confident_crop_target`), or None.

    For when `second_pass_box` found nothing to anchor on (no confident hip, or a misplaced
    unconfident hip that makes upstream's crop span the frame) and no track has started since the
    frame was prepared. Only then: when upstream's crop or a track exists they are the better
    anchor (a single confident hip can itself be misplaced).
    """
    _check_keypoints(keypoints)
    target = _confident_crop_target(keypoints.tolist(), frame_height_px, frame_width_px)
    if target is None or _spans_frame(target, frame_height_px, frame_width_px):
        return None
    return target if box_side_ratio(used, target) > SECOND_PASS_WIDE_RATIO else None


@dataclass(frozen=True, eq=False)
class RefinedEstimate:
    """The best of the passes `refine_crops` ran on a still image."""

    keypoints: np.ndarray  # (17, 3) frame-normalized [y, x, score]
    box: CropBox  # the box the model saw to produce `keypoints`
    passes: int  # how many times the estimator ran


def mean_keypoint_score(keypoints: np.ndarray) -> float:
    _check_keypoints(keypoints)
    return float(np.mean(keypoints[:, 2]))


def refine_crops(
    estimate_fn: EstimateFn, frame_height_px: int, frame_width_px: int, max_passes: int = 3
) -> RefinedEstimate:
    """Still-image stand-in for frame-to-frame cropping: estimate, crop on the result, estimate again.

    The first pass sees the letterbox. Each further pass runs on the crop found from the best pass
    so far, and is kept only if it raises the mean keypoint score; the loop stops at the first pass
    that does not, when the torso is not visible, when the crop would not change, or after
    `max_passes` runs of the estimator. `estimate_fn(box)` returns (17, 3) frame-normalized keypoints.
    """
    if max_passes < 1:
        raise ValueError(f"max_passes must be at least 1, got {max_passes}")
    box = letterbox_box(frame_height_px, frame_width_px)
    keypoints = np.asarray(estimate_fn(box), dtype=np.float64)
    best = RefinedEstimate(keypoints=keypoints, box=box, passes=1)
    best_score = mean_keypoint_score(keypoints)
    passes = 1
    while passes < max_passes and torso_visible(best.keypoints):
        next_box = determine_crop_region(best.keypoints, frame_height_px, frame_width_px)
        if next_box == best.box:
            break
        candidate = np.asarray(estimate_fn(next_box), dtype=np.float64)
        passes += 1
        score = mean_keypoint_score(candidate)
        if score <= best_score:
            break
        best = RefinedEstimate(keypoints=candidate, box=next_box, passes=passes)
        best_score = score
    return RefinedEstimate(keypoints=best.keypoints, box=best.box, passes=passes)
