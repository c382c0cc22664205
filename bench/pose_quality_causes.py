"""Where the video path loses accuracy against the stills path, one cause at a time.

    .venv/bin/python bench/pose_quality_causes.py [--json bench/results/pose-quality-causes.json]

Runs clips built from the truth photos (edgepose.evaluation.clips.standard_clips, person heights
240-640 px in 1280x720, both photos, mirrored, still / 1-2 px per frame / 8 px per frame) through
SinglePoseStage variants and reports, per variant: clips within the target (median of the frames'
worst keypoint <= 1.0x tolerance and every frame <= 1.5x, from the second frame on), the worst and
mean clip median, the worst frame, and extra invokes. Also a few direct measurements that need no
model (one-euro lag on the truth itself, the sub-pixel rounding of crop boxes). docs/pose-quality.md
explains the rows. Needs the model and photos: run `make models` first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

import edgepose.geometry
from edgepose.config import load_config
from edgepose.crop import UPSTREAM_RATIOS, determine_crop_region
from edgepose.evaluation.clips import ClipSpec, LabelledImage, build_clip, standard_clips
from edgepose.evaluation.datasets import labelled_stills
from edgepose.evaluation.metrics import FrameScore, score_frame, summarize
from edgepose.evaluation.runner import TimedImage, best_pose, run_stills, run_video
from edgepose.geometry import paste_region
from edgepose.inference.movenet import SinglePoseEstimator
from edgepose.inference.stage import SinglePoseStage
from edgepose.smoothing import MOVENET_ONE_EURO, KeypointSmoother
from edgepose.sources.base import Frame
from edgepose.stills import open_offline_model

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGEPOSE_SHARED_DIR", REPO.parent / "shared"))
POSE_DATA = SHARED / "testdata" / "pose"


def _clips(photos: Sequence[LabelledImage]) -> list[ClipSpec]:
    # 160 px people are below what a 1280-wide letterbox pass can find at all (see the doc).
    return [s for s in standard_clips(photos) if s.person_height_px >= 240]


def _summary(per_clip: list[list[FrameScore]], extra_invokes: int, seconds: float) -> dict[str, Any]:
    medians = np.array([summarize("c", s, skip_first=1).median_worst_ratio for s in per_clip])
    worst = np.array([summarize("c", s, skip_first=1).max_worst_ratio for s in per_clip])
    return {
        "clips_within_target": int(((medians <= 1.0) & (worst <= 1.5)).sum()),
        "clips": len(per_clip),
        "worst_clip_median": round(float(medians.max()), 3),
        "mean_clip_median": round(float(medians.mean()), 3),
        "worst_frame": round(float(worst.max()), 3),
        "clips_over_1_5": int((worst > 1.5).sum()),
        "extra_invokes": extra_invokes,
        "frames": sum(len(s) for s in per_clip),
        "seconds": round(seconds, 1),
    }


def run_variant(
    photos: Sequence[LabelledImage],
    specs: Sequence[ClipSpec],
    make_stage: Callable[[], SinglePoseStage],
    mode: str = "video",
    pipelined: bool = True,
    oracle: bool = False,
) -> dict[str, Any]:
    started = time.perf_counter()
    per_clip, extra = [], 0
    for spec in specs:
        frames = list(build_clip(photos, spec))
        stage = make_stage()
        if mode == "stills":
            results = list(run_stills(stage, (f.truth.image for f in frames)))
        elif oracle:
            # The crop each frame would get from its own truth: no lag, no keypoint noise.
            results = []
            for f in frames:
                height, width = f.truth.image.shape[:2]
                truth = np.c_[f.truth.keypoints_px[:, 1] / height, f.truth.keypoints_px[:, 0] / width, np.ones(17)]
                box = determine_crop_region(truth, height, width, UPSTREAM_RATIOS)
                prepared = stage.prepare(Frame(f.truth.image, f.timestamp_s, f.timestamp_s, f.index), stage.new_input())
                prepared = type(prepared)(prepared.frame, box, prepared.tensor, 0.0)
                stage.estimator.prepare_into(f.truth.image, box, prepared.tensor)
                outputs = stage.backend.invoke(prepared.tensor)
                results.append(stage.finish(prepared, [np.array(o) for o in outputs], 0.0))
        else:
            results = list(run_video(stage, (TimedImage(f.truth.image, f.timestamp_s) for f in frames), pipelined))
        extra += stage.second_passes
        per_clip.append([score_frame(f.truth, best_pose(r)) for f, r in zip(frames, results, strict=True)])
    return _summary(per_clip, extra, time.perf_counter() - started)


def one_euro_lag(photos: Sequence[LabelledImage]) -> dict[str, float]:
    """The smoother alone on noise-free truth: its lag, as a share of the tolerance, per speed."""
    lags = {}
    for step in (1, 2, 8):
        worst = 0.0
        for height in (640, 320, 240):
            spec = ClipSpec(0, height, 100, 720 - height, step_x_px=step, frames=30)
            smoother = KeypointSmoother(MOVENET_ONE_EURO)
            for frame in build_clip(photos, spec):
                yx = np.c_[frame.truth.keypoints_px[:, 1] / 720, frame.truth.keypoints_px[:, 0] / 1280]
                out = smoother.update(yx, frame.timestamp_s, 720, 1280)
                if frame.index >= 1:
                    error = np.abs(out[:, 1] * 1280 - frame.truth.keypoints_px[:, 0]).max()
                    worst = max(worst, float(error / frame.truth.tolerance_px))
        lags[f"{step}px_per_frame"] = round(worst, 3)
    return lags


def subpixel_rounding(photos: Sequence[LabelledImage], specs: Sequence[ClipSpec]) -> dict[str, float]:
    """How far the whole-pixel box (what the model sees) is from the requested one, in tolerances:
    the error the mapping back would make if it used the requested box (it uses the effective one)."""
    worst = 0.0
    for spec in specs:
        frame = next(build_clip(photos, spec))
        truth = frame.truth
        yx = np.c_[truth.keypoints_px[:, 1] / 720 + 0.0013, truth.keypoints_px[:, 0] / 1280 + 0.0007, np.ones(17)]
        box = determine_crop_region(yx, 720, 1280)
        region = paste_region(box, 720, 1280, 192, 192)
        effective = edgepose.geometry.effective_box(region, box, 720, 1280, 192, 192)
        offset_px = max(abs(box.xmin - effective.xmin) * 1280, abs(box.ymin - effective.ymin) * 720)
        worst = max(worst, offset_px / truth.tolerance_px)
    return {"max_box_offset_over_tolerance": round(worst, 3)}


class _Interpolation:
    """cv2 with resize's interpolation chosen by direction, for the interpolation rows only."""

    def __init__(self, down: int, up: int) -> None:
        self.down, self.up = down, up

    def __getattr__(self, name: str) -> Any:
        return getattr(cv2, name)

    def resize(self, src: np.ndarray, dsize: tuple[int, int], dst: np.ndarray, interpolation: int) -> np.ndarray:
        shrinking = dsize[0] < src.shape[1]
        return cv2.resize(src, dsize, dst=dst, interpolation=self.down if shrinking else self.up)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the numbers here too")
    args = parser.parse_args(argv)
    photos = labelled_stills(
        POSE_DATA / "pose_landmark_truth.csv", [POSE_DATA / "image1.png", POSE_DATA / "image2.jpeg"]
    )
    specs = _clips(photos)
    config, _ = load_config(None, [])
    model = open_offline_model(config)
    smoothing = MOVENET_ONE_EURO

    def stage(**kwargs: Any) -> Callable[[], SinglePoseStage]:
        settings = {"smart_crop": True, "smoothing": smoothing, "mode": "video"} | kwargs
        return lambda: SinglePoseStage(SinglePoseEstimator(model.backend), model.name, 0.0, **settings)

    before = {"second_pass": False, "tight_crop": False}
    rows: dict[str, Any] = {}

    def row(name: str, **kwargs: Any) -> None:
        rows[name] = run_variant(photos, specs, **kwargs)
        print(f"{name:58} {json.dumps(rows[name])}", flush=True)

    row("stills path on every frame", make_stage=stage(mode="stills"), mode="stills")
    row("before: video, upstream crop, pipelined", make_stage=stage(**before))
    row("before: video, upstream crop, serial", make_stage=stage(**before), pipelined=False)
    row("before + second pass, pipelined", make_stage=stage(tight_crop=False))
    row("before + tight stable crop, pipelined", make_stage=stage(second_pass=False))
    row("after: second pass + tight crop, pipelined", make_stage=stage())
    row("after: second pass + tight crop, serial", make_stage=stage(), pipelined=False)
    row("oracle crop from this frame's truth (no lag)", make_stage=stage(**before), oracle=True)
    row("oracle crop, smoothing off", make_stage=stage(smoothing=None, **before), oracle=True)
    row("after, smoothing off, pipelined", make_stage=stage(smoothing=None))
    row("smart crop off (letterbox every frame)", make_stage=stage(smart_crop=False))
    for name, down, up in (
        ("AREA down, LINEAR up", cv2.INTER_AREA, cv2.INTER_LINEAR),
        ("LINEAR down, CUBIC up", cv2.INTER_LINEAR, cv2.INTER_CUBIC),
    ):
        edgepose.geometry.cv2 = _Interpolation(down, up)  # type: ignore[assignment]
        try:
            row(f"after, interpolation {name}, pipelined", make_stage=stage())
        finally:
            edgepose.geometry.cv2 = cv2
    direct = {"one_euro_lag_on_truth": one_euro_lag(photos), "subpixel": subpixel_rounding(photos, specs)}
    print(json.dumps(direct))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "direct": direct}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
