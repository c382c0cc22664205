"""Video files and V4L2/USB cameras through OpenCV's VideoCapture."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import cv2

from edgepose.errors import InputFileError, SourceError
from edgepose.sources.base import Delivery, Frame, now_stamps

log = logging.getLogger(__name__)

# The rate assumed for a video whose container does not say (frames per second).
DEFAULT_FILE_FPS = 30.0


class VideoFileSource:
    """A video file, read as fast as inference takes it, every frame, optionally looped."""

    delivery: Delivery = "sequential"

    def __init__(self, path: Path, loop: bool) -> None:
        self.path = path
        self.loop = loop
        self._capture: Any = None
        self._index = 0
        self._frame_period_s = 1.0 / DEFAULT_FILE_FPS

    frames_skipped = 0

    @property
    def description(self) -> str:
        return f"file:{self.path}"

    def open(self) -> None:
        if not self.path.is_file():
            raise InputFileError(f"camera.source: video file not found: {self.path}")
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise InputFileError(f"camera.source: OpenCV cannot open video {self.path} (unsupported codec?)")
        self._capture = capture
        self._index = 0
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        # A container without a usable rate (some MJPEG/raw streams report 0 or nan) is timed at 30 fps:
        # the rate only sets the smoothing clock, never a pace.
        usable = math.isfinite(fps) and 0.0 < fps <= 1000.0
        if not usable:
            log.debug("%s reports %r fps; timing its frames at %g fps", self.description, fps, DEFAULT_FILE_FPS)
        self._frame_period_s = 1.0 / (fps if usable else DEFAULT_FILE_FPS)

    def read(self) -> Frame | None:
        if self._capture is None:
            raise SourceError(f"{self.description}: read before open")
        ok, bgr = self._capture.read()
        if not ok and self.loop and self._index > 0:
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = self._capture.read()
        if not ok:
            return None
        wall, mono = now_stamps()
        # Media time counts on across loops: the loop back to the first frame is a scene cut one frame
        # period later, never a step back in time.
        media_time_s = self._index * self._frame_period_s
        frame = Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), wall, mono, self._index, media_time_s=media_time_s)
        self._index += 1
        return frame

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class CaptureDeviceSource:
    """A V4L2 device (`v4l2:/dev/video0`) or OpenCV camera index (`usb:0`), live."""

    delivery: Delivery = "live"

    def __init__(self, device: str | int, width_px: int, height_px: int, fps: float) -> None:
        self.device = device
        self.width_px = width_px
        self.height_px = height_px
        self.fps = fps
        self._capture: Any = None
        self._index = 0

    frames_skipped = 0

    @property
    def description(self) -> str:
        return f"v4l2:{self.device}" if isinstance(self.device, str) else f"usb:{self.device}"

    def open(self) -> None:
        capture = cv2.VideoCapture(self.device, cv2.CAP_V4L2)
        if not capture.isOpened():
            raise SourceError(f"camera.source: cannot open {self.description} (no such device, or busy)")
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.width_px)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height_px)
        capture.set(cv2.CAP_PROP_FPS, self.fps)
        # A one-frame driver queue: a deeper one hands inference frames that are already old.
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self._capture = capture
        self._index = 0

    def read(self) -> Frame | None:
        if self._capture is None:
            raise SourceError(f"{self.description}: read before open")
        started = time.monotonic()
        ok, bgr = self._capture.read()
        if not ok:
            raise SourceError(f"{self.description}: read failed after {time.monotonic() - started:.1f}s")
        wall, mono = now_stamps()
        frame = Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), wall, mono, self._index)
        self._index += 1
        return frame

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
