"""Scoring a pose against its truth (pure): per-keypoint error, worst keypoint over tolerance, PCK.

Errors are L-infinity per keypoint (the larger of |dx| and |dy|), the upstream test's criterion,
in pixels of the frame; the tolerance is 21 px per 640 px of the reference size (see clips.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgepose.evaluation.clips import LabelledImage
from edgepose.pose import KEYPOINT_NAMES, NUM_KEYPOINTS, Pose


def pose_pixels(pose: Pose, width_px: int, height_px: int) -> np.ndarray:
    """(17, 2) x, y pixels of a frame-normalized Pose."""
    return np.array([[k.x * width_px, k.y * height_px] for k in pose.keypoints], dtype=np.float64)


@dataclass(frozen=True, eq=False)
class FrameScore:
    """One image or video frame: each keypoint's error, the tolerance it is judged by, which are labelled.

    A frame where no pose came out scores every labelled keypoint as missed (error = inf).
    """

    name: str
    errors_px: np.ndarray  # (17,) L-inf error per keypoint, inf when no pose
    tolerance_px: float
    visible: np.ndarray  # (17,) bool

    @property
    def ratios(self) -> np.ndarray:
        return self.errors_px / self.tolerance_px

    @property
    def worst_ratio(self) -> float:
        """The worst labelled keypoint's error over the tolerance (0 when nothing is labelled)."""
        labelled = self.ratios[self.visible]
        return float(labelled.max()) if labelled.size else 0.0

    @property
    def worst_keypoint(self) -> str:
        ratios = np.where(self.visible, self.ratios, -1.0)
        return KEYPOINT_NAMES[int(ratios.argmax())]


def score_frame(truth: LabelledImage, pose: Pose | None) -> FrameScore:
    height_px, width_px = truth.image.shape[:2]
    if pose is None:
        errors = np.full(NUM_KEYPOINTS, np.inf)
    else:
        errors = np.abs(pose_pixels(pose, width_px, height_px) - truth.keypoints_px).max(axis=1)
    return FrameScore(truth.name, errors, truth.tolerance_px, truth.visible_mask)


@dataclass(frozen=True)
class KeypointSummary:
    name: str
    median_px: float
    max_px: float
    median_ratio: float
    max_ratio: float
    pck: float  # share of labelled frames within the tolerance


@dataclass(frozen=True)
class Summary:
    """A set of frames (a still set, a clip, a video) in numbers."""

    label: str
    frames: int
    median_worst_ratio: float
    max_worst_ratio: float
    worst_frame: str
    pck: float
    keypoints: tuple[KeypointSummary, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "frames": self.frames,
            "median_worst_ratio": _finite(self.median_worst_ratio),
            "max_worst_ratio": _finite(self.max_worst_ratio),
            "worst_frame": self.worst_frame,
            "pck": round(self.pck, 4),
            "keypoints": {
                k.name: {
                    "median_px": _finite(k.median_px),
                    "max_px": _finite(k.max_px),
                    "median_ratio": _finite(k.median_ratio),
                    "max_ratio": _finite(k.max_ratio),
                    "pck": round(k.pck, 4),
                }
                for k in self.keypoints
            },
        }


def _finite(value: float) -> float | None:
    # JSON has no infinity: a keypoint never found is null.
    return round(value, 3) if np.isfinite(value) else None


def summarize(label: str, scores: Sequence[FrameScore], skip_first: int = 0) -> Summary:
    """Median and worst of each frame's worst keypoint over tolerance, per-keypoint errors, PCK.

    `skip_first` leaves out the first frames of a video (the first one sees the whole frame by
    design: the crop has nothing to follow yet).
    """
    kept = list(scores[skip_first:])
    if not kept:
        raise ValueError(f"{label}: no frames to summarize")
    worst = np.array([s.worst_ratio for s in kept])
    errors = np.stack([s.errors_px for s in kept])
    ratios = np.stack([s.ratios for s in kept])
    visible = np.stack([s.visible for s in kept])
    keypoints = []
    for index, name in enumerate(KEYPOINT_NAMES):
        mask = visible[:, index]
        if not mask.any():
            keypoints.append(KeypointSummary(name, np.nan, np.nan, np.nan, np.nan, 0.0))
            continue
        e, r = errors[mask, index], ratios[mask, index]
        keypoints.append(
            KeypointSummary(
                name, float(np.median(e)), float(e.max()), float(np.median(r)), float(r.max()), float(np.mean(r <= 1.0))
            )
        )
    labelled = int(visible.sum())
    pck = float((ratios[visible] <= 1.0).sum() / labelled) if labelled else 0.0
    return Summary(
        label=label,
        frames=len(kept),
        median_worst_ratio=float(np.median(worst)),
        max_worst_ratio=float(worst.max()),
        worst_frame=kept[int(worst.argmax())].name,
        pck=pck,
        keypoints=tuple(keypoints),
    )
