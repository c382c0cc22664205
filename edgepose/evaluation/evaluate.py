"""`edgepose eval`: a model and its settings scored on labelled stills, clips, a video or COCO data.

Everything runs through the daemon's own stage (`build_stage`), in stills mode for stills and in
video mode, in the pipeline's order, for clips and video. The numbers:
  * per frame, the worst labelled keypoint's L-inf error over the tolerance (21 px per 640 px of
    the reference size: the photo height, scaled with the person in clips);
  * per set, the median and the worst of that over frames (video: from the second frame on),
    PCK (share of labelled keypoints within the tolerance) and per-keypoint errors;
  * on COCO data, OKS AP/AR through pycocotools (the `eval` extra).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgepose.config import Config
from edgepose.errors import EXIT_UNAVAILABLE, EdgeposeError, UsageError
from edgepose.evaluation.clips import ClipFrame, ClipSpec, LabelledImage, build_clip, standard_clips
from edgepose.evaluation.datasets import (
    DatasetError,
    coco_labelled,
    labelled_stills,
    read_coco,
    read_truth_csv,
    video_frames,
)
from edgepose.evaluation.metrics import FrameScore, Summary, pose_pixels, score_frame, summarize
from edgepose.evaluation.runner import TimedImage, best_pose, run_stills, run_video
from edgepose.inference.stage import PoseStage, SinglePoseStage
from edgepose.pose import Pose
from edgepose.sources.images import read_rgb
from edgepose.stills import OfflineModel, open_offline_model

ClipSet = Literal["none", "quick", "full"]

# Variant names: the path a set went through, with the config's settings (others: --compare's).
VIDEO_DEFAULTS = "video"
STILLS_PATH = "stills path"

# The targets for clips, from the second frame on.
TARGET_MEDIAN_RATIO = 1.0
TARGET_MAX_RATIO = 1.5


class EvalDependencyError(EdgeposeError):
    exit_code = EXIT_UNAVAILABLE


@dataclass(frozen=True)
class EvalRequest:
    truth_csv: Path | None = None
    images: tuple[Path, ...] = ()
    clips: ClipSet = "none"
    video: Path | None = None
    video_fps: float = 30.0
    reference_px: float | None = None  # video: tolerance reference (default: the frame height)
    coco: Path | None = None
    coco_images: Path | None = None
    pipelined: bool = True
    compare: bool = False

    def check(self) -> None:
        # What was asked for does not fit together: a bad command line (64), not bad data (65).
        if self.video is not None and self.images:
            raise UsageError("--video takes its labels from --truth: give images or a video, not both")
        if self.video is not None and self.truth_csv is None:
            raise UsageError("--video needs --truth CSV with one row per frame")
        if self.images and self.truth_csv is None:
            raise UsageError("images need --truth CSV (one row per image, in order)")
        if self.clips != "none" and not self.images:
            raise UsageError("--clips builds clips from labelled stills: give --truth CSV and its images")
        if (self.coco is None) != (self.coco_images is None):
            raise UsageError("--coco and --coco-images go together")
        if self.video is None and not self.images and self.coco is None:
            raise UsageError("nothing to evaluate: give --truth CSV with images or --video, or --coco")
        if self.video_fps <= 0:
            raise UsageError(f"--fps {self.video_fps}: must be positive")


@dataclass(frozen=True)
class Section:
    """One scored set: its group (stills, a clip, a video, COCO), which settings, and its numbers."""

    group: str
    variant: str
    summary: Summary
    second_passes: int = 0
    clip: bool = False
    height_group: str = ""  # a clip's "all clips at person height N px" group

    @property
    def within_target(self) -> bool:
        return (
            self.summary.median_worst_ratio <= TARGET_MEDIAN_RATIO and self.summary.max_worst_ratio <= TARGET_MAX_RATIO
        )

    def as_json(self) -> dict[str, Any]:
        record = {"group": self.group, "variant": self.variant, "second_passes": self.second_passes}
        record.update(self.summary.as_json())
        if self.clip:
            record["within_target"] = self.within_target
        return record


@dataclass(frozen=True)
class CocoScores:
    images: int
    stats: dict[str, float]


@dataclass
class Report:
    model: str
    settings: dict[str, Any]
    sections: list[Section] = field(default_factory=list)
    coco: CocoScores | None = None

    def clip_sections(self, variant: str = VIDEO_DEFAULTS) -> list[Section]:
        return [s for s in self.sections if s.clip and s.variant == variant]

    def as_json(self) -> dict[str, Any]:
        clips = self.clip_sections()
        return {
            "model": self.model,
            "settings": self.settings,
            "tolerance": "21 px per 640 px of reference size, L-inf per keypoint",
            "sections": [s.as_json() for s in self.sections],
            "clips_within_target": (sum(s.within_target for s in clips), len(clips)) if clips else None,
            "coco": None if self.coco is None else {"images": self.coco.images, **self.coco.stats},
        }

    def as_text(self) -> str:
        settings = ", ".join(f"{k} {v}" for k, v in self.settings.items())
        lines = [f"model {self.model} ({settings})", "tolerance: 21 px per 640 px of reference size (L-inf)", ""]
        header = f"{'set':58} {'variant':16} {'frames':>6} {'median':>7} {'worst':>7} {'PCK':>6}  worst frame"
        lines += [header, "-" * len(header)]
        for s in self.sections:
            m = s.summary
            mark = ("" if s.within_target else "  (over target)") if s.clip and s.variant == VIDEO_DEFAULTS else ""
            lines.append(
                f"{s.group:58} {s.variant:16} {m.frames:6d} {_ratio(m.median_worst_ratio)} {_ratio(m.max_worst_ratio)}"
                f" {m.pck * 100:5.1f}%  {m.worst_frame}{mark}"
            )
        clips = self.clip_sections()
        if clips:
            good = sum(s.within_target for s in clips)
            lines.append(
                f"\nclips within target (median <= {TARGET_MEDIAN_RATIO}x, every frame <= {TARGET_MAX_RATIO}x "
                f"from the second frame): {good} of {len(clips)}"
            )
        for s in self.sections:
            if s.clip or s.variant not in (VIDEO_DEFAULTS, STILLS_PATH):
                continue
            lines += [
                "",
                f"per keypoint, {s.group}:",
                f"  {'keypoint':15} {'median px':>9} {'max px':>8} {'median':>7} {'PCK':>6}",
            ]
            for k in s.summary.keypoints:
                lines.append(
                    f"  {k.name:15} {_px(k.median_px)} {_px(k.max_px, 8)} {_ratio(k.median_ratio)} {k.pck * 100:5.1f}%"
                )
        if self.coco is not None:
            stats = "  ".join(f"{k} {v:.3f}" for k, v in self.coco.stats.items())
            lines += ["", f"COCO OKS over {self.coco.images} images: {stats}"]
        return "\n".join(lines)

    def as_markdown(self) -> str:
        """One row per set (stills, clips of one person height, video, COCO), one column per variant:
        median and worst of the frames' worst keypoint over tolerance, and clips within the target."""
        variants = list(dict.fromkeys(s.variant for s in self.sections))
        groups = list(dict.fromkeys(s.group for s in self.sections if not s.clip))
        cells = {(s.group, s.variant): s for s in self.sections if not s.clip}
        header = ["set", "frames", *variants]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for group in groups:
            first = next(cells[(group, v)] for v in variants if (group, v) in cells)
            row = [group, str(first.summary.frames)]
            for variant in variants:
                section = cells.get((group, variant))
                if section is None:
                    row.append("")
                    continue
                cell = f"{section.summary.median_worst_ratio:.2f}× / {section.summary.max_worst_ratio:.2f}×"
                clips = [c for c in self.sections if c.clip and c.variant == variant and c.height_group == group]
                if clips:
                    cell += f" ({sum(c.within_target for c in clips)}/{len(clips)})"
                row.append(cell)
            lines.append("| " + " | ".join(row) + " |")
        clips = self.clip_sections()
        if clips:
            stills = {c.group: c for c in self.clip_sections(STILLS_PATH)}
            lines += [
                "",
                "| clip (from the second frame) | video median | video worst | in target "
                "| stills path median | stills path worst |",
                "|---|---|---|---|---|---|",
            ]
            for clip in clips:
                other = stills.get(clip.group)
                tail = (
                    "| |"
                    if other is None
                    else (f"{other.summary.median_worst_ratio:.2f}× | {other.summary.max_worst_ratio:.2f}× |")
                )
                lines.append(
                    f"| {clip.group} | {clip.summary.median_worst_ratio:.2f}× | {clip.summary.max_worst_ratio:.2f}× | "
                    f"{'yes' if clip.within_target else 'no'} | {tail}"
                )
        return "\n".join(lines)


def _ratio(value: float) -> str:
    return f"{value:6.2f}x" if np.isfinite(value) else "   none"


def _px(value: float, width: int = 9) -> str:
    return f"{value:{width}.1f}" if np.isfinite(value) else " " * (width - 4) + "none"


def _scores(truths: Iterable[LabelledImage], poses: Iterable[Pose | None]) -> list[FrameScore]:
    return [score_frame(t, p) for t, p in zip(truths, poses, strict=True)]


def _second_passes(stage: PoseStage) -> int:
    return stage.second_passes if isinstance(stage, SinglePoseStage) else 0


def score_clip(
    model: OfflineModel, frames: Sequence[ClipFrame], mode: str, pipelined: bool
) -> tuple[list[FrameScore], int]:
    """A clip through a fresh stage: video mode in the pipeline's order, or each frame as a still."""
    if mode == "stills":
        stage = model.stage("stills")
        results = list(run_stills(stage, (f.truth.image for f in frames)))
    else:
        stage = model.stage("video")
        timed = (TimedImage(f.truth.image, f.timestamp_s) for f in frames)
        results = list(run_video(stage, timed, pipelined))
    return _scores((f.truth for f in frames), (best_pose(r) for r in results)), _second_passes(stage)


# The variants --compare adds, as config overrides (the stills path is a mode, not a setting).
COMPARE_VARIANTS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (VIDEO_DEFAULTS, (), "video"),
    (STILLS_PATH, (), "stills"),
    ("smart crop off", ("model.smart_crop=false",), "video"),
    ("smoothing off", ("model.smoothing.enabled=false",), "video"),
)


def evaluate(
    config: Config,
    request: EvalRequest,
    model_name: str | None = None,
    reload: Callable[[list[str]], Config] | None = None,
) -> Report:
    """Score `config`'s model and settings on the request's data. `reload(overrides)` gives the
    config with extra --set overrides, for --compare's variants."""
    request.check()
    model = open_offline_model(config, model_name)
    report = Report(
        model=model.name,
        settings={
            "smart_crop": "on" if config.model.smart_crop else "off",
            "smoothing": "on" if config.model.smoothing.enabled else "off",
            "order": "pipelined" if request.pipelined else "serial",
        },
    )
    photos: list[LabelledImage] = []
    if request.images:
        assert request.truth_csv is not None
        photos = labelled_stills(request.truth_csv, request.images)
        stage = model.stage("stills")
        poses = [best_pose(r) for r in run_stills(stage, (p.image for p in photos))]
        report.sections.append(
            Section(f"stills ({len(photos)} images)", STILLS_PATH, summarize("stills", _scores(photos, poses)))
        )
    if request.clips != "none":
        specs = standard_clips(photos, quick=request.clips == "quick")
        variants = COMPARE_VARIANTS if request.compare else COMPARE_VARIANTS[:1]
        for variant, overrides, mode in variants:
            if overrides and reload is None:
                continue
            variant_model = (
                model if reload is None or not overrides else open_offline_model(reload(list(overrides)), model_name)
            )
            report.sections += _clip_sections(variant_model, photos, specs, variant, mode, request.pipelined)
    if request.video is not None:
        assert request.truth_csv is not None
        report.sections.append(_video_section(model, request))
    if request.coco is not None:
        assert request.coco_images is not None
        section, report.coco = _coco(model, request.coco, request.coco_images)
        if section is not None:
            report.sections.append(section)
    return report


def _clip_sections(
    model: OfflineModel,
    photos: Sequence[LabelledImage],
    specs: Sequence[ClipSpec],
    variant: str,
    mode: str,
    pipelined: bool,
) -> list[Section]:
    names = [p.name for p in photos]
    sections = []
    by_height: dict[int, list[FrameScore]] = {}
    by_height_passes: dict[int, int] = {}
    for spec in specs:
        frames = list(build_clip(photos, spec))
        scores, passes = score_clip(model, frames, mode, pipelined)
        group = _height_group(spec.person_height_px)
        summary = summarize(spec.label(names), scores, skip_first=1)
        sections.append(Section(spec.label(names), variant, summary, passes, clip=True, height_group=group))
        by_height.setdefault(spec.person_height_px, []).extend(scores[1:])
        by_height_passes[spec.person_height_px] = by_height_passes.get(spec.person_height_px, 0) + passes
    for height, scores in sorted(by_height.items(), reverse=True):
        label = _height_group(height)
        sections.append(Section(label, variant, summarize(label, scores), by_height_passes[height]))
    return sections


def _height_group(height_px: int) -> str:
    return f"all clips at person height {height_px} px"


def _video_section(model: OfflineModel, request: EvalRequest) -> Section:
    assert request.video is not None and request.truth_csv is not None
    truths = read_truth_csv(request.truth_csv)
    stage = model.stage("video")
    frames: list[LabelledImage] = []

    def timed() -> Iterable[TimedImage]:
        for index, image in enumerate(video_frames(request.video)):  # type: ignore[arg-type]
            if index >= len(truths):
                raise DatasetError(f"{request.truth_csv}: {len(truths)} rows, but the video has more frames")
            reference = request.reference_px or float(image.shape[0])
            frames.append(LabelledImage(f"frame {index}", image, truths[index], reference))
            yield TimedImage(image, index / request.video_fps)

    poses = [best_pose(r) for r in run_video(stage, timed(), request.pipelined)]
    if len(frames) != len(truths):
        raise DatasetError(f"{request.truth_csv}: {len(truths)} rows for {len(frames)} video frames")
    scores = _scores(frames, poses)
    label = f"video {request.video.name} ({len(frames)} frames)"
    return Section(
        label, VIDEO_DEFAULTS, summarize(label, scores, skip_first=1 if len(scores) > 1 else 0), _second_passes(stage)
    )


def _coco(model: OfflineModel, annotations: Path, images_dir: Path) -> tuple[Section | None, CocoScores]:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise EvalDependencyError("COCO evaluation needs pycocotools: pip install 'edgepose[eval]'") from None
    data, images = read_coco(annotations, images_dir)
    stage = model.stage("stills")
    results: list[dict[str, Any]] = []
    labelled: list[LabelledImage] = []
    poses: list[Pose | None] = []
    for image in images:
        pixels = read_rgb(image.path)
        pose = next(iter(best_pose(r) for r in run_stills(stage, [pixels])))
        if pose is not None:
            xy = pose_pixels(pose, pixels.shape[1], pixels.shape[0])
            triples = np.c_[xy, [k.score for k in pose.keypoints]]
            results.append(
                {
                    "image_id": image.image_id,
                    "category_id": _person_id(data),
                    "keypoints": triples.ravel().tolist(),
                    "score": pose.score,
                }
            )
        single = coco_labelled(image, pixels)
        if single is not None:
            labelled.append(single)
            poses.append(pose)
    gt_data = _coco_ground_truth(data)
    stats: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
        gt = COCO()
        gt.dataset = gt_data
        gt.createIndex()
        if results:
            evaluation = COCOeval(gt, gt.loadRes(results), "keypoints")
            evaluation.params.imgIds = [i.image_id for i in images]
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            names = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
            stats = {name: round(float(value), 4) for name, value in zip(names, evaluation.stats, strict=True)}
    if not results:
        stats = {"AP": 0.0, "AR": 0.0}
    section = None
    if labelled:
        label = f"COCO {annotations.name} (single-person images: {len(labelled)} of {len(images)})"
        section = Section(label, STILLS_PATH, summarize(label, _scores(labelled, poses)))
    return section, CocoScores(len(images), stats)


def _person_id(data: dict[str, Any]) -> int:
    return next(int(c["id"]) for c in data["categories"] if c.get("name") == "person")


def _coco_ground_truth(data: dict[str, Any]) -> dict[str, Any]:
    """A copy with the fields COCOeval reads filled in where a hand-made file leaves them out."""
    annotations = []
    for ann in data["annotations"]:
        ann = dict(ann)
        visible = np.array(ann.get("keypoints", [0] * 51), dtype=np.float64).reshape(-1, 3)[:, 2] > 0
        ann.setdefault("num_keypoints", int(visible.sum()))
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
        annotations.append(ann)
    copy = dict(data)
    copy["annotations"] = annotations
    copy.setdefault("info", {})
    copy.setdefault("licenses", [])
    return copy
