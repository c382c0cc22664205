"""The pipeline's side of the live view: a one-slot "latest frame and result" that costs the
publish thread a lock and an assignment, and nothing else. Encoding happens elsewhere, on the web
part's own thread, and only while someone watches.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from edgepose.inference.stage import InferenceResult


@dataclass(frozen=True, eq=False)
class LiveFrame:
    """One inferred frame as the live view sees it. `image_rgb` is shared, never written to."""

    seq: int
    image_rgb: np.ndarray
    result: InferenceResult
    score_threshold: float  # joints below it are drawn faded


class LiveFeed:
    """Latest-wins slot between the publish thread (offer) and the web part (latest, wait_newer)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._latest: LiveFrame | None = None
        self._seq = 0

    def offer(self, image_rgb: np.ndarray, result: InferenceResult, score_threshold: float = 0.2) -> None:
        """Called by the pipeline for every finished frame: stores references, never copies or waits."""
        with self._condition:
            self._seq += 1
            self._latest = LiveFrame(self._seq, image_rgb, result, score_threshold)
            self._condition.notify_all()

    def latest(self) -> LiveFrame | None:
        with self._condition:
            return self._latest

    def wait_newer(self, seq: int, timeout_s: float) -> LiveFrame | None:
        """The latest frame if newer than `seq`, waiting up to `timeout_s` for one; else None."""
        with self._condition:
            if self._latest is None or self._latest.seq <= seq:
                self._condition.wait(timeout_s)
            if self._latest is not None and self._latest.seq > seq:
                return self._latest
            return None
