"""`edgepose infer`: poses in still images, with the same estimator the daemon uses."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepose.config import Config
from edgepose.inference.movenet import RawEstimate, SinglePoseEstimator
from edgepose.inference.runtime import effective_threads, load_runtime, open_cpu_backend
from edgepose.models import default_model_dir, load_manifest, resolve_model
from edgepose.pose import KEYPOINT_NAMES
from edgepose.sources.images import read_rgb


@dataclass(frozen=True)
class StillResult:
    image: Path
    width_px: int
    height_px: int
    estimate: RawEstimate

    def as_json(self) -> dict[str, Any]:
        keypoints = self.estimate.keypoints
        return {
            "image": str(self.image),
            "width": self.width_px,
            "height": self.height_px,
            "keypoints": [
                {
                    "name": name,
                    "x_px": round(float(keypoints[i, 1]) * self.width_px, 1),
                    "y_px": round(float(keypoints[i, 0]) * self.height_px, 1),
                    "x": round(float(keypoints[i, 1]), 4),
                    "y": round(float(keypoints[i, 0]), 4),
                    "score": round(float(keypoints[i, 2]), 3),
                }
                for i, name in enumerate(KEYPOINT_NAMES)
            ],
        }

    def as_text(self) -> str:
        lines = [f"{self.image} ({self.width_px}x{self.height_px}):"]
        for point in self.as_json()["keypoints"]:
            lines.append(
                f"  {point['name']:15} x={point['x_px']:7.1f} y={point['y_px']:7.1f} score={point['score']:.2f}"
            )
        return "\n".join(lines)


def infer_images(config: Config, images: Sequence[Path], model_name: str | None = None) -> Iterator[StillResult]:
    manifest = load_manifest()
    model = resolve_model(model_name or config.model.name, default_model_dir(config.model.dir), manifest)
    threads, _ = effective_threads(config.model.num_threads)
    backend = open_cpu_backend(model.path, load_runtime(config.model.runtime), threads)
    estimator = SinglePoseEstimator(backend)
    for path in images:
        image = read_rgb(path)
        yield StillResult(path, image.shape[1], image.shape[0], estimator.estimate(image))
