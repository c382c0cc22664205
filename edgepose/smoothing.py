"""One-euro filtering of keypoints over time, as tfjs-models does for MoveNet.

Ported from tfjs-models `shared/filters/one_euro_filter.ts`, `low_pass_filter.ts` and
`keypoints_one_euro_filter.ts`, with MoveNet's `KEYPOINT_FILTER_CONFIG` from
`pose-detection/src/movenet/constants.ts`: frequency 30, minCutOff 2.5, beta 300, derivateCutOff
2.5, thresholdCutOff 0.5, thresholdBeta 5, disableValueScaling true.

Which units the filter runs in matters, because beta multiplies a speed. tfjs's MoveNet detector
filters keypoints while they are still normalized to the image (0..1), and multiplies by the image
size only afterwards, so beta 300 is tuned for speeds in image-fractions per second. In pixels the
same beta would open the cutoff to hundreds of Hz at a drift of one pixel per second, which
disables smoothing, and the result would change with the camera resolution. So this module filters
in frame-normalized units too, with one change: both axes are divided by the frame's longer side
instead of each by its own, so that a given motion in pixels reads as the same speed whichever
way it points. On the longer axis this is exactly tfjs's scale; on the shorter one speeds read
slightly lower (x0.75 for 4:3), so that axis is smoothed slightly more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edgepose.pose import NUM_KEYPOINTS


@dataclass(frozen=True)
class OneEuroParams:
    """One-euro filter settings. Speeds are in filtered units per second (see the module doc)."""

    # Only used for the alphas before a second timestamp gives a real rate.
    frequency_hz: float = 30.0
    min_cutoff_hz: float = 2.5
    # Cutoff gained per unit/s of filtered speed.
    beta: float = 300.0
    derivative_cutoff_hz: float = 2.5
    # tfjs's extra non-linearity: steps much larger than the threshold are followed at a log-like
    # rate (asinh), which caps outliers. None turns it off (the plain one-euro filter).
    threshold_cutoff: float | None = 0.5
    threshold_beta: float = 5.0

    def __post_init__(self) -> None:
        if self.frequency_hz <= 0 or self.min_cutoff_hz <= 0 or self.derivative_cutoff_hz <= 0:
            raise ValueError(f"frequency and cutoffs must be positive: {self}")
        if self.beta < 0 or self.threshold_beta < 0:
            raise ValueError(f"beta and threshold_beta must not be negative: {self}")
        if self.threshold_cutoff is not None and self.threshold_cutoff <= 0:
            raise ValueError(f"threshold_cutoff must be positive or None: {self}")


# tfjs-models pose-detection/src/movenet/constants.ts KEYPOINT_FILTER_CONFIG.
MOVENET_ONE_EURO = OneEuroParams()


def _alpha(cutoff_hz: npt.NDArray[np.float64] | float, frequency_hz: float) -> npt.NDArray[np.float64]:
    # Same as 1 / (1 + tau / te) with tau = 1 / (2 pi cutoff), te = 1 / frequency.
    return np.asarray(1.0 / (1.0 + frequency_hz / (2.0 * np.pi * np.asarray(cutoff_hz))), dtype=np.float64)


class OneEuroFilter:
    """A one-euro filter over a scalar or over every element of an array, sharing one clock.

    Timestamps are in seconds and the sampling rate comes from their differences, so dropped or
    slow frames are filtered with the interval that really passed. A repeated timestamp returns
    the input unchanged and leaves the state alone (as tfjs does); a timestamp earlier than the
    last one (a restarted source, a looped file) restarts the filter.
    """

    def __init__(self, params: OneEuroParams = MOVENET_ONE_EURO) -> None:
        self._params = params
        self._frequency_hz = params.frequency_hz
        self._last_timestamp_s: float | None = None
        self._last_raw: npt.NDArray[np.float64] | None = None
        self._smoothed: npt.NDArray[np.float64] | None = None
        self._speed: npt.NDArray[np.float64] | None = None
        self._work: npt.NDArray[np.float64] = np.empty(0)
        self._alphas: npt.NDArray[np.float64] = np.empty(0)

    @property
    def last_timestamp_s(self) -> float | None:
        return self._last_timestamp_s

    def reset(self) -> None:
        self._frequency_hz = self._params.frequency_hz
        self._last_timestamp_s = None
        self._last_raw = None
        self._smoothed = None
        self._speed = None

    def apply(self, value: npt.ArrayLike, timestamp_s: float) -> npt.NDArray[np.float64]:
        """Filter `value` (any shape, fixed between calls) seen at `timestamp_s`; returns a new array."""
        raw = np.array(value, dtype=np.float64)
        if self._last_timestamp_s is not None:
            if timestamp_s == self._last_timestamp_s:
                return raw
            if timestamp_s < self._last_timestamp_s:
                self.reset()
        if self._smoothed is not None and self._smoothed.shape != raw.shape:
            self.reset()
        if self._last_timestamp_s is not None:
            self._frequency_hz = 1.0 / (timestamp_s - self._last_timestamp_s)
        self._last_timestamp_s = timestamp_s

        p = self._params
        if self._last_raw is None or self._smoothed is None or self._speed is None:
            # First sample: no speed yet, and the value passes through.
            self._last_raw = raw
            self._smoothed = raw.copy()
            self._speed = np.zeros_like(raw)
            self._work = np.empty_like(raw)
            self._alphas = np.empty_like(raw)
            return raw.copy()

        # The same arithmetic as tfjs, written into buffers kept from frame to frame: this runs for
        # every video frame on 34 numbers, where numpy's cost is the number of calls, not the size.
        frequency_hz = self._frequency_hz
        work, alphas, speed = self._work, self._alphas, self._speed
        np.subtract(raw, self._last_raw, out=work)
        work *= frequency_hz  # the raw speed
        work -= speed
        work *= float(_alpha(p.derivative_cutoff_hz, frequency_hz))
        speed += work  # low-passed speed
        abs_speed = np.abs(speed, out=work)
        # _alpha(min_cutoff + beta * |speed|): 1 / (1 + f / (2 pi cutoff)).
        np.multiply(abs_speed, p.beta, out=alphas)
        alphas += p.min_cutoff_hz
        alphas *= 2.0 * np.pi
        np.divide(frequency_hz, alphas, out=alphas)
        alphas += 1.0
        np.divide(1.0, alphas, out=alphas)
        smoothed = self._smoothed
        if p.threshold_cutoff is None:
            np.subtract(raw, smoothed, out=work)
            work *= alphas
        else:
            threshold = abs_speed  # reuses `work`: |speed| is not needed after this
            threshold *= p.threshold_beta
            threshold += p.threshold_cutoff
            alphas *= threshold
            raw_step = self._last_raw  # its last use was above; `raw` replaces it below
            np.subtract(raw, smoothed, out=raw_step)
            raw_step /= threshold
            np.arcsinh(raw_step, out=raw_step)
            np.multiply(alphas, raw_step, out=work)
        smoothed += work
        self._last_raw = raw
        return smoothed.copy()


class KeypointSmoother:
    """Smooths frame-normalized keypoint (y, x) over frames with one-euro filters.

    `update` takes (17, 2) or (N, 17, 2) frame-normalized [y, x]. Without `track_ids` the whole
    array is one signal, so N must stay the same (a change restarts smoothing); with `track_ids`
    (one per pose, e.g. from the multi-pose tracker) each track keeps its own filter, as tfjs keeps
    one per track ID. Smoothing restarts after a gap longer than `max_gap_s`, where the last
    position says little about the next, and when the frame size changes.
    """

    def __init__(self, params: OneEuroParams = MOVENET_ONE_EURO, max_gap_s: float = 1.0) -> None:
        if max_gap_s <= 0:
            raise ValueError(f"max_gap_s must be positive, got {max_gap_s}")
        self._params = params
        self._max_gap_s = max_gap_s
        self._untracked = OneEuroFilter(params)
        self._tracks: dict[int, OneEuroFilter] = {}
        self._frame_size_px: tuple[int, int] | None = None
        self._to_units = np.ones(2)

    def reset(self) -> None:
        self._untracked = OneEuroFilter(self._params)
        self._tracks = {}
        self._frame_size_px = None

    def update(
        self,
        keypoints_yx: np.ndarray,
        timestamp_s: float,
        frame_height_px: int,
        frame_width_px: int,
        track_ids: Sequence[int] | None = None,
    ) -> npt.NDArray[np.float64]:
        """Smoothed frame-normalized [y, x], same shape as `keypoints_yx`."""
        yx = np.asarray(keypoints_yx, dtype=np.float64)
        if yx.shape[-2:] != (NUM_KEYPOINTS, 2) or yx.ndim not in (2, 3):
            raise ValueError(f"keypoints_yx must be (17, 2) or (N, 17, 2), got {yx.shape}")
        if frame_height_px <= 0 or frame_width_px <= 0:
            raise ValueError(f"frame size must be positive, got {frame_width_px}x{frame_height_px}")
        if self._frame_size_px != (frame_height_px, frame_width_px):
            self.reset()
            self._frame_size_px = (frame_height_px, frame_width_px)
            long_side_px = max(frame_height_px, frame_width_px)
            self._to_units = np.array([frame_height_px, frame_width_px], dtype=np.float64) / long_side_px

        # frame-normalized -> fractions of the longer side (see the module doc)
        to_units = self._to_units
        units = yx * to_units

        if track_ids is None:
            out = self._filter(self._untracked, units, timestamp_s)
        else:
            out = self._filter_tracks(units, timestamp_s, track_ids)
        return out / to_units

    def _filter(
        self, one_euro: OneEuroFilter, units: npt.NDArray[np.float64], timestamp_s: float
    ) -> npt.NDArray[np.float64]:
        last_s = one_euro.last_timestamp_s
        if last_s is not None and timestamp_s - last_s > self._max_gap_s:
            one_euro.reset()
        return one_euro.apply(units, timestamp_s)

    def _filter_tracks(
        self, units: npt.NDArray[np.float64], timestamp_s: float, track_ids: Sequence[int]
    ) -> npt.NDArray[np.float64]:
        poses = units if units.ndim == 3 else units[np.newaxis]
        ids = [int(i) for i in track_ids]
        if len(ids) != poses.shape[0]:
            raise ValueError(f"got {len(ids)} track ids for {poses.shape[0]} poses")
        if len(set(ids)) != len(ids):
            raise ValueError(f"track ids must be unique within a frame, got {ids}")
        out = np.empty_like(poses)
        for row, track_id in enumerate(ids):
            one_euro = self._tracks.get(track_id)
            if one_euro is None:
                one_euro = self._tracks[track_id] = OneEuroFilter(self._params)
            out[row] = self._filter(one_euro, poses[row], timestamp_s)
        # Tracks unseen for longer than a gap would restart anyway: drop them so memory stays bounded.
        for track_id in list(self._tracks):
            last_s = self._tracks[track_id].last_timestamp_s
            if last_s is None or timestamp_s - last_s > self._max_gap_s:
                del self._tracks[track_id]
        return out if units.ndim == 3 else out[0]
