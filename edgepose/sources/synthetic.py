"""`synthetic` / `synthetic:FPS`: generated frames for benchmarks and soak tests.

Frames are made once at open and cycled, so reading costs nothing: the benchmark then measures
the pipeline, not the source. Unpaced (`synthetic`) frames are produced exactly when inference
asks; paced (`synthetic:30`) behaves like a 30 fps camera.
"""

from __future__ import annotations

import numpy as np

from edgepose.sources.base import Delivery, Frame, now_stamps
from edgepose.sources.paced import FramePacer

_DISTINCT_FRAMES = 8


class SyntheticSource:
    def __init__(self, width_px: int, height_px: int, fps: float | None, seed: int = 0) -> None:
        self.width_px = width_px
        self.height_px = height_px
        self.fps = fps
        self.seed = seed
        self._frames: list[np.ndarray] = []
        self._pacer = FramePacer(fps) if fps else None
        self._index = 0

    @property
    def delivery(self) -> Delivery:
        return "live" if self._pacer is not None else "on_demand"

    frames_skipped = 0

    @property
    def description(self) -> str:
        rate = f"{self.fps:g} fps" if self.fps else "unpaced"
        return f"synthetic {self.width_px}x{self.height_px} {rate}"

    def open(self) -> None:
        rng = np.random.default_rng(self.seed)
        ys = np.linspace(0, 255, self.height_px, dtype=np.float32)[:, None]
        xs = np.linspace(0, 255, self.width_px, dtype=np.float32)[None, :]
        self._frames = []
        for _ in range(_DISTINCT_FRAMES):
            base = (ys * rng.uniform(0.2, 1.0) + xs * rng.uniform(0.2, 1.0)) % 256
            noise = rng.integers(0, 32, size=(self.height_px, self.width_px, 3), dtype=np.uint8)
            image = np.repeat(base.astype(np.uint8)[:, :, None], 3, axis=2) // 2 + noise
            self._frames.append(np.ascontiguousarray(image))
        self._index = 0

    def read(self) -> Frame | None:
        if self._pacer is not None:
            self._pacer.wait()
        wall, mono = now_stamps()
        frame = Frame(self._frames[self._index % len(self._frames)], wall, mono, self._index)
        self._index += 1
        return frame

    def close(self) -> None:
        self._frames = []
