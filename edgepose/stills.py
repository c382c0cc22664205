"""`edgepose infer`: poses in still images, with the same stages the daemon uses (in stills mode:
a first pass on the letterbox, then further passes on the crop it finds while the score improves)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgepose.annotate import annotate
from edgepose.config import Config, ModelConfig
from edgepose.errors import OutputError, UsageError
from edgepose.inference.runtime import InferenceBackend, effective_threads, load_runtime, open_cpu_backend
from edgepose.inference.stage import Mode, PoseStage, build_stage
from edgepose.models import default_model_dir, load_manifest, resolve_model
from edgepose.pose import CropBox, Pose
from edgepose.sources.base import Frame, now_stamps
from edgepose.sources.images import IMAGE_SUFFIXES, read_rgb


@dataclass(frozen=True)
class StillResult:
    image: Path
    width_px: int
    height_px: int
    pose: Pose | None
    crop: CropBox | None = None
    image_rgb: np.ndarray | None = None  # the decoded input, for --annotate; not part of the output

    def as_json(self) -> dict[str, Any]:
        keypoints = self.pose.keypoints if self.pose is not None else ()
        return {
            "image": str(self.image),
            "width": self.width_px,
            "height": self.height_px,
            "keypoints": [
                {
                    "name": k.name,
                    "x_px": round(k.x * self.width_px, 1),
                    "y_px": round(k.y * self.height_px, 1),
                    "x": round(k.x, 4),
                    "y": round(k.y, 4),
                    "score": round(k.score, 3),
                }
                for k in keypoints
            ],
        }

    def as_text(self) -> str:
        lines = [f"{self.image} ({self.width_px}x{self.height_px}):"]
        if self.pose is None:
            lines.append("  no pose found")
        for point in self.as_json()["keypoints"]:
            lines.append(
                f"  {point['name']:15} x={point['x_px']:7.1f} y={point['y_px']:7.1f} score={point['score']:.2f}"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class OfflineModel:
    """A model opened on the CPU for offline use (`infer`, `eval`), and the settings its stages get."""

    backend: InferenceBackend
    name: str
    config: ModelConfig

    def stage(self, mode: Mode) -> PoseStage:
        """A fresh stage (no crop or smoothing state carried over) running the daemon's code."""
        return build_stage(self.backend, self.name, self.config, mode)


def open_offline_model(config: Config, model_name: str | None = None) -> OfflineModel:
    manifest = load_manifest()
    model = resolve_model(model_name or config.model.name, default_model_dir(config.model.dir), manifest)
    threads, _ = effective_threads(config.model.num_threads)
    backend = open_cpu_backend(model.path, load_runtime(config.model.runtime), threads)
    # Threshold 0: offline tools report the best pose whatever its score; the score is in the output.
    model_config = config.model.model_copy(update={"score_threshold": 0.0})
    return OfflineModel(backend, model.spec.name if model.spec else model.path.stem, model_config)


def infer_images(config: Config, images: Sequence[Path], model_name: str | None = None) -> Iterator[StillResult]:
    stage = open_offline_model(config, model_name).stage("stills")
    for index, path in enumerate(images):
        image = read_rgb(path, config.camera.max_image_pixels)
        wall, mono = now_stamps()
        result = stage.process(Frame(image, wall, mono, index))
        best = max(result.poses, key=lambda p: p.score, default=None)
        yield StillResult(path, image.shape[1], image.shape[0], best, result.crop, image)


def annotation_paths(out: Path, images: Sequence[Path]) -> list[Path]:
    """Where `infer --annotate OUT` writes each image: OUT itself when it names an image file and one
    image is given, else OUT/<input file name>. Checked before any inference, so a mistake costs nothing."""
    names_a_file = out.suffix.lower() in IMAGE_SUFFIXES and not out.is_dir()
    if names_a_file:
        if len(images) != 1:
            raise UsageError(
                f"--annotate {out}: a file name takes exactly one image, got {len(images)}; give a directory"
            )
        targets = [out]
    else:
        if out.exists() and not out.is_dir():
            raise UsageError(f"--annotate {out}: exists and is not a directory")
        targets = [out / image.name for image in images]
        seen: dict[Path, Path] = {}
        for image, target in zip(images, targets, strict=True):
            if target in seen:
                raise UsageError(f"--annotate {out}: {seen[target]} and {image} would both be written to {target}")
            seen[target] = image
    for image, target in zip(images, targets, strict=True):
        if target.exists() and image.exists() and target.resolve() == image.resolve():
            raise UsageError(f"--annotate {out}: would overwrite the input {image}; choose another directory")
    return targets


def write_annotated(result: StillResult, target: Path, score_threshold: float) -> None:
    """The input with its pose drawn (same size as the input), in the format `target`'s suffix names."""
    if result.image_rgb is None:
        raise ValueError("write_annotated needs a result that carries its image")
    poses = (result.pose,) if result.pose is not None else ()
    drawn = annotate(result.image_rgb, poses, result.crop, score_threshold)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        ok = cv2.imwrite(str(target), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
    except (OSError, cv2.error) as exc:
        raise OutputError(f"cannot write {target}: {exc}") from exc
    if not ok:
        raise OutputError(f"cannot write {target}: OpenCV could not encode or save it")
