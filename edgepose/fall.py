"""Fall detection from keypoints (pure: numbers in, events out).

A fall is two things at once, within about a second:
  * the hip centre drops fast, by at least FALL_DROP_TORSOS torso lengths (a fall from standing
    drops it about 1.5 torso lengths; sitting down about 0.9, bending over about 0.2), and
  * the torso turns from upright (<= UPRIGHT_DEG from vertical) to horizontal (>= HORIZONTAL_DEG),
followed by the person staying down for `down_s` seconds. Sitting down keeps the torso upright;
bending to pick something up turns it without the drop and is over in a second or two; lying
down slowly turns it too slowly; a person walking out of the frame loses their keypoints.

Everything is measured in frame-height units (x scaled by the frame's aspect ratio), and drops
are divided by the torso length seen while upright, so the distance to the camera cancels out.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from edgepose.pose import KEYPOINT_INDEX, Pose
from edgepose.presence import Event, EventKind

FALL_WINDOW_S = 1.0  # upright to horizontal within this long
FALL_DROP_TORSOS = 1.0
UPRIGHT_DEG = 35.0
HORIZONTAL_DEG = 60.0
MIN_KEYPOINT_SCORE = 0.3
# A track that has not been seen for this long is forgotten (multi-pose ids are not reused).
FORGET_S = 30.0

_SHOULDERS = (KEYPOINT_INDEX["left_shoulder"], KEYPOINT_INDEX["right_shoulder"])
_HIPS = (KEYPOINT_INDEX["left_hip"], KEYPOINT_INDEX["right_hip"])


@dataclass(frozen=True)
class BodySample:
    monotonic_s: float
    hip_y: float  # hip centre, frame heights from the top (grows downwards)
    torso_deg: float  # 0 = shoulders straight above the hips, 90 = lying
    torso_len: float  # shoulder centre to hip centre, frame heights


def _centre(pose: Pose, indices: tuple[int, int], aspect: float) -> tuple[float, float] | None:
    points = [pose.keypoints[i] for i in indices if pose.keypoints[i].score >= MIN_KEYPOINT_SCORE]
    if not points:
        return None
    return sum(p.x for p in points) / len(points) * aspect, sum(p.y for p in points) / len(points)


def body_sample(pose: Pose, aspect: float, monotonic_s: float) -> BodySample | None:
    """The torso of one pose, or None when a shoulder or a hip is not seen well enough."""
    shoulder = _centre(pose, _SHOULDERS, aspect)
    hip = _centre(pose, _HIPS, aspect)
    if shoulder is None or hip is None:
        return None
    dx, dy = shoulder[0] - hip[0], shoulder[1] - hip[1]
    length = math.hypot(dx, dy)
    if length < 1e-3:
        return None
    return BodySample(monotonic_s, hip[1], math.degrees(math.atan2(abs(dx), -dy)), length)


@dataclass
class _Pending:
    started_s: float
    upright_hip_y: float
    drop: float  # torso lengths
    torso_len: float


@dataclass
class _Track:
    history: deque[BodySample] = field(default_factory=deque)
    pending: _Pending | None = None
    armed: bool = True  # re-armed once the person is seen upright again after an alert
    last_seen_s: float = 0.0


class FallDetector:
    def __init__(self, down_s: float) -> None:
        self.down_s = down_s
        self._tracks: dict[int, _Track] = {}

    def observe(
        self, poses: tuple[Pose, ...], aspect: float, timestamp_s: float, monotonic_s: float
    ) -> tuple[Event, ...]:
        """One frame's poses; `aspect` is the frame's width / height."""
        events = []
        for index, pose in enumerate(poses):
            key = pose.track_id if pose.track_id is not None else index
            sample = body_sample(pose, aspect, monotonic_s)
            if sample is None:
                continue
            track = self._tracks.setdefault(key, _Track())
            event = self._step(track, sample, key, timestamp_s)
            if event is not None:
                events.append(event)
        for key in [k for k, t in self._tracks.items() if monotonic_s - t.last_seen_s > FORGET_S]:
            del self._tracks[key]
        return tuple(events)

    def _step(self, track: _Track, sample: BodySample, key: int, timestamp_s: float) -> Event | None:
        track.last_seen_s = sample.monotonic_s
        history = track.history
        history.append(sample)
        while history and sample.monotonic_s - history[0].monotonic_s > FALL_WINDOW_S:
            history.popleft()

        pending = track.pending
        if pending is not None:
            half_way_y = pending.upright_hip_y + 0.5 * FALL_DROP_TORSOS * pending.torso_len
            if sample.torso_deg <= UPRIGHT_DEG and sample.hip_y < half_way_y:
                track.pending = None  # back up: a stumble, a bend, not a fall
            elif sample.monotonic_s - pending.started_s >= self.down_s:
                track.pending = None
                track.armed = False
                return Event(
                    EventKind.FALL_DETECTED,
                    timestamp_s,
                    person=key,
                    drop=round(pending.drop, 2),
                    down_s=round(sample.monotonic_s - pending.started_s, 2),
                )
            return None

        if not track.armed:
            if sample.torso_deg <= UPRIGHT_DEG:
                track.armed = True
            return None
        if sample.torso_deg < HORIZONTAL_DEG:
            return None
        # Horizontal now: was the person upright and higher, less than a window ago?
        upright = [s for s in history if s.torso_deg <= UPRIGHT_DEG]
        if not upright:
            return None
        highest = min(upright, key=lambda s: s.hip_y)
        drop = (sample.hip_y - highest.hip_y) / highest.torso_len
        if drop >= FALL_DROP_TORSOS:
            track.pending = _Pending(sample.monotonic_s, highest.hip_y, drop, highest.torso_len)
        return None
