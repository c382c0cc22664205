"""The per-frame maths was rewritten for speed (#14): fewer numpy calls, buffers kept between frames,
Python floats for the crop. These tests hold the implementations as they were before, verbatim in
their arithmetic, and check the fast ones give the same numbers on random inputs, so accuracy work
on the crop and the filter (#15) can rely on the behaviour being unchanged.
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError, asdict, astuple

import numpy as np
import numpy.typing as npt
import pytest

from edgepose.crop import (
    BODY_EXPANSION_RATIO,
    MIN_CROP_KEYPOINT_SCORE,
    TORSO_EXPANSION_RATIO,
    CropRegionTracker,
    determine_crop_region,
    low_pass_box,
    torso_and_body_range,
    torso_visible,
)
from edgepose.geometry import box_to_frame, letterbox_box
from edgepose.inference.movenet import decode_singlepose, keypoints_to_pose, mean_of_17
from edgepose.pose import KEYPOINT_INDEX, KEYPOINT_NAMES, CropBox, Keypoint, Pose, keypoints_from_rows
from edgepose.smoothing import KeypointSmoother, OneEuroFilter, OneEuroParams

FRAMES = [(480, 640), (640, 480), (720, 1280), (600, 600)]
TORSO = [KEYPOINT_INDEX[n] for n in ("left_shoulder", "right_shoulder", "left_hip", "right_hip")]


# -- the implementations before #14 ------------------------------------------------------------


def reference_torso_visible(keypoints: np.ndarray) -> bool:
    confident = keypoints[:, 2] > MIN_CROP_KEYPOINT_SCORE
    hip = confident[KEYPOINT_INDEX["left_hip"]] or confident[KEYPOINT_INDEX["right_hip"]]
    shoulder = confident[KEYPOINT_INDEX["left_shoulder"]] or confident[KEYPOINT_INDEX["right_shoulder"]]
    return bool(hip and shoulder)


def reference_range(keypoints: np.ndarray, cy: float, cx: float, h: int, w: int) -> tuple[float, ...]:
    y_px = keypoints[:, 0] * h
    x_px = keypoints[:, 1] * w
    dist_y, dist_x = np.abs(cy - y_px), np.abs(cx - x_px)
    confident = keypoints[:, 2] >= MIN_CROP_KEYPOINT_SCORE
    return (
        float(dist_y[TORSO].max()),
        float(dist_x[TORSO].max()),
        float(dist_y[confident].max(initial=0.0)),
        float(dist_x[confident].max(initial=0.0)),
    )


def reference_crop_region(keypoints: np.ndarray, h: int, w: int) -> CropBox:
    fallback = letterbox_box(h, w)
    if not reference_torso_visible(keypoints):
        return fallback
    lh, rh = KEYPOINT_INDEX["left_hip"], KEYPOINT_INDEX["right_hip"]
    cy = float((keypoints[lh, 0] + keypoints[rh, 0]) / 2 * h)
    cx = float((keypoints[lh, 1] + keypoints[rh, 1]) / 2 * w)
    torso_y, torso_x, body_y, body_x = reference_range(keypoints, cy, cx, h, w)
    half = max(
        torso_x * TORSO_EXPANSION_RATIO,
        torso_y * TORSO_EXPANSION_RATIO,
        body_y * BODY_EXPANSION_RATIO,
        body_x * BODY_EXPANSION_RATIO,
    )
    half = min(half, max(cx, w - cx, cy, h - cy))
    if half > max(w, h) / 2:
        return fallback
    return CropBox(ymin=(cy - half) / h, xmin=(cx - half) / w, ymax=(cy + half) / h, xmax=(cx + half) / w)


class ReferenceTracker:
    def __init__(self, alpha: float = 0.9) -> None:
        self.alpha = alpha
        self.box: CropBox | None = None
        self.size: tuple[int, int] | None = None

    def next_box(self, keypoints: np.ndarray, h: int, w: int) -> CropBox:
        if self.size != (h, w):
            self.box, self.size = None, (h, w)
        if not reference_torso_visible(keypoints):
            self.box = letterbox_box(h, w)
            return self.box
        target = reference_crop_region(keypoints, h, w)
        self.box = target if self.box is None else low_pass_box(self.box, target, self.alpha)
        return self.box


def reference_alpha(cutoff_hz: npt.NDArray[np.float64] | float, frequency_hz: float) -> npt.NDArray[np.float64]:
    return np.asarray(1.0 / (1.0 + frequency_hz / (2.0 * np.pi * np.asarray(cutoff_hz))), dtype=np.float64)


class ReferenceOneEuro:
    def __init__(self, p: OneEuroParams) -> None:
        self.p = p
        self.frequency_hz = p.frequency_hz
        self.last_s: float | None = None
        self.last_raw: npt.NDArray[np.float64] | None = None
        self.smoothed: npt.NDArray[np.float64] | None = None
        self.speed: npt.NDArray[np.float64] | None = None

    def apply(self, value: np.ndarray, timestamp_s: float) -> npt.NDArray[np.float64]:
        raw = np.array(value, dtype=np.float64)
        if self.last_s is not None:
            if timestamp_s == self.last_s:
                return raw
            if timestamp_s < self.last_s:
                self.__init__(self.p)  # type: ignore[misc]
        if self.last_s is not None:
            self.frequency_hz = 1.0 / (timestamp_s - self.last_s)
        self.last_s = timestamp_s
        p = self.p
        if self.last_raw is None or self.smoothed is None or self.speed is None:
            self.last_raw, self.smoothed, self.speed = raw, raw.copy(), np.zeros_like(raw)
            return raw.copy()
        raw_speed = (raw - self.last_raw) * self.frequency_hz
        speed = self.speed + reference_alpha(p.derivative_cutoff_hz, self.frequency_hz) * (raw_speed - self.speed)
        abs_speed = np.abs(speed)
        alpha = reference_alpha(p.min_cutoff_hz + p.beta * abs_speed, self.frequency_hz)
        step = raw - self.smoothed
        if p.threshold_cutoff is None:
            smoothed = self.smoothed + alpha * step
        else:
            threshold = p.threshold_cutoff + p.threshold_beta * abs_speed
            smoothed = self.smoothed + alpha * threshold * np.arcsinh(step / threshold)
        self.last_raw, self.speed, self.smoothed = raw, speed, smoothed
        return smoothed.copy()


def reference_decode(output: np.ndarray, box: CropBox) -> np.ndarray:
    raw = np.asarray(output, dtype=np.float64).reshape(-1, 3)
    mapped = np.empty_like(raw)
    mapped[:, :2] = box_to_frame(raw[:, :2], box)
    mapped[:, 2] = raw[:, 2]
    return mapped


def reference_pose(keypoints: np.ndarray) -> Pose:
    points = tuple(
        Keypoint(name=name, x=float(keypoints[i, 1]), y=float(keypoints[i, 0]), score=float(keypoints[i, 2]))
        for i, name in enumerate(KEYPOINT_NAMES)
    )
    return Pose(keypoints=points, score=float(np.mean(keypoints[:, 2])))


# -- random inputs -------------------------------------------------------------------------------


def random_keypoints(rng: np.random.Generator) -> np.ndarray:
    """A body somewhere in (or partly out of) the frame, scores on both sides of the thresholds."""
    center = rng.uniform(-0.1, 1.1, size=2)
    spread = rng.uniform(0.01, 0.6)
    keypoints = np.empty((17, 3))
    keypoints[:, :2] = center + rng.normal(0.0, spread, size=(17, 2))
    keypoints[:, 2] = rng.choice([rng.uniform(0, 1), MIN_CROP_KEYPOINT_SCORE, 0.05, 0.9], size=17)
    return keypoints


def test_crop_region_matches_reference_on_random_bodies() -> None:
    rng = np.random.default_rng(14)
    for _ in range(3000):
        keypoints = random_keypoints(rng)
        h, w = FRAMES[rng.integers(len(FRAMES))]
        assert torso_visible(keypoints) == reference_torso_visible(keypoints)
        assert determine_crop_region(keypoints, h, w) == reference_crop_region(keypoints, h, w)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        assert astuple(torso_and_body_range(keypoints, cy, cx, h, w)) == reference_range(keypoints, cy, cx, h, w)


def test_crop_tracker_matches_reference_over_a_random_walk() -> None:
    rng = np.random.default_rng(15)
    # The reference is upstream's tracker: without the tightening of stable tracks (test_crop.py).
    fast, reference = CropRegionTracker(stable_ratios=None), ReferenceTracker()
    keypoints = random_keypoints(rng)
    for step in range(3000):
        if step % 200 == 0:
            keypoints = random_keypoints(rng)  # a new person, or the torso lost
        keypoints[:, :2] += rng.normal(0.0, 0.01, size=(17, 2))
        keypoints[:, 2] = np.clip(keypoints[:, 2] + rng.normal(0.0, 0.05, size=17), 0.0, 1.0)
        h, w = FRAMES[0] if step < 2500 else FRAMES[1]
        assert fast.next_box(keypoints, h, w) == reference.next_box(keypoints, h, w)


@pytest.mark.parametrize("threshold_cutoff", [0.5, None])
def test_one_euro_matches_reference_on_random_signals(threshold_cutoff: float | None) -> None:
    rng = np.random.default_rng(16)
    params = OneEuroParams(threshold_cutoff=threshold_cutoff)
    fast, reference = OneEuroFilter(params), ReferenceOneEuro(params)
    value = rng.random((17, 2))
    timestamp_s = 0.0
    for step in range(2000):
        value = value + rng.normal(0.0, 0.02 if step % 50 else 0.3, size=(17, 2))
        # Real intervals vary; a repeated stamp passes through; a stamp going back restarts.
        timestamp_s += rng.choice([1 / 30, 1 / 15, 0.004, 0.0]) if step % 700 else -1.0
        np.testing.assert_allclose(fast.apply(value, timestamp_s), reference.apply(value, timestamp_s), rtol=1e-12)


def test_keypoint_smoother_matches_reference_filter_in_long_side_units() -> None:
    rng = np.random.default_rng(17)
    smoother, reference = KeypointSmoother(), ReferenceOneEuro(OneEuroParams())
    to_units = np.array([480.0, 640.0]) / 640.0
    value = rng.random((17, 2))
    for step in range(500):
        value = value + rng.normal(0.0, 0.01, size=(17, 2))
        expected = reference.apply(value * to_units, step / 30) / to_units
        np.testing.assert_allclose(smoother.update(value, step / 30, 480, 640), expected, rtol=1e-12)


def test_decode_and_pose_match_reference() -> None:
    rng = np.random.default_rng(18)
    for _ in range(500):
        output = rng.random((1, 1, 17, 3)).astype(np.float32)
        box = CropBox(*rng.uniform(-0.5, 0.5, size=2), *rng.uniform(0.6, 1.5, size=2))
        decoded = decode_singlepose(output, box)
        np.testing.assert_array_equal(decoded, reference_decode(output, box))
        assert keypoints_to_pose(decoded) == reference_pose(decoded)


def test_mean_of_17_is_numpys_mean_bit_for_bit() -> None:
    rng = np.random.default_rng(19)
    for _ in range(5000):
        keypoints = rng.random((17, 3)) * 10.0 ** rng.integers(-4, 4)
        assert mean_of_17(keypoints[:, 2].tolist()) == float(np.mean(keypoints[:, 2]))


def test_keypoints_from_rows_are_ordinary_frozen_keypoints() -> None:
    rows = np.random.default_rng(20).random((17, 3)).tolist()
    fast = keypoints_from_rows(rows)
    slow = tuple(Keypoint(name=n, x=x, y=y, score=s) for n, (y, x, s) in zip(KEYPOINT_NAMES, rows, strict=True))
    assert fast == slow
    assert [repr(p) for p in fast] == [repr(p) for p in slow]
    assert [hash(p) for p in fast] == [hash(p) for p in slow]
    assert [asdict(p) for p in fast] == [asdict(p) for p in slow]
    assert all(type(p) is Keypoint for p in fast)
    with pytest.raises(FrozenInstanceError):
        fast[0].x = 0.5  # type: ignore[misc]
    with pytest.raises(ValueError):
        keypoints_from_rows(rows[:16])
