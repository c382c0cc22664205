"""Fall detection on synthetic keypoint sequences: what must trigger and what must not.

A body is drawn from its hip centre, torso angle and torso length, as a camera 640x480 would see
a person about half the frame tall; keypoints get a little seeded jitter like a real model's.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import jsonschema
import pytest

from edgepose.fall import FallDetector, body_sample
from edgepose.mqtt.events import event_payload
from edgepose.pose import KEYPOINT_NAMES, Keypoint, Pose
from edgepose.presence import Event, EventKind
from tests.test_payloads import load_schema

ASPECT = 640 / 480
TORSO = 0.15  # frame heights
FLOOR_Y = 0.85
STANDING_HIP_Y = FLOOR_Y - 1.7 * TORSO
LYING_HIP_Y = FLOOR_Y - 0.1 * TORSO
T0 = 1_700_000_000.0


@dataclass(frozen=True)
class Body:
    hip_x: float
    hip_y: float
    torso_deg: float  # 0 upright, 90 lying (leaning to +x)
    visible: bool = True


def make_pose(body: Body, rng: random.Random, jitter: float = 0.004) -> Pose:
    """17 keypoints: the torso from the body, head above the shoulders, legs below the hips."""
    angle = math.radians(body.torso_deg)
    ux, uy = math.sin(angle) / ASPECT, -math.cos(angle)  # towards the head, in normalized units
    half_w = 0.03 / ASPECT
    # Perpendicular (shoulder and hip width) direction.
    px, py = math.cos(angle), math.sin(angle) * ASPECT * 0.0
    points = {}
    sx, sy = body.hip_x + ux * TORSO, body.hip_y + uy * TORSO
    points["left_shoulder"] = (sx + px * half_w, sy + py)
    points["right_shoulder"] = (sx - px * half_w, sy - py)
    points["left_hip"] = (body.hip_x + px * half_w, body.hip_y)
    points["right_hip"] = (body.hip_x - px * half_w, body.hip_y)
    head_x, head_y = body.hip_x + ux * TORSO * 1.35, body.hip_y + uy * TORSO * 1.35
    for name in ("nose", "left_eye", "right_eye", "left_ear", "right_ear"):
        points[name] = (head_x, head_y)
    for side, sign in (("left", 1), ("right", -1)):
        points[f"{side}_elbow"] = (sx + sign * half_w + ux * -0.5 * TORSO, sy + uy * -0.5 * TORSO)
        points[f"{side}_wrist"] = (sx + sign * half_w + ux * -0.9 * TORSO, sy + uy * -0.9 * TORSO)
        # Legs: straight down from the hips when standing, along the body when lying.
        leg = min(FLOOR_Y - body.hip_y, 1.7 * TORSO)
        lx, ly = -ux * 0.5 + 0.0, max(-uy, 0.0)
        points[f"{side}_knee"] = (body.hip_x + sign * half_w + lx * TORSO * 0.85, body.hip_y + ly * leg * 0.5)
        points[f"{side}_ankle"] = (body.hip_x + sign * half_w + lx * TORSO * 1.7, body.hip_y + ly * leg)
    keypoints = []
    for name in KEYPOINT_NAMES:
        x, y = points[name]
        x += rng.uniform(-jitter, jitter)
        y += rng.uniform(-jitter, jitter)
        inside = 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0
        score = rng.uniform(0.5, 0.8) if body.visible and inside else rng.uniform(0.0, 0.1)
        keypoints.append(Keypoint(name, x, y, score))
    return Pose(tuple(keypoints), score=sum(k.score for k in keypoints) / len(keypoints))


def ease(a: float, b: float, fraction: float) -> float:
    fraction = min(1.0, max(0.0, fraction))
    smooth = fraction * fraction * (3 - 2 * fraction)
    return a + (b - a) * smooth


Script = Callable[[float], Body | None]  # time (s) -> the body, or None when nobody is in the frame


def run(script: Script, duration_s: float, fps: float = 15.0, down_s: float = 3.0, seed: int = 1) -> list[Event]:
    rng = random.Random(seed)
    detector = FallDetector(down_s=down_s)
    events: list[Event] = []
    for index in range(int(duration_s * fps)):
        t = index / fps
        body = script(t)
        poses = () if body is None else (make_pose(body, rng),)
        events += detector.observe(poses, ASPECT, T0 + t, t)
    return events


def standing(t: float) -> Body:
    return Body(0.4, STANDING_HIP_Y + 0.003 * math.sin(t * 3), 3 * math.sin(t))


def fall_from_standing(t: float) -> Body:
    if t < 2.0:
        return standing(t)
    f = (t - 2.0) / 0.6  # 0.6 s from upright to the floor
    return Body(0.4 + ease(0, 0.1, f), ease(STANDING_HIP_Y, LYING_HIP_Y, f), ease(0, 85, f))


def fall_from_walking(t: float) -> Body:
    walk_x = 0.1 + 0.25 * min(t, 2.5)  # walks at a quarter frame per second
    bob = 0.01 * abs(math.sin(t * 2 * math.pi))
    if t < 2.5:
        return Body(walk_x, STANDING_HIP_Y - bob, 6 + 4 * math.sin(t * 2 * math.pi))
    f = (t - 2.5) / 0.8  # trips, keeps some momentum forward
    return Body(walk_x + ease(0, 0.15, f), ease(STANDING_HIP_Y, LYING_HIP_Y, f), ease(8, 80, f))


def sitting_down(t: float) -> Body:
    """Onto a chair in 0.8 s, leaning forward up to 30 degrees on the way, then sitting upright."""
    f = (t - 2.0) / 0.8
    lean = 30 * math.sin(math.pi * min(1.0, max(0.0, f)))
    return Body(0.4, ease(STANDING_HIP_Y, STANDING_HIP_Y + 0.9 * TORSO, f), lean + 4)


def bending_to_pick_up(t: float) -> Body:
    """Bends over (torso to 85 degrees, hips back and a little lower), 1.5 s down, back up."""
    if t < 2.0 or t > 4.9:
        return standing(t)
    down = (t - 2.0) / 0.7
    up = (t - 4.2) / 0.7
    f = ease(0, 1, down) - ease(0, 1, up)
    return Body(0.4 - 0.05 * f, STANDING_HIP_Y + 0.25 * TORSO * f, 85 * f)


def squatting_to_pick_up(t: float) -> Body:
    """Squats low (hips down a torso length, torso to 50 degrees) for 2 s, then stands."""
    if t < 2.0 or t > 5.2:
        return standing(t)
    f = ease(0, 1, (t - 2.0) / 0.6) - ease(0, 1, (t - 4.6) / 0.6)
    return Body(0.4, STANDING_HIP_Y + 1.0 * TORSO * f, 50 * f)


def lying_down_slowly(t: float) -> Body:
    """Kneels over 2 s (upright), then lies down over 2.5 s, and stays lying."""
    if t < 2.0:
        return standing(t)
    kneel_y = STANDING_HIP_Y + 0.9 * TORSO
    if t < 4.0:
        return Body(0.4, ease(STANDING_HIP_Y, kneel_y, (t - 2.0) / 2.0), 8)
    f = (t - 4.0) / 2.5
    return Body(0.4 + ease(0, 0.1, f), ease(kneel_y, LYING_HIP_Y, f), ease(8, 88, f))


def walking_out_of_frame(t: float) -> Body | None:
    x = 0.5 + 0.4 * t  # out of the right edge after about 1.3 s
    if x > 1.25:
        return None
    return Body(x, STANDING_HIP_Y - 0.01 * abs(math.sin(t * 2 * math.pi)), 6 * math.sin(t * 2 * math.pi))


@pytest.mark.parametrize("fps", [30.0, 15.0, 5.0])
@pytest.mark.parametrize("script", [fall_from_standing, fall_from_walking])
def test_falls_trigger_once_after_staying_down(script: Script, fps: float) -> None:
    events = run(script, duration_s=10.0, fps=fps, down_s=3.0)
    assert [e.kind for e in events] == [EventKind.FALL_DETECTED]
    (event,) = events
    assert event.drop is not None and event.drop >= 1.0
    assert event.down_s is not None and 3.0 <= event.down_s < 3.0 + 2 / fps
    assert event.person == 0
    fell_at_s = 2.0 if script is fall_from_standing else 2.5
    # The alert comes down_s after the body reached the floor (within a frame or two).
    assert fell_at_s + 3.0 <= event.timestamp_s - T0 <= fell_at_s + 1.0 + 3.0 + 2 / fps
    jsonschema.validate(event_payload("pi", event), load_schema("events"))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(
    "script",
    [standing, sitting_down, bending_to_pick_up, squatting_to_pick_up, lying_down_slowly, walking_out_of_frame],
)
def test_everyday_movements_do_not_trigger(script: Script, seed: int) -> None:
    assert run(script, duration_s=12.0, fps=15.0, down_s=3.0, seed=seed) == []


def test_getting_up_before_down_s_cancels() -> None:
    def fall_and_get_up(t: float) -> Body:
        if t < 4.0:
            return fall_from_standing(t)
        f = (t - 4.0) / 1.0
        return Body(0.5, ease(LYING_HIP_Y, STANDING_HIP_Y, f), ease(85, 2, f))

    assert run(fall_and_get_up, duration_s=10.0, down_s=3.0) == []
    # ...but with a shorter down_s the same fall is reported.
    assert len(run(fall_and_get_up, duration_s=10.0, down_s=1.0)) == 1


def test_second_fall_after_standing_up_again_triggers_again() -> None:
    def two_falls(t: float) -> Body:
        if t < 7.0:
            return fall_from_standing(t)
        if t < 8.0:
            f = t - 7.0
            return Body(0.5, ease(LYING_HIP_Y, STANDING_HIP_Y, f), ease(85, 2, f))
        if t < 10.0:
            return Body(0.5, STANDING_HIP_Y, 2)
        return fall_from_standing(t - 8.0)

    events = run(two_falls, duration_s=16.0)
    assert [e.kind for e in events] == [EventKind.FALL_DETECTED] * 2


def test_lying_still_is_reported_once_not_every_frame() -> None:
    assert len(run(fall_from_standing, duration_s=30.0)) == 1


def test_losing_the_keypoints_after_a_fall_does_not_confirm_it() -> None:
    """No evidence the person stayed down (they left the frame): no alert."""

    def fall_then_gone(t: float) -> Body | None:
        return fall_from_standing(t) if t < 3.0 else None

    assert run(fall_then_gone, duration_s=10.0) == []


def test_two_tracked_people_are_judged_apart() -> None:
    rng = random.Random(3)
    detector = FallDetector(down_s=2.0)
    events: list[Event] = []
    for index in range(150):
        t = index / 15
        faller = make_pose(fall_from_standing(t), rng)
        stander = make_pose(Body(0.8, STANDING_HIP_Y, 2), rng)
        poses = (Pose(stander.keypoints, stander.score, track_id=7), Pose(faller.keypoints, faller.score, track_id=9))
        events += detector.observe(poses, ASPECT, T0 + t, t)
    assert [(e.kind, e.person) for e in events] == [(EventKind.FALL_DETECTED, 9)]


def test_body_sample_needs_shoulders_and_hips() -> None:
    rng = random.Random(0)
    pose = make_pose(Body(0.5, 0.5, 0), rng)
    sample = body_sample(pose, ASPECT, 0.0)
    assert sample is not None and sample.torso_deg < 5 and sample.torso_len == pytest.approx(TORSO, abs=0.01)
    lying = body_sample(make_pose(Body(0.5, 0.5, 90), rng), ASPECT, 0.0)
    assert lying is not None and lying.torso_deg > 85
    hidden = Pose(
        tuple(Keypoint(k.name, k.x, k.y, 0.05 if "hip" in k.name else k.score) for k in pose.keypoints), pose.score
    )
    assert body_sample(hidden, ASPECT, 0.0) is None


def _trace(script: Script, duration_s: float) -> Iterator[tuple[float, Body | None]]:
    for index in range(int(duration_s * 15)):
        yield index / 15, script(index / 15)


def test_the_synthetic_movements_are_what_they_claim() -> None:
    """Guards the test data itself: the non-falls really do turn or drop, so they test something."""
    bend = [b for _, b in _trace(bending_to_pick_up, 6) if b]
    assert max(b.torso_deg for b in bend) >= 80
    sit = [b for _, b in _trace(sitting_down, 6) if b]
    assert max(b.hip_y for b in sit) - STANDING_HIP_Y >= 0.85 * TORSO
    lie = [b for _, b in _trace(lying_down_slowly, 10) if b]
    assert lie[-1].torso_deg >= 85 and lie[-1].hip_y - STANDING_HIP_Y >= 1.5 * TORSO
    squat = [b for _, b in _trace(squatting_to_pick_up, 6) if b]
    assert max(b.hip_y for b in squat) - STANDING_HIP_Y >= TORSO * 0.99
