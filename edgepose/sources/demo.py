"""`camera.source: demo`: real photos of people turned into a camera-like stream with pan and zoom.

For `make run` on a machine without a camera: the pipeline, the model and MQTT all do real work
on real people, and the slow motion exercises smart crop and smoothing like a live scene would.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from edgepose.sources.base import Delivery, Frame, now_stamps
from edgepose.sources.images import read_rgb
from edgepose.sources.paced import FramePacer

SECONDS_PER_PHOTO = 8.0
BACKGROUND_RGB = (96, 104, 112)


def demo_transform(photo_h: int, photo_w: int, canvas_h: int, canvas_w: int, t_s: float) -> tuple[float, float, float]:
    """(scale, tx, ty) placing the photo in the canvas at time t: it drifts side to side and breathes."""
    phase = 2 * math.pi * t_s / SECONDS_PER_PHOTO
    # Person height between ~60% and ~95% of the canvas: the range a room camera sees.
    scale = canvas_h / photo_h * (0.775 + 0.175 * math.sin(phase))
    width = photo_w * scale
    height = photo_h * scale
    travel_x = max(0.0, canvas_w - width)
    tx = travel_x * (0.5 + 0.45 * math.sin(phase / 2))
    ty = (canvas_h - height) * 0.5 + 0.05 * canvas_h * math.cos(phase)
    return scale, tx, ty


class DemoSource:
    delivery: Delivery = "live"

    def __init__(self, photos: list[Path], width_px: int, height_px: int, fps: float) -> None:
        self.photos = photos
        self.width_px = width_px
        self.height_px = height_px
        self.fps = fps
        self._images: list[np.ndarray] = []
        self._pacer = FramePacer(fps)
        self._index = 0

    frames_skipped = 0

    @property
    def description(self) -> str:
        return f"demo ({len(self.photos)} photos, {self.width_px}x{self.height_px} @ {self.fps:g} fps)"

    def open(self) -> None:
        self._images = [read_rgb(p) for p in self.photos]
        self._index = 0

    def render(self, index: int) -> np.ndarray:
        t_s = index / self.fps
        photo = self._images[int(t_s // SECONDS_PER_PHOTO) % len(self._images)]
        scale, tx, ty = demo_transform(photo.shape[0], photo.shape[1], self.height_px, self.width_px, t_s)
        matrix = np.array([[scale, 0.0, tx], [0.0, scale, ty]], dtype=np.float32)
        return cv2.warpAffine(
            photo,
            matrix,
            (self.width_px, self.height_px),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=BACKGROUND_RGB,
        )

    def read(self) -> Frame | None:
        self._pacer.wait()
        image = self.render(self._index)
        wall, mono = now_stamps()
        frame = Frame(image, wall, mono, self._index)
        self._index += 1
        return frame

    def close(self) -> None:
        self._images = []
