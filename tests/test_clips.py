"""Clips built from labelled photos: the truth follows every resize, mirror and shift exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgepose.evaluation.clips import (
    MIRROR_ORDER,
    ClipSpec,
    LabelledImage,
    build_clip,
    mirror_keypoints,
    resized_person,
    standard_clips,
)
from edgepose.evaluation.datasets import labelled_stills
from edgepose.inference.movenet import SinglePoseEstimator
from edgepose.inference.runtime import load_runtime, open_cpu_backend
from edgepose.pose import KEYPOINT_INDEX, KEYPOINT_NAMES
from tests.conftest import POSE_DATA


@pytest.fixture(scope="module")
def photos() -> list[LabelledImage]:
    return labelled_stills(POSE_DATA / "pose_landmark_truth.csv", [POSE_DATA / "image1.png", POSE_DATA / "image2.jpeg"])


def _marked(height: int = 64, width: int = 40) -> LabelledImage:
    """A synthetic photo with one bright pixel under each keypoint, to follow pixels and labels together."""
    rng = np.random.default_rng(3)
    keypoints = np.c_[rng.integers(0, width, 17), rng.integers(0, height, 17)].astype(float) + 0.5
    image = np.zeros((height, width, 3), np.uint8)
    for index, (x, y) in enumerate(keypoints):
        image[int(y), int(x)] = (index + 1) * 10
    return LabelledImage("marked", image, keypoints, float(height))


def test_mirror_swaps_left_and_right_labels_and_reflects_x() -> None:
    truth = np.arange(34, dtype=float).reshape(17, 2)
    mirrored = mirror_keypoints(truth, 100.0)
    left_wrist, right_wrist = KEYPOINT_INDEX["left_wrist"], KEYPOINT_INDEX["right_wrist"]
    assert mirrored[left_wrist, 0] == 100.0 - truth[right_wrist, 0]
    assert mirrored[left_wrist, 1] == truth[right_wrist, 1]
    assert mirrored[KEYPOINT_INDEX["nose"], 0] == 100.0 - truth[KEYPOINT_INDEX["nose"], 0]
    np.testing.assert_array_equal(mirror_keypoints(mirrored, 100.0), truth)
    for index, name in enumerate(KEYPOINT_NAMES):
        other = KEYPOINT_NAMES[MIRROR_ORDER[index]]
        assert other == name.replace("left", "#").replace("right", "left").replace("#", "right")


def test_mirrored_truth_still_points_at_its_pixels() -> None:
    photo = _marked()
    mirrored = resized_person(photo, photo.image.shape[0], mirror=True)
    for index, (x, y) in enumerate(mirrored.keypoints_px):
        # The pixel under the mirrored left wrist is the one that was under the right wrist.
        source = MIRROR_ORDER[index]
        assert mirrored.image[int(y), int(x), 0] == (source + 1) * 10


def test_clip_frames_carry_the_truth_with_the_person() -> None:
    photo = _marked()
    spec = ClipSpec(0, 128, 10, 20, step_x_px=3, step_y_px=-2, frames=5, frame_width_px=200, frame_height_px=200)
    frames = list(build_clip([photo], spec))
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert frames[1].timestamp_s == pytest.approx(1 / 30)
    person = resized_person(photo, 128)
    assert person.reference_px == 128.0 and person.tolerance_px == pytest.approx(21 * 128 / 640)
    np.testing.assert_allclose(person.keypoints_px, photo.keypoints_px * 2)
    for frame in frames:
        np.testing.assert_allclose(
            frame.truth.keypoints_px, person.keypoints_px + np.array([10 + 3 * frame.index, 20 - 2 * frame.index])
        )
        x, y = 10 + 3 * frame.index, 20 - 2 * frame.index
        np.testing.assert_array_equal(frame.truth.image[y : y + 128, x : x + 80], person.image)
        assert (frame.truth.image[:y] == spec.background).all()


def test_a_clip_leaving_the_frame_is_refused() -> None:
    spec = ClipSpec(0, 64, 150, 0, step_x_px=10, frames=5, frame_width_px=200, frame_height_px=100)
    with pytest.raises(ValueError, match="outside the 200x100 frame"):
        list(build_clip([_marked()], spec))
    with pytest.raises(ValueError, match="photo index 1"):
        list(build_clip([_marked()], ClipSpec(1, 64, 0, 0)))


@pytest.mark.parametrize("quick", [True, False])
def test_standard_clips_keep_the_person_in_frame(photos: list[LabelledImage], quick: bool) -> None:
    specs = standard_clips(photos, quick=quick)
    assert {s.photo for s in specs} == {0, 1} and {s.mirror for s in specs} == {False, True}
    assert len({s.person_height_px for s in specs}) >= 3 and len({s.step_x_px for s in specs}) >= 3
    for spec in specs:
        width = round(photos[spec.photo].image.shape[1] * spec.person_height_px / photos[spec.photo].image.shape[0])
        for index in (0, spec.frames - 1):
            x = spec.start_x_px + index * spec.step_x_px
            y = spec.start_y_px + index * spec.step_y_px
            assert x >= 0 and x + width <= spec.frame_width_px, spec
            assert y >= 0 and y + spec.person_height_px <= spec.frame_height_px, spec


def test_the_model_agrees_with_the_mirrored_truth(photos: list[LabelledImage], lightning_path: Path) -> None:
    """The real model on a mirrored photo finds the mirrored truth, left and right swapped: if the
    labels were not swapped, every left/right pair would be off by the shoulder width or more."""
    estimator = SinglePoseEstimator(open_cpu_backend(lightning_path, load_runtime("auto"), num_threads=2))
    for photo in photos:
        mirrored = resized_person(photo, photo.image.shape[0], mirror=True)
        keypoints = estimator.estimate(mirrored.image).keypoints
        height, width = mirrored.image.shape[:2]
        pixels = np.c_[keypoints[:, 1] * width, keypoints[:, 0] * height]
        assert np.abs(pixels - mirrored.keypoints_px).max() <= mirrored.tolerance_px, photo.name
        unswapped = mirrored.keypoints_px[list(MIRROR_ORDER)]
        assert np.abs(pixels - unswapped).max() > 2 * mirrored.tolerance_px
