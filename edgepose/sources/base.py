"""The frame-source seam: every camera, file and test source implements `FrameSource`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

# How the pipeline should take frames from a source:
#   live        - the source runs on its own clock (a camera): read on a capture thread, freshest wins
#   sequential  - every frame matters (a video file): read ahead on a thread, never drop
#   on_demand   - producing a frame costs nothing (synthetic): read inline, exactly when needed
Delivery = Literal["live", "sequential", "on_demand"]


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # RGB uint8, H x W x 3
    timestamp_s: float  # wall-clock capture time, UNIX seconds (what payloads report)
    monotonic_s: float  # the same instant on time.monotonic(), for latency arithmetic
    index: int  # frame counter of the source since it was opened
    # The whole frame already scaled to the model's letterbox content size (RGB uint8), when the
    # camera's ISP can do it for free (picamera2's lores stream); None from other sources.
    scaled: np.ndarray | None = None
    # Where the frame sits on a recording's own timeline (a video file's presentation time), or None
    # for a live source. Smoothing and tracking run on this clock, so a video gives the same keypoints
    # on a fast machine, a loaded one, and a Pi, however far ahead the file was read.
    media_time_s: float | None = None

    @property
    def scene_time_s(self) -> float:
        """The clock the scene moves on: media time for a recording, monotonic capture time when live."""
        return self.monotonic_s if self.media_time_s is None else self.media_time_s

    @property
    def height_px(self) -> int:
        return int(self.image.shape[0])

    @property
    def width_px(self) -> int:
        return int(self.image.shape[1])


def now_stamps() -> tuple[float, float]:
    """(wall, monotonic) for a frame captured right now."""
    return time.time(), time.monotonic()


class FrameSource(Protocol):
    @property
    def description(self) -> str: ...

    @property
    def delivery(self) -> Delivery: ...

    @property
    def frames_skipped(self) -> int:
        """Frames the source itself discarded to stay fresh (a camera's stale queued buffers)."""
        ...

    def open(self) -> None: ...

    def read(self) -> Frame | None:
        """The next frame; None at the end of a finite source. Raises SourceError on failure."""
        ...

    def close(self) -> None: ...
