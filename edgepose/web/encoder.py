"""JPEG encoding for the live view, on its own thread and only while a stream has a viewer.

The pipeline never waits for it: it reads the latest frame from a LiveFeed, so a slow encoder
simply skips frames. At most `max_fps` frames a second are encoded whatever the inference rate,
which bounds the CPU one viewer takes from inference.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from edgepose.annotate import annotate, encode_jpeg
from edgepose.web.live import LiveFeed, LiveFrame


def render_jpeg(frame: LiveFrame, quality: int, raw: bool = False) -> bytes:
    """The frame as JPEG, with its poses and crop box drawn unless `raw`."""
    if raw:
        return encode_jpeg(frame.image_rgb, quality)
    result = frame.result
    return encode_jpeg(annotate(frame.image_rgb, result.poses, result.crop, frame.score_threshold), quality)


class StreamEncoder:
    """Encodes the latest annotated frame for the streams; idle (no encoding at all) without viewers."""

    def __init__(
        self,
        feed: LiveFeed,
        deliver: Callable[[int, bytes], None],
        max_fps: float,
        quality: int,
    ) -> None:
        self._feed = feed
        self._deliver = deliver  # called on this thread with (frame seq, jpeg)
        self._interval_s = 1.0 / max_fps
        self._quality = quality
        self._lock = threading.Lock()
        self._viewers = 0
        self._watched = threading.Event()
        self.frames_encoded = 0
        self.encode_ms_last = 0.0

    def viewer_joined(self) -> None:
        with self._lock:
            self._viewers += 1
            self._watched.set()

    def viewer_left(self) -> None:
        with self._lock:
            self._viewers = max(0, self._viewers - 1)
            if self._viewers == 0:
                self._watched.clear()

    def run(self, stop: threading.Event) -> None:
        last_seq = 0
        next_due_s = 0.0
        while not stop.is_set():
            if not self._watched.wait(0.2):
                continue
            wait_s = next_due_s - time.monotonic()
            if wait_s > 0 and stop.wait(wait_s):
                return
            frame = self._feed.wait_newer(last_seq, 0.2)
            if frame is None or not self._watched.is_set():
                continue
            started_s = time.monotonic()
            jpeg = render_jpeg(frame, self._quality)
            self.encode_ms_last = (time.monotonic() - started_s) * 1e3
            self.frames_encoded += 1
            last_seq = frame.seq
            next_due_s = started_s + self._interval_s
            self._deliver(frame.seq, jpeg)
