"""Plain data types for poses. No numpy in the public shape: payload code and tests read these."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# COCO order, as MoveNet and PoseNet emit them.
KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)
KEYPOINT_INDEX: dict[str, int] = {name: i for i, name in enumerate(KEYPOINT_NAMES)}


@dataclass(frozen=True)
class Keypoint:
    """A keypoint in normalized frame coordinates: x, y in 0..1 of the frame's width and height."""

    name: str
    x: float
    y: float
    score: float


def keypoints_from_rows(rows: Iterable[Sequence[float]]) -> tuple[Keypoint, ...]:
    """The keypoints, in KEYPOINT_NAMES order, from rows of [y, x, score] Python floats.

    Equal to building each with `Keypoint(...)` (tested), in a third of the time: a frozen
    dataclass's __init__ sets every field through object.__setattr__ (the documented cost of
    frozen=True), and this runs 17 times for every frame. The fields go straight into each new
    instance's __dict__; the instances are ordinary frozen Keypoints (assignment still raises).
    """
    new = object.__new__
    points = []
    for name, (y, x, score) in zip(KEYPOINT_NAMES, rows, strict=True):
        point = new(Keypoint)
        vars(point).update(name=name, x=x, y=y, score=score)
        points.append(point)
    return tuple(points)


@dataclass(frozen=True)
class BoundingBox:
    """Normalized to the frame, like keypoints."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float


@dataclass(frozen=True)
class Pose:
    keypoints: tuple[Keypoint, ...]
    score: float
    # Set by multi-pose models and the tracker; single-pose models leave them empty.
    track_id: int | None = None
    bbox: BoundingBox | None = None


@dataclass(frozen=True)
class CropBox:
    """Region of the frame the model saw, normalized to the frame (may extend past 0..1 when padded)."""

    ymin: float
    xmin: float
    ymax: float
    xmax: float


@dataclass(frozen=True)
class Estimate:
    """What one inference produced for one frame."""

    poses: tuple[Pose, ...]
    crop: CropBox | None = None
    smoothed: bool = False
    extras: dict[str, float] = field(default_factory=dict)
