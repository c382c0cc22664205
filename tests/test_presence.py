"""Presence hysteresis: enter after N frames with a pose, leave after leave_s without one."""

from __future__ import annotations

import json

import jsonschema
import pytest

from edgepose.mqtt.events import event_payload, presence_payload
from edgepose.presence import EventKind, Presence, PresenceTracker
from tests.test_payloads import load_schema

T0 = 1_700_000_000.0


def _feed(tracker: PresenceTracker, counts: list[int], fps: float = 10.0, start_s: float = 0.0) -> list[tuple]:
    """(frame index, presence or None, event kinds) per frame."""
    out = []
    for index, people in enumerate(counts):
        t = start_s + index / fps
        update = tracker.observe(people, T0 + t, t)
        out.append((index, update.presence, [e.kind for e in update.events]))
    return out


def test_present_after_enter_frames_consecutive_frames() -> None:
    tracker = PresenceTracker(enter_frames=3, leave_s=5.0, start_timestamp_s=T0)
    steps = _feed(tracker, [1, 1, 0, 1, 1, 1, 1])
    changes = [(i, p, kinds) for i, p, kinds in steps if p is not None]
    assert len(changes) == 1
    index, presence, kinds = changes[0]
    assert index == 5  # frames 3, 4, 5: the broken streak at frame 2 restarted the count
    assert presence == Presence(present=True, people=1, since_s=T0 + 0.5)
    assert kinds == [EventKind.PERSON_ENTERED]


def test_absent_after_leave_s_without_a_pose_not_before() -> None:
    tracker = PresenceTracker(enter_frames=1, leave_s=2.0, start_timestamp_s=T0)
    assert tracker.observe(1, T0, 0.0).events[0].kind is EventKind.PERSON_ENTERED
    tracker.observe(1, T0 + 1.0, 1.0)
    # Short gaps (a missed detection, someone turning away) keep the person present.
    for t in (1.5, 2.0, 2.9):
        assert tracker.observe(0, T0 + t, t).presence is None
    update = tracker.observe(0, T0 + 3.0, 3.0)
    assert update.presence == Presence(present=False, people=0, since_s=T0 + 1.0)
    (left,) = update.events
    assert left.kind is EventKind.PERSON_LEFT and left.timestamp_s == T0 + 3.0 and left.present_s == 1.0
    # Stays absent, says nothing more.
    assert tracker.observe(0, T0 + 10, 10.0).presence is None


def test_seen_again_within_leave_s_resets_the_timer() -> None:
    tracker = PresenceTracker(enter_frames=1, leave_s=2.0, start_timestamp_s=T0)
    tracker.observe(1, T0, 0.0)
    tracker.observe(0, T0 + 1.5, 1.5)
    tracker.observe(1, T0 + 1.9, 1.9)
    assert tracker.observe(0, T0 + 3.5, 3.5).presence is None
    assert tracker.observe(0, T0 + 3.95, 3.95).presence.present is False  # type: ignore[union-attr]


def test_tick_leaves_without_frames() -> None:
    """A camera that stops delivering frames must not keep someone present forever."""
    tracker = PresenceTracker(enter_frames=1, leave_s=5.0, start_timestamp_s=T0)
    tracker.observe(1, T0, 0.0)
    assert tracker.tick(T0 + 4.9, 4.9).presence is None
    update = tracker.tick(T0 + 5.0, 5.0)
    assert update.presence is not None and not update.presence.present
    assert [e.kind for e in update.events] == [EventKind.PERSON_LEFT]


def test_people_count_is_debounced() -> None:
    tracker = PresenceTracker(enter_frames=3, leave_s=5.0, start_timestamp_s=T0)
    steps = _feed(tracker, [2, 2, 2, 1, 2, 1, 1, 1, 3, 3, 0, 3, 3, 3])
    changes = [(i, p.people) for i, p, _ in steps if p is not None]
    # Enter with 2; a single 1 does not count; three 1s do; a 0 inside the 3s restarts them.
    assert changes == [(2, 2), (7, 1), (13, 3)]
    assert [kinds for _, _, kinds in steps if kinds] == [[EventKind.PERSON_ENTERED]]


def test_enter_and_leave_repeatedly() -> None:
    tracker = PresenceTracker(enter_frames=2, leave_s=1.0, start_timestamp_s=T0)
    kinds = []
    t = 0.0
    for _ in range(3):
        for people in [1] * 5 + [0] * 15:
            kinds += [e.kind for e in tracker.observe(people, T0 + t, t).events]
            t += 0.1
    assert kinds == [EventKind.PERSON_ENTERED, EventKind.PERSON_LEFT] * 3


@pytest.mark.parametrize(("enter_frames", "leave_s"), [(0, 1.0), (1, 0.0)])
def test_bad_parameters(enter_frames: int, leave_s: float) -> None:
    with pytest.raises(ValueError):
        PresenceTracker(enter_frames, leave_s, T0)


def test_payloads_match_their_schemas() -> None:
    tracker = PresenceTracker(enter_frames=1, leave_s=1.0, start_timestamp_s=T0)
    entered = tracker.observe(2, T0 + 0.25, 0.25)
    left = tracker.observe(0, T0 + 2.0, 2.0)
    presence_schema = load_schema("presence")
    events_schema = load_schema("events")
    for update in (entered, left):
        assert update.presence is not None
        payload = presence_payload("pi-lab", update.presence)
        jsonschema.validate(payload, presence_schema)
        for event in update.events:
            jsonschema.validate(event_payload("pi-lab", event), events_schema)
    assert presence_payload("pi-lab", entered.presence) == {  # type: ignore[arg-type]
        "device_id": "pi-lab",
        "present": True,
        "people": 2,
        "since": T0 + 0.25,
    }
    assert event_payload("pi-lab", left.events[0]) == {
        "event": "person_left",
        "device_id": "pi-lab",
        "timestamp": T0 + 2.0,
        "present_s": 0.0,
    }
    json.dumps(event_payload("pi-lab", entered.events[0]), allow_nan=False)
