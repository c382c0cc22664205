"""A frame clock for sources that stand in for a camera (demo, paced synthetic)."""

from __future__ import annotations

import time


class FramePacer:
    """Sleeps until the next frame is due; if the caller fell behind it re-anchors instead of bursting."""

    def __init__(self, fps: float) -> None:
        self.period_s = 1.0 / fps
        self._next_s: float | None = None

    def wait(self) -> None:
        now = time.monotonic()
        if self._next_s is None or now - self._next_s > self.period_s:
            self._next_s = now
        elif self._next_s > now:
            time.sleep(self._next_s - now)
        self._next_s += self.period_s
