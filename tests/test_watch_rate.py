"""`edgepose watch`'s per-device rate: measured from the messages, not from when the table was
first drawn. Piped output draws the table only at the end, so the rate must not need an earlier look."""

from __future__ import annotations

import pytest

from edgepose.client import FleetTracker
from tests.test_client import _frame


def test_rate_is_known_at_the_first_look() -> None:
    now = [100.0]
    tracker = FleetTracker(clock=lambda: now[0])
    for seq in range(40):  # 10 messages a second for 4 s, nobody looking meanwhile
        now[0] = 100.0 + seq * 0.1
        tracker.keypoints(_frame("a", seq), received_s=now[0])
    now[0] = 104.0
    (view,) = tracker.devices()
    assert view.rate_per_s == pytest.approx(10.0, rel=0.05)


def test_rate_follows_a_change_between_looks() -> None:
    now = [100.0]
    tracker = FleetTracker(clock=lambda: now[0])
    for seq in range(20):
        now[0] = 100.0 + seq * 0.1
        tracker.keypoints(_frame("a", seq), received_s=now[0])
    now[0] = 102.0
    tracker.devices()
    for seq in range(20, 30):  # then 5 a second
        now[0] = 102.0 + (seq - 19) * 0.2
        tracker.keypoints(_frame("a", seq), received_s=now[0])
    (view,) = tracker.devices()
    assert view.rate_per_s == pytest.approx(5.0, rel=0.05)
