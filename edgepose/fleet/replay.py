"""Poses to replay: the keypoints MoveNet Lightning found in the two demo photos, gently swaying.

demo_poses.json was made once with `edgepose infer --json` on the manifest's sample photos, so a
simulated fleet publishes real model output without running a model.
"""

from __future__ import annotations

import json
import math
from functools import cache
from importlib import resources

from edgepose.pose import KEYPOINT_NAMES, Keypoint, Pose

# Frames per photo before switching, and the sway: about 2 s per photo at 30 fps, a few % of the frame.
FRAMES_PER_PHOTO = 60
SWAY_X = 0.02
SWAY_Y = 0.01


def photo_poses() -> list[Pose]:
    """The two photos' poses as the model reported them (normalized to each photo)."""
    text = resources.files("edgepose.fleet").joinpath("demo_poses.json").read_text(encoding="utf-8")
    poses = []
    for photo in json.loads(text)["photos"]:
        keypoints = tuple(
            Keypoint(name, float(x), float(y), float(score))
            for name, (x, y, score) in zip(KEYPOINT_NAMES, photo["keypoints"], strict=True)
        )
        poses.append(Pose(keypoints, sum(k.score for k in keypoints) / len(keypoints)))
    return poses


@cache
def replay_cycle() -> tuple[Pose, ...]:
    """One loop of frames: each photo's pose for FRAMES_PER_PHOTO frames, swaying side to side."""
    frames = []
    for pose in photo_poses():
        for k in range(FRAMES_PER_PHOTO):
            phase = 2 * math.pi * k / FRAMES_PER_PHOTO
            dx, dy = SWAY_X * math.sin(phase), SWAY_Y * math.sin(2 * phase)
            moved = tuple(Keypoint(p.name, p.x + dx, p.y + dy, p.score) for p in pose.keypoints)
            frames.append(Pose(moved, pose.score))
    return tuple(frames)
