"""Pure geometry between frame pixels and model input coordinates.

Every region the model sees is a `CropBox` in frame-normalized coordinates (0..1 of the frame's
height and width; a box may extend past the frame, the part outside is zero padding). The plain
letterbox is the smallest square box centred on the frame, and MoveNet's smart crop is any other
square box, so one resize function and one mapping function serve both.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from edgepose.pose import CropBox


@functools.lru_cache(maxsize=16)
def letterbox_box(height_px: int, width_px: int) -> CropBox:
    """The square box, centred on the frame, that holds the whole frame with its aspect kept.

    The padding is split in whole pixels (the odd pixel goes after), so the box edges fall on
    pixel boundaries and the resampling does not depend on where the frame sits. Cached: every
    video frame asks for it, and a CropBox is immutable.
    """
    if height_px <= 0 or width_px <= 0:
        raise ValueError(f"frame size must be positive, got {width_px}x{height_px}")
    side_px = max(height_px, width_px)
    pad_top_px = (side_px - height_px) // 2
    pad_left_px = (side_px - width_px) // 2
    return CropBox(
        ymin=-pad_top_px / height_px,
        xmin=-pad_left_px / width_px,
        ymax=(side_px - pad_top_px) / height_px,
        xmax=(side_px - pad_left_px) / width_px,
    )


@dataclass(frozen=True)
class PasteRegion:
    """Which frame pixels land where in the model input: src rows/cols -> dst rows/cols."""

    src_y0: int
    src_y1: int
    src_x0: int
    src_x1: int
    dst_y0: int
    dst_y1: int
    dst_x0: int
    dst_x1: int

    @property
    def empty(self) -> bool:
        return (
            self.src_y1 <= self.src_y0
            or self.src_x1 <= self.src_x0
            or self.dst_y1 <= self.dst_y0
            or (self.dst_x1 <= self.dst_x0)
        )


def paste_region(
    box: CropBox, frame_height_px: int, frame_width_px: int, out_height_px: int, out_width_px: int
) -> PasteRegion:
    """Where the part of `box` inside the frame goes in an out_h x out_w input, in whole pixels.

    Whole source pixels keep the resampling identical wherever the person stands in the frame
    (a sub-pixel phase would change the model's answer by several pixels); the rounding this
    costs is undone exactly by `effective_box`.
    """
    box_y0 = box.ymin * frame_height_px
    box_x0 = box.xmin * frame_width_px
    box_h = (box.ymax - box.ymin) * frame_height_px
    box_w = (box.xmax - box.xmin) * frame_width_px
    if box_h <= 0 or box_w <= 0:
        raise ValueError(f"crop box has no area: {box}")
    src_y0 = min(frame_height_px, max(0, round(box_y0)))
    src_x0 = min(frame_width_px, max(0, round(box_x0)))
    src_y1 = min(frame_height_px, max(src_y0, round(box_y0 + box_h)))
    src_x1 = min(frame_width_px, max(src_x0, round(box_x0 + box_w)))
    scale_y = out_height_px / box_h
    scale_x = out_width_px / box_w
    dst_y0 = min(out_height_px, max(0, round((src_y0 - box_y0) * scale_y)))
    dst_x0 = min(out_width_px, max(0, round((src_x0 - box_x0) * scale_x)))
    dst_y1 = min(out_height_px, max(dst_y0, round((src_y1 - box_y0) * scale_y)))
    dst_x1 = min(out_width_px, max(dst_x0, round((src_x1 - box_x0) * scale_x)))
    return PasteRegion(src_y0, src_y1, src_x0, src_x1, dst_y0, dst_y1, dst_x0, dst_x1)


def effective_box(
    region: PasteRegion,
    requested: CropBox,
    frame_height_px: int,
    frame_width_px: int,
    out_height_px: int,
    out_width_px: int,
) -> CropBox:
    """The box that the pixels actually pasted correspond to (the requested one, rounded to pixels)."""
    if region.empty:
        return requested
    scale_y = (region.dst_y1 - region.dst_y0) / (region.src_y1 - region.src_y0)
    scale_x = (region.dst_x1 - region.dst_x0) / (region.src_x1 - region.src_x0)
    y0_px = region.src_y0 - region.dst_y0 / scale_y
    x0_px = region.src_x0 - region.dst_x0 / scale_x
    return CropBox(
        ymin=y0_px / frame_height_px,
        xmin=x0_px / frame_width_px,
        ymax=(y0_px + out_height_px / scale_y) / frame_height_px,
        xmax=(x0_px + out_width_px / scale_x) / frame_width_px,
    )


def crop_and_resize_into(frame: np.ndarray, box: CropBox, out: np.ndarray) -> CropBox:
    """Resize the `box` region of an HxWx3 frame into `out` (h x w x 3) in place, zero padding outside.

    Writes into the caller's buffer so the hot path allocates nothing per frame: the letterbox and
    the smart crop are the same operation with different boxes. Returns the box the written pixels
    really correspond to; map the model's output through that one.
    """
    frame_h, frame_w = frame.shape[0], frame.shape[1]
    out_h, out_w = out.shape[0], out.shape[1]
    region = paste_region(box, frame_h, frame_w, out_h, out_w)
    if region.empty:
        out[...] = 0
        return box
    _zero_margins(out, region)
    cv2.resize(
        frame[region.src_y0 : region.src_y1, region.src_x0 : region.src_x1],
        (region.dst_x1 - region.dst_x0, region.dst_y1 - region.dst_y0),
        dst=out[region.dst_y0 : region.dst_y1, region.dst_x0 : region.dst_x1],
        interpolation=cv2.INTER_LINEAR,
    )
    return effective_box(region, box, frame_h, frame_w, out_h, out_w)


def _zero_margins(out: np.ndarray, region: PasteRegion) -> None:
    # Zero only the margins: the pasted rectangle is overwritten by the caller anyway.
    out[: region.dst_y0] = 0
    out[region.dst_y1 :] = 0
    out[region.dst_y0 : region.dst_y1, : region.dst_x0] = 0
    out[region.dst_y0 : region.dst_y1, region.dst_x1 :] = 0


def letterbox_content_size(frame_height_px: int, frame_width_px: int, input_px: int) -> tuple[int, int]:
    """(width, height) the whole frame takes inside a square input_px model input, letterboxed: the
    size to ask a camera's scaler for, so `paste_scaled_into` can use its output as it is."""
    box = letterbox_box(frame_height_px, frame_width_px)
    region = paste_region(box, frame_height_px, frame_width_px, input_px, input_px)
    return region.dst_x1 - region.dst_x0, region.dst_y1 - region.dst_y0


def paste_scaled_into(scaled: np.ndarray, frame_height_px: int, frame_width_px: int, out: np.ndarray) -> CropBox | None:
    """The letterbox of `crop_and_resize_into`, from a frame the camera already scaled to the content size.

    Returns the same effective box (so decoding maps keypoints back identically), or None when
    `scaled` is not exactly the content size for `out`: then the caller resizes the full frame.
    """
    box = letterbox_box(frame_height_px, frame_width_px)
    region = paste_region(box, frame_height_px, frame_width_px, out.shape[0], out.shape[1])
    if region.empty or scaled.shape != (region.dst_y1 - region.dst_y0, region.dst_x1 - region.dst_x0, out.shape[2]):
        return None
    _zero_margins(out, region)
    out[region.dst_y0 : region.dst_y1, region.dst_x0 : region.dst_x1] = scaled
    return effective_box(region, box, frame_height_px, frame_width_px, out.shape[0], out.shape[1])


def box_to_frame(yx: np.ndarray, box: CropBox) -> np.ndarray:
    """Map (..., 2) model-input-normalized (y, x) through `box` to frame-normalized (y, x)."""
    out = np.empty_like(yx, dtype=np.float64)
    out[..., 0] = box.ymin + yx[..., 0] * (box.ymax - box.ymin)
    out[..., 1] = box.xmin + yx[..., 1] * (box.xmax - box.xmin)
    return out


def frame_to_box(yx: np.ndarray, box: CropBox) -> np.ndarray:
    """Inverse of `box_to_frame`: frame-normalized (y, x) to the box's own 0..1 coordinates."""
    out = np.empty_like(yx, dtype=np.float64)
    out[..., 0] = (yx[..., 0] - box.ymin) / (box.ymax - box.ymin)
    out[..., 1] = (yx[..., 1] - box.xmin) / (box.xmax - box.xmin)
    return out
