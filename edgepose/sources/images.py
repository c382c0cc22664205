"""Still images, in name order, as a finite (or looping) stream."""

from __future__ import annotations

import glob
from pathlib import Path

import cv2
import numpy as np

from edgepose.errors import InputFileError
from edgepose.sources.base import Delivery, Frame, now_stamps

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def read_rgb(path: Path) -> np.ndarray:
    """An image file as RGB uint8; InputFileError naming the file when it is missing or not an image."""
    if not path.is_file():
        raise InputFileError(f"image not found: {path}")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputFileError(f"not a readable image: {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def expand_images(pattern: str) -> list[Path]:
    path = Path(pattern).expanduser()
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return sorted(Path(p) for p in glob.glob(str(path)) if Path(p).suffix.lower() in IMAGE_SUFFIXES)


class ImagesSource:
    delivery: Delivery = "sequential"

    def __init__(self, pattern: str, loop: bool) -> None:
        self.pattern = pattern
        self.loop = loop
        self._paths: list[Path] = []
        self._index = 0

    frames_skipped = 0

    @property
    def description(self) -> str:
        return f"images:{self.pattern}"

    def open(self) -> None:
        self._paths = expand_images(self.pattern)
        if not self._paths:
            raise InputFileError(f"camera.source: no images match {self.pattern}")
        self._index = 0

    def read(self) -> Frame | None:
        if self._index >= len(self._paths) and not self.loop:
            return None
        path = self._paths[self._index % len(self._paths)]
        image = read_rgb(path)
        wall, mono = now_stamps()
        frame = Frame(image, wall, mono, self._index)
        self._index += 1
        return frame

    def close(self) -> None:
        self._paths = []
