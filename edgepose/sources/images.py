"""Still images, in name order, as a finite (or looping) stream."""

from __future__ import annotations

import glob
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgepose.config import DEFAULT_MAX_IMAGE_PIXELS
from edgepose.errors import ImageError, InputFileError
from edgepose.sources.base import Delivery, Frame, now_stamps

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def read_rgb(path: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """An image file as RGB uint8.

    The size is read from the header and checked before anything is decoded: a 1 MB PNG can
    claim 20000x20000 pixels (1.2 GB decoded). Pillow rather than OpenCV because it reads the
    header alone and reports a truncated file instead of returning a half-grey image.
    InputFileError when the file is missing (66), ImageError when it is not a usable image (65).
    """
    if not path.is_file():
        raise InputFileError(f"image not found: {path}")
    try:
        with warnings.catch_warnings():
            # Our own limit applies; Pillow's DecompressionBombWarning would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width_px, height_px = image.size
                if width_px * height_px > max_pixels:
                    raise ImageError(_too_large(path, width_px, height_px, max_pixels))
                image.load()
                upright = ImageOps.exif_transpose(image)  # as a camera app shows it (OpenCV did the same)
                return np.asarray(upright.convert("RGB"))
    except Image.DecompressionBombError as exc:
        # Pillow's own guard (at twice its 89 MP default) fires inside open(), before our check.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = found.group(1) if found else "over 178 million"
        raise ImageError(
            f"{path}: {pixels} pixels, more than camera.max_image_pixels ({max_pixels}); refused before decoding"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(f"not a readable image: {path}") from None
    except OSError as exc:
        # Pillow says "image file is truncated (N bytes not processed)" for a cut-off JPEG or PNG.
        raise ImageError(f"not a readable image: {path}: {exc}") from None


def _too_large(path: Path, width_px: int, height_px: int, max_pixels: int) -> str:
    return (
        f"{path}: {width_px}x{height_px} is {width_px * height_px} pixels, more than camera.max_image_pixels "
        f"({max_pixels}); refused before decoding"
    )


def expand_images(pattern: str) -> list[Path]:
    path = Path(pattern).expanduser()
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return sorted(Path(p) for p in glob.glob(str(path)) if Path(p).suffix.lower() in IMAGE_SUFFIXES)


class ImagesSource:
    delivery: Delivery = "sequential"

    def __init__(self, pattern: str, loop: bool, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        self.pattern = pattern
        self.loop = loop
        self.max_pixels = max_pixels
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
        image = read_rgb(path, self.max_pixels)
        wall, mono = now_stamps()
        frame = Frame(image, wall, mono, self._index)
        self._index += 1
        return frame

    def close(self) -> None:
        self._paths = []
