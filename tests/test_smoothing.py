"""One-euro filter tests: hand-computed steps, timestamp handling, and jitter/lag on synthetic motion."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgepose.smoothing import MOVENET_ONE_EURO, KeypointSmoother, OneEuroFilter, OneEuroParams

RATE_HZ = 30.0
DT_S = 1.0 / RATE_HZ
H_PX, W_PX = 480, 640

# A cutoff of rate / (2 pi) gives alpha = 1 / (1 + 1) = 0.5 at 30 Hz, which keeps hand sums easy.
HALF_CUTOFF_HZ = RATE_HZ / (2 * math.pi)


def test_movenet_params_are_tfjs_keypoint_filter_config() -> None:
    assert (
        OneEuroParams(
            frequency_hz=30.0,
            min_cutoff_hz=2.5,
            beta=300.0,
            derivative_cutoff_hz=2.5,
            threshold_cutoff=0.5,
            threshold_beta=5.0,
        )
        == MOVENET_ONE_EURO
    )


def test_plain_low_pass_when_beta_is_zero() -> None:
    f = OneEuroFilter(OneEuroParams(min_cutoff_hz=HALF_CUTOFF_HZ, beta=0.0, threshold_cutoff=None))
    assert float(f.apply(0.0, 0.0)) == 0.0  # first sample passes through
    assert float(f.apply(1.0, DT_S)) == pytest.approx(0.5)  # 0 + 0.5 * (1 - 0)
    assert float(f.apply(1.0, 2 * DT_S)) == pytest.approx(0.75)  # 0.5 + 0.5 * (1 - 0.5)


def test_speed_raises_the_cutoff() -> None:
    # speed: first sample 0; then raw (1 - 0) * 30 = 30/s, low-passed at alpha 0.5 -> 15/s.
    # beta = 2/pi makes cutoff = HALF_CUTOFF + 15 * 2/pi = 3 * HALF_CUTOFF -> alpha = 1 / (1 + 1/3) = 0.75
    params = OneEuroParams(
        min_cutoff_hz=HALF_CUTOFF_HZ,
        derivative_cutoff_hz=HALF_CUTOFF_HZ,
        beta=2 / math.pi,
        threshold_cutoff=None,
    )
    f = OneEuroFilter(params)
    f.apply(0.0, 0.0)
    assert float(f.apply(1.0, DT_S)) == pytest.approx(0.75)


def test_threshold_caps_large_steps_with_asinh() -> None:
    params = OneEuroParams(min_cutoff_hz=HALF_CUTOFF_HZ, beta=0.0, threshold_cutoff=0.1, threshold_beta=0.0)
    f = OneEuroFilter(params)
    f.apply(0.0, 0.0)
    # 0 + alpha * threshold * asinh(step / threshold) = 0.5 * 0.1 * asinh(10)
    assert float(f.apply(1.0, DT_S)) == pytest.approx(0.05 * math.asinh(10.0))


def test_rate_comes_from_the_real_interval() -> None:
    # A 1/15 s gap at cutoff rate/(2 pi): alpha = 1 / (1 + 15 / 30) = 2/3 instead of 0.5.
    f = OneEuroFilter(OneEuroParams(min_cutoff_hz=HALF_CUTOFF_HZ, beta=0.0, threshold_cutoff=None))
    f.apply(0.0, 10.0)
    assert float(f.apply(1.0, 10.0 + 2 * DT_S)) == pytest.approx(2 / 3)


def test_repeated_timestamp_passes_through_and_keeps_state() -> None:
    f = OneEuroFilter(OneEuroParams(min_cutoff_hz=HALF_CUTOFF_HZ, beta=0.0, threshold_cutoff=None))
    f.apply(0.0, 1.0)
    assert float(f.apply(5.0, 1.0)) == 5.0
    assert float(f.apply(1.0, 1.0 + DT_S)) == pytest.approx(0.5)  # as if the repeat never happened


def test_backwards_timestamp_restarts() -> None:
    f = OneEuroFilter(OneEuroParams(min_cutoff_hz=HALF_CUTOFF_HZ, beta=0.0, threshold_cutoff=None))
    f.apply(0.0, 5.0)
    f.apply(1.0, 5.0 + DT_S)
    assert float(f.apply(7.0, 1.0)) == 7.0  # restarted: first sample passes through
    assert float(f.apply(8.0, 1.0 + DT_S)) == pytest.approx(7.5)


def test_vectorized_matches_elementwise() -> None:
    rng = np.random.default_rng(7)
    series = rng.normal(size=(20, 3))
    together = OneEuroFilter()
    apart = [OneEuroFilter() for _ in range(3)]
    for i, row in enumerate(series):
        out = together.apply(row, i * DT_S)
        expected = [float(apart[j].apply(row[j], i * DT_S)) for j in range(3)]
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-15)


def _static_pose_with_jitter(sigma_px: float, frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.8, size=(17, 2))
    sigma = sigma_px / np.array([H_PX, W_PX])
    return base, base + rng.normal(size=(frames, 17, 2)) * sigma


def _frame_to_frame_jitter(series: np.ndarray) -> float:
    return float(np.abs(np.diff(series, axis=0)).mean())


def _tfjs_one_euro(values: list[float], times_s: list[float], p: OneEuroParams) -> list[float]:
    """A scalar transcription of tfjs-models `one_euro_filter.ts` (LowPassFilter.applyWithAlpha, the
    derivative filter, cutoff = minCutOff + beta * |dx|, the asinh threshold): an oracle written apart
    from the vectorised module, one value and one line of the algorithm at a time."""
    out: list[float] = []
    last_raw = filtered = d_filtered = 0.0
    last_t: float | None = None
    for value, t in zip(values, times_s, strict=True):
        if last_t is None:
            last_raw, filtered, d_filtered, last_t = value, value, 0.0, t
            out.append(value)
            continue
        rate_hz = 1.0 / (t - last_t)
        last_t = t

        def alpha(cutoff_hz: float, rate_hz: float = rate_hz) -> float:
            tau_s = 1.0 / (2.0 * math.pi * cutoff_hz)
            return 1.0 / (1.0 + tau_s * rate_hz)

        d_raw = (value - last_raw) * rate_hz
        d_filtered = alpha(p.derivative_cutoff_hz) * d_raw + (1 - alpha(p.derivative_cutoff_hz)) * d_filtered
        cutoff_hz = p.min_cutoff_hz + p.beta * abs(d_filtered)
        assert p.threshold_cutoff is not None
        threshold = p.threshold_cutoff + p.threshold_beta * abs(d_filtered)
        filtered += alpha(cutoff_hz) * threshold * math.asinh((value - filtered) / threshold)
        last_raw = value
        out.append(filtered)
    return out


def test_jitter_is_reduced_on_a_still_pose() -> None:
    """2 px (sigma) of seeded noise on a still 640x480 pose, tfjs MoveNet params.

    The reduction is what the tfjs algorithm gives on this noise (checked point by point against the
    scalar transcription above), and must sit between two bounds worked out apart from the code: a
    one-euro filter never smooths more than a plain EMA at its minimum cutoff, whose frame-to-frame
    jitter ratio on white noise is alpha / sqrt(2 - alpha) (alpha = 0.344 at 2.5 Hz and 30 fps: 0.27);
    and it must remove at least a quarter of the jitter (ratio < 0.75). tfjs's beta of 300 is tuned for
    low lag, so the reduction is moderate.
    """
    _, raw = _static_pose_with_jitter(sigma_px=2.0, frames=300, seed=1234)
    smoother = KeypointSmoother()
    out = np.array([smoother.update(raw[i], i * DT_S, H_PX, W_PX) for i in range(len(raw))])

    # The oracle runs in the module's units, fractions of the longer side (see smoothing.py's doc).
    to_units = np.array([H_PX, W_PX]) / max(H_PX, W_PX)
    times_s = [i * DT_S for i in range(len(raw))]
    for joint in (0, 7, 16):
        for axis in (0, 1):
            expected = _tfjs_one_euro(list(raw[:, joint, axis] * to_units[axis]), times_s, MOVENET_ONE_EURO)
            np.testing.assert_allclose(out[:, joint, axis] * to_units[axis], expected, rtol=0, atol=1e-12)

    ratio = _frame_to_frame_jitter(out[30:]) / _frame_to_frame_jitter(raw[30:])
    min_alpha = 1.0 / (1.0 + RATE_HZ / (2 * math.pi * MOVENET_ONE_EURO.min_cutoff_hz))
    assert min_alpha / math.sqrt(2 - min_alpha) < ratio < 0.75


def test_step_is_followed_within_one_frame() -> None:
    """A 20 px jump reaches >= 90% of the step on the first frame after it (measured 95.4%)."""
    smoother = KeypointSmoother()
    still = np.full((17, 2), 0.5)
    moved = still + np.array([0.0, 20.0 / W_PX])
    fractions = []
    for i in range(30):
        out = smoother.update(still if i < 10 else moved, i * DT_S, H_PX, W_PX)
        fractions.append((out[0, 1] - 0.5) / (20.0 / W_PX))
    assert fractions[9] == 0.0
    assert fractions[10] >= 0.9
    assert min(fractions[10:]) >= 0.9
    assert fractions[-1] == pytest.approx(1.0, abs=1e-3)


def test_ramp_lag_is_under_half_a_frame() -> None:
    """Moving at 0.2 frame widths per second, the output trails by under 0.5 frame (measured 0.08)."""
    speed_per_s = 0.2
    smoother = KeypointSmoother()
    start = np.full((17, 2), 0.3)
    for i in range(60):
        truth = start + np.array([0.0, speed_per_s * i * DT_S])
        out = smoother.update(truth, i * DT_S, H_PX, W_PX)
    lag_frames = (truth[0, 1] - out[0, 1]) / (speed_per_s * DT_S)
    assert 0.0 < lag_frames < 0.5


def test_gap_longer_than_max_restarts() -> None:
    smoother = KeypointSmoother(max_gap_s=1.0)
    a = np.full((17, 2), 0.4)
    b = np.full((17, 2), 0.6)
    smoother.update(a, 0.0, H_PX, W_PX)
    held = smoother.update(b, 1.0, H_PX, W_PX)  # exactly 1 s: still filtered
    assert not np.allclose(held, b)
    smoother.update(a, 2.0, H_PX, W_PX)
    after_gap = smoother.update(b, 3.01, H_PX, W_PX)
    np.testing.assert_array_equal(after_gap, b)


def test_frame_size_change_restarts() -> None:
    smoother = KeypointSmoother()
    smoother.update(np.full((17, 2), 0.4), 0.0, H_PX, W_PX)
    out = smoother.update(np.full((17, 2), 0.6), DT_S, 720, 1280)
    np.testing.assert_allclose(out, 0.6, rtol=0, atol=1e-15)


def test_result_does_not_depend_on_resolution() -> None:
    """Filtering in normalized units: the same motion at 640x480 and 1280x960 smooths identically."""
    _, raw = _static_pose_with_jitter(sigma_px=2.0, frames=50, seed=3)
    small, large = KeypointSmoother(), KeypointSmoother()
    for i, frame in enumerate(raw):
        np.testing.assert_allclose(
            small.update(frame, i * DT_S, 480, 640),
            large.update(frame, i * DT_S, 960, 1280),
            rtol=0,
            atol=1e-12,
        )


def test_tracks_are_smoothed_independently_of_order() -> None:
    _, raw_a = _static_pose_with_jitter(sigma_px=2.0, frames=20, seed=11)
    _, raw_b = _static_pose_with_jitter(sigma_px=2.0, frames=20, seed=12)
    together = KeypointSmoother()
    alone_a, alone_b = KeypointSmoother(), KeypointSmoother()
    for i in range(20):
        # the multi-pose model may list the people in either order from frame to frame
        if i % 2:
            out = together.update(np.stack([raw_b[i], raw_a[i]]), i * DT_S, H_PX, W_PX, track_ids=[2, 1])
            out_a, out_b = out[1], out[0]
        else:
            out = together.update(np.stack([raw_a[i], raw_b[i]]), i * DT_S, H_PX, W_PX, track_ids=[1, 2])
            out_a, out_b = out[0], out[1]
        np.testing.assert_allclose(out_a, alone_a.update(raw_a[i], i * DT_S, H_PX, W_PX), atol=1e-15)
        np.testing.assert_allclose(out_b, alone_b.update(raw_b[i], i * DT_S, H_PX, W_PX), atol=1e-15)


def test_untracked_pose_count_change_restarts() -> None:
    smoother = KeypointSmoother()
    smoother.update(np.full((1, 17, 2), 0.4), 0.0, H_PX, W_PX)
    out = smoother.update(np.full((2, 17, 2), 0.6), DT_S, H_PX, W_PX)
    np.testing.assert_allclose(out, 0.6, rtol=0, atol=1e-15)


def test_rejects_bad_input() -> None:
    smoother = KeypointSmoother()
    with pytest.raises(ValueError, match="17, 2"):
        smoother.update(np.zeros((17, 3)), 0.0, H_PX, W_PX)
    with pytest.raises(ValueError, match="unique"):
        smoother.update(np.zeros((2, 17, 2)), 0.0, H_PX, W_PX, track_ids=[1, 1])
    with pytest.raises(ValueError, match="track ids"):
        smoother.update(np.zeros((2, 17, 2)), 0.0, H_PX, W_PX, track_ids=[1])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"frequency_hz": 0.0}, "frequency and cutoffs must be positive"),
        ({"min_cutoff_hz": 0.0}, "frequency and cutoffs must be positive"),
        ({"derivative_cutoff_hz": 0.0}, "frequency and cutoffs must be positive"),
        ({"frequency_hz": -1.0}, "frequency and cutoffs must be positive"),
        ({"beta": -0.1}, "beta and threshold_beta must not be negative"),
        ({"threshold_beta": -0.1}, "beta and threshold_beta must not be negative"),
        ({"threshold_cutoff": 0.0}, "threshold_cutoff must be positive or None"),
        ({"threshold_cutoff": -0.5}, "threshold_cutoff must be positive or None"),
    ],
)
def test_params_refuse_values_the_filter_cannot_use(fields: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OneEuroParams(**fields)


def test_params_accept_the_edges_of_their_ranges() -> None:
    tiny = 1e-9
    OneEuroParams(frequency_hz=tiny, min_cutoff_hz=tiny, derivative_cutoff_hz=tiny, beta=0.0, threshold_beta=0.0)
    OneEuroParams(threshold_cutoff=None)
    OneEuroParams(threshold_cutoff=tiny)


@pytest.mark.parametrize("max_gap_s", [0.0, -1.0])
def test_smoother_refuses_a_gap_that_is_not_positive(max_gap_s: float) -> None:
    with pytest.raises(ValueError, match=f"max_gap_s must be positive, got {max_gap_s}"):
        KeypointSmoother(max_gap_s=max_gap_s)


def test_smoother_uses_the_params_it_is_given() -> None:
    plain = OneEuroParams(min_cutoff_hz=HALF_CUTOFF_HZ, beta=0.0, threshold_cutoff=None)
    smoother = KeypointSmoother(plain, max_gap_s=0.5)
    smoother.update(np.full((17, 2), 0.0), 0.0, H_PX, W_PX)
    np.testing.assert_allclose(smoother.update(np.full((17, 2), 0.5), DT_S, H_PX, W_PX), 0.25, atol=1e-12)
    # 0.5 s is the gap it was given: 0.6 s later the filter restarts.
    np.testing.assert_allclose(smoother.update(np.full((17, 2), 0.1), DT_S + 0.6, H_PX, W_PX), 0.1, atol=1e-15)
    # After a reset the first sample passes through, and the tracks use the same params.
    smoother.reset()
    np.testing.assert_allclose(smoother.update(np.full((17, 2), 0.3), 5.0, H_PX, W_PX), 0.3, atol=1e-15)
    tracked = KeypointSmoother(plain)
    tracked.update(np.zeros((1, 17, 2)), 0.0, H_PX, W_PX, track_ids=[4])
    np.testing.assert_allclose(tracked.update(np.full((1, 17, 2), 0.5), DT_S, H_PX, W_PX, track_ids=[4]), 0.25)


def test_filter_reset_starts_over_at_the_configured_rate() -> None:
    f = OneEuroFilter(OneEuroParams(min_cutoff_hz=HALF_CUTOFF_HZ, beta=0.0, threshold_cutoff=None))
    f.apply(0.0, 0.0)
    f.apply(1.0, 0.5)  # a 2 Hz rate
    f.reset()
    assert f.last_timestamp_s is None
    assert float(f.apply(4.0, 10.0)) == 4.0  # first sample again
    assert float(f.apply(5.0, 10.0 + DT_S)) == pytest.approx(4.5)  # alpha from the real interval: 0.5


def test_a_shape_change_restarts_the_filter() -> None:
    f = OneEuroFilter()
    f.apply(np.zeros(3), 0.0)
    np.testing.assert_array_equal(f.apply(np.ones(4), DT_S), np.ones(4))


def test_tracks_unseen_for_longer_than_the_gap_start_over() -> None:
    plain = OneEuroParams(min_cutoff_hz=HALF_CUTOFF_HZ, beta=0.0, threshold_cutoff=None)
    smoother = KeypointSmoother(plain, max_gap_s=1.0)
    smoother.update(np.zeros((1, 17, 2)), 0.0, H_PX, W_PX, track_ids=[1])
    smoother.update(np.zeros((1, 17, 2)), 0.5, H_PX, W_PX, track_ids=[2])  # track 1 not seen
    # Track 1 was last seen 1.5 s ago: a fresh start, not a blend with 0.
    out = smoother.update(np.full((2, 17, 2), 0.5), 1.5, H_PX, W_PX, track_ids=[1, 2])
    np.testing.assert_allclose(out[0], 0.5, atol=1e-15)
    assert not np.allclose(out[1], 0.5)  # track 2, 1 s later (not more than the gap): still filtered


def test_rejects_bad_shapes_and_sizes_with_the_reason() -> None:
    smoother = KeypointSmoother()
    with pytest.raises(ValueError, match=r"keypoints_yx must be \(17, 2\) or \(N, 17, 2\), got \(17,\)"):
        smoother.update(np.zeros(17), 0.0, H_PX, W_PX)
    with pytest.raises(ValueError, match=r"got \(1, 1, 17, 2\)"):
        smoother.update(np.zeros((1, 1, 17, 2)), 0.0, H_PX, W_PX)
    for height_px, width_px in [(0, 640), (480, 0)]:
        with pytest.raises(ValueError, match=f"frame size must be positive, got {width_px}x{height_px}"):
            smoother.update(np.zeros((17, 2)), 0.0, height_px, width_px)
    with pytest.raises(ValueError, match=r"got 1 track ids for 2 poses"):
        smoother.update(np.zeros((2, 17, 2)), 0.0, H_PX, W_PX, track_ids=[1])
    with pytest.raises(ValueError, match=r"track ids must be unique within a frame, got \[1, 1\]"):
        smoother.update(np.zeros((2, 17, 2)), 0.0, H_PX, W_PX, track_ids=[1, 1])
    # One pose with ids: a (17, 2) comes back as (17, 2).
    assert smoother.update(np.zeros((17, 2)), 0.0, H_PX, W_PX, track_ids=[7]).shape == (17, 2)


def test_integer_input_is_filtered_as_float() -> None:
    f = OneEuroFilter(OneEuroParams(min_cutoff_hz=HALF_CUTOFF_HZ, beta=0.0, threshold_cutoff=None))
    first = f.apply([0, 0], 0.0)
    assert first.dtype == np.float64
    np.testing.assert_allclose(f.apply([1, 3], DT_S), [0.5, 1.5])


def test_default_gap_is_one_second() -> None:
    smoother = KeypointSmoother()
    smoother.update(np.full((17, 2), 0.4), 0.0, H_PX, W_PX)
    np.testing.assert_allclose(smoother.update(np.full((17, 2), 0.6), 1.5, H_PX, W_PX), 0.6, atol=1e-15)


def test_a_track_back_exactly_one_gap_later_is_still_filtered() -> None:
    plain = OneEuroParams(min_cutoff_hz=HALF_CUTOFF_HZ, beta=0.0, threshold_cutoff=None)
    smoother = KeypointSmoother(plain, max_gap_s=1.0)
    smoother.update(np.zeros((1, 17, 2)), 0.0, H_PX, W_PX, track_ids=[1])
    smoother.update(np.zeros((1, 17, 2)), 1.0, H_PX, W_PX, track_ids=[2])  # track 1 unseen for exactly 1 s
    out = smoother.update(np.full((1, 17, 2), 0.5), 1.0, H_PX, W_PX, track_ids=[1])
    assert not np.allclose(out, 0.5)  # not more than the gap: filtered, not restarted


def test_tracks_gone_for_longer_than_the_gap_are_forgotten() -> None:
    """Memory stays bounded however many people pass: one filter per track seen within the gap."""
    smoother = KeypointSmoother(max_gap_s=1.0)
    for step in range(50):
        smoother.update(np.zeros((1, 17, 2)), step * 0.5, H_PX, W_PX, track_ids=[step])
    assert len(smoother._tracks) <= 3


def test_a_one_pixel_frame_is_a_frame() -> None:
    out = KeypointSmoother().update(np.full((17, 2), 0.5), 0.0, 1, 1)
    np.testing.assert_allclose(out, 0.5)
