"""fleet-sim replays real model output: the shipped demo poses are the photos' people."""

from __future__ import annotations

import numpy as np

from edgepose.fleet.replay import FRAMES_PER_PHOTO, SWAY_X, SWAY_Y, photo_poses, replay_cycle
from tests.conftest import TruthImage
from tests.test_accuracy import UPSTREAM_TOLERANCE_PX


def test_shipped_poses_match_the_photos_ground_truth(truth_images: list[TruthImage]) -> None:
    import cv2

    for pose, truth in zip(photo_poses(), truth_images, strict=True):
        height_px, width_px = cv2.imread(str(truth.path)).shape[:2]
        pixels = np.array([[k.x * width_px, k.y * height_px] for k in pose.keypoints])
        assert np.abs(pixels - truth.keypoints_px).max() <= UPSTREAM_TOLERANCE_PX
        assert 0.4 < pose.score <= 1.0


def test_replay_cycle_sways_within_bounds() -> None:
    cycle = replay_cycle()
    photos = photo_poses()
    assert len(cycle) == FRAMES_PER_PHOTO * len(photos)
    for n, pose in enumerate(cycle):
        source = photos[n // FRAMES_PER_PHOTO]
        dx = [a.x - b.x for a, b in zip(pose.keypoints, source.keypoints, strict=True)]
        dy = [a.y - b.y for a, b in zip(pose.keypoints, source.keypoints, strict=True)]
        assert max(map(abs, dx)) <= SWAY_X + 1e-9 and max(map(abs, dy)) <= SWAY_Y + 1e-9
        assert max(dx) - min(dx) < 1e-9  # the whole body moves together
    assert len({pose.keypoints[0].x for pose in cycle}) > FRAMES_PER_PHOTO  # it does move
