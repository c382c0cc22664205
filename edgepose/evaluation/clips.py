"""Video clips built from labelled photos, with the truth moving with the person (pure).

A clip pastes one labelled photo, resized to a person height, into a larger frame (1280x720 by
default) and moves it a whole number of pixels per frame, optionally mirrored. The truth keypoints
go through the same scale, mirror and shift, so every frame is labelled exactly.

Coordinates are continuous pixels (a pixel's centre at i + 0.5), the convention the stage's output
uses (normalized x times the width) and the one the truth CSV is compared in by the accuracy tests.
Under that convention a resize by s maps x to x * s (cv2's resize keeps pixel centres aligned the
same way) and a left-right mirror of a W-wide image maps x to W - x. A mirror also swaps every
left_/right_ keypoint label: the person's left arm becomes the right one in the picture.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from edgepose.pose import KEYPOINT_INDEX, KEYPOINT_NAMES, NUM_KEYPOINTS

# The upstream accuracy criterion (tensorflow/examples pose_estimation tests): 21 px on its
# 640 px tall test photos. Everything here scales it with the person's size in the frame.
UPSTREAM_TOLERANCE_PX = 21.0
UPSTREAM_REFERENCE_PX = 640.0

# The index each keypoint takes after a left-right mirror: left_x <-> right_x, nose stays.
MIRROR_ORDER: tuple[int, ...] = tuple(
    KEYPOINT_INDEX[name.replace("left_", "right_") if name.startswith("left_") else name.replace("right_", "left_")]
    for name in KEYPOINT_NAMES
)


@dataclass(frozen=True, eq=False)
class LabelledImage:
    """An RGB uint8 image with one person's truth: (17, 2) x, y in continuous pixels.

    `reference_px` is the size the 21 px tolerance is relative to (per 640 px): the photo's height
    for the upstream test photos, scaled along with the photo when it is resized.
    `visible` marks keypoints that are labelled (COCO v > 0); unlabelled ones are not scored.
    """

    name: str
    image: np.ndarray
    keypoints_px: np.ndarray
    reference_px: float
    visible: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.keypoints_px.shape != (NUM_KEYPOINTS, 2):
            raise ValueError(f"{self.name}: truth must be ({NUM_KEYPOINTS}, 2) x, y, got {self.keypoints_px.shape}")
        if self.image.ndim != 3 or self.image.shape[2] != 3:
            raise ValueError(f"{self.name}: image must be HxWx3, got {self.image.shape}")

    @property
    def tolerance_px(self) -> float:
        return UPSTREAM_TOLERANCE_PX * self.reference_px / UPSTREAM_REFERENCE_PX

    @property
    def visible_mask(self) -> np.ndarray:
        return np.ones(NUM_KEYPOINTS, bool) if self.visible is None else self.visible


def mirror_keypoints(keypoints_px: np.ndarray, width_px: float) -> np.ndarray:
    """(17, 2) x, y truth of an image mirrored left-right: x -> width - x, left/right labels swapped."""
    mirrored = np.asarray(keypoints_px, dtype=np.float64)[list(MIRROR_ORDER)].copy()
    mirrored[:, 0] = width_px - mirrored[:, 0]
    return mirrored


def resized_person(photo: LabelledImage, height_px: int, mirror: bool = False) -> LabelledImage:
    """The photo resized to `height_px` tall (aspect kept), mirrored if asked, truth moved along."""
    if height_px < 16:
        raise ValueError(f"person height must be at least 16 px, got {height_px}")
    src_h, src_w = photo.image.shape[:2]
    scale = height_px / src_h
    width_px = max(1, round(src_w * scale))
    # INTER_AREA: a camera integrates light over each pixel, area averaging is the closest stand-in.
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    image = cv2.resize(photo.image, (width_px, height_px), interpolation=interpolation)
    keypoints = photo.keypoints_px * [width_px / src_w, scale]
    visible = photo.visible
    if mirror:
        image = np.ascontiguousarray(image[:, ::-1])
        keypoints = mirror_keypoints(keypoints, width_px)
        visible = None if visible is None else visible[list(MIRROR_ORDER)]
    name = f"{photo.name}@{height_px}px" + (" mirrored" if mirror else "")
    return LabelledImage(name, image, keypoints, photo.reference_px * scale, visible)


@dataclass(frozen=True)
class ClipSpec:
    """One clip: which photo, how big, where it starts, how fast it moves (px per frame), mirrored or not."""

    photo: int  # index into the labelled photos the clips are built from
    person_height_px: int
    start_x_px: int
    start_y_px: int
    step_x_px: int = 0
    step_y_px: int = 0
    mirror: bool = False
    frames: int = 30
    frame_width_px: int = 1280
    frame_height_px: int = 720
    fps: float = 30.0
    background: int = 100  # grey level around the pasted photo

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"a clip needs at least one frame, got {self.frames}")
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")

    def label(self, photo_names: Sequence[str]) -> str:
        name = photo_names[self.photo] if self.photo < len(photo_names) else f"photo{self.photo}"
        speed = f"{self.step_x_px:+d},{self.step_y_px:+d}px/f"
        flip = " mirrored" if self.mirror else ""
        return f"{name} h{self.person_height_px} at {self.start_x_px},{self.start_y_px} {speed}{flip}"


@dataclass(frozen=True, eq=False)
class ClipFrame:
    """One frame of a clip: the picture, its truth, and its time stamp."""

    index: int
    timestamp_s: float
    truth: LabelledImage


def build_clip(photos: Sequence[LabelledImage], spec: ClipSpec) -> Iterator[ClipFrame]:
    """The frames of `spec`, built lazily (a 30-frame 720p clip is 80 MB as arrays).

    The pasted photo must stay inside the frame on every frame: truth outside the picture cannot
    be scored, and a clip that silently loses its person would measure nothing.
    """
    if not 0 <= spec.photo < len(photos):
        raise ValueError(f"clip photo index {spec.photo} out of range: {len(photos)} photos")
    person = resized_person(photos[spec.photo], spec.person_height_px, spec.mirror)
    height_px, width_px = person.image.shape[:2]
    for index in range(spec.frames):
        x_px = spec.start_x_px + index * spec.step_x_px
        y_px = spec.start_y_px + index * spec.step_y_px
        if x_px < 0 or y_px < 0 or x_px + width_px > spec.frame_width_px or y_px + height_px > spec.frame_height_px:
            raise ValueError(
                f"clip {spec}: frame {index} puts the {width_px}x{height_px} person at {x_px},{y_px}, "
                f"outside the {spec.frame_width_px}x{spec.frame_height_px} frame"
            )
        frame = np.full((spec.frame_height_px, spec.frame_width_px, 3), spec.background, np.uint8)
        frame[y_px : y_px + height_px, x_px : x_px + width_px] = person.image
        truth = LabelledImage(
            f"{person.name} frame {index}",
            frame,
            person.keypoints_px + np.array([x_px, y_px]),
            person.reference_px,
            person.visible,
        )
        yield ClipFrame(index, index / spec.fps, truth)


def standard_clips(photos: Sequence[LabelledImage], quick: bool = False) -> list[ClipSpec]:
    """The clip set of the pose-quality table: every photo, plain and mirrored, at several person
    heights, positions (centre, near an edge, a corner) and speeds (still, slow drift, walking).

    `quick` keeps a few short clips for the test suite: half size slow drift (the case the issue
    was filed on), a small mirrored walker near an edge, a large still person.
    """
    specs: list[ClipSpec] = []
    frame_w, frame_h = 1280, 720
    for photo_index, photo in enumerate(photos):
        src_h, src_w = photo.image.shape[:2]

        def width(height: int, src_h: int = src_h, src_w: int = src_w) -> int:
            return max(1, round(src_w * height / src_h))

        if quick:
            specs += [
                ClipSpec(photo_index, 320, 200, 200, step_x_px=2, frames=10),
                ClipSpec(photo_index, 240, 8, 470, step_x_px=8, mirror=True, frames=10),
                ClipSpec(photo_index, 640, 400, 40, frames=6, mirror=photo_index % 2 == 1),
            ]
            continue
        for height in (640, 480, 320, 240, 160):
            w = width(height)
            # Slow drift right from the left third, the case, plain and mirrored.
            for mirror in (False, True):
                specs.append(ClipSpec(photo_index, height, 100, (frame_h - height) // 2, step_x_px=2, mirror=mirror))
            # Walking pace (8 px/frame at 30 fps) leftwards, touching the bottom edge.
            specs.append(ClipSpec(photo_index, height, frame_w - w - 20, frame_h - height, step_x_px=-8))
            # Still, in the top-left corner (padding at two frame edges).
            specs.append(ClipSpec(photo_index, height, 0, 0, mirror=True))
            # Slow diagonal drift from the centre.
            if height <= 480:
                specs.append(ClipSpec(photo_index, height, (frame_w - w) // 2, 20, step_x_px=1, step_y_px=1))
    return specs
