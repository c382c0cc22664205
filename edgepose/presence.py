"""Presence with hysteresis, from the number of poses per frame (pure: no MQTT, no threads).

A person is present after `enter_frames` consecutive frames with at least one pose, and absent
again once `leave_s` seconds have passed without any pose. The people count is debounced the
same way: a new count is taken after `enter_frames` consecutive frames agree on it, so one
missed or doubled detection does not flap a retained topic or a Home Assistant sensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class EventKind(str, Enum):
    PERSON_ENTERED = "person_entered"
    PERSON_LEFT = "person_left"
    FALL_DETECTED = "fall_detected"


@dataclass(frozen=True)
class Presence:
    """What the retained presence topic says. `since_s` (wall clock) is when `present` last changed:
    the frame that confirmed the person, or the last frame that still showed them."""

    present: bool
    people: int
    since_s: float


@dataclass(frozen=True)
class Event:
    """One non-retained event. Fields that do not apply to a kind stay None."""

    kind: EventKind
    timestamp_s: float
    people: int | None = None  # person_entered: how many came in
    present_s: float | None = None  # person_left: how long someone was there
    person: int | None = None  # fall_detected: the track id (multi-pose) or the pose's index
    drop: float | None = None  # fall_detected: how far the hips fell, in torso lengths
    down_s: float | None = None  # fall_detected: how long the person stayed down before the alert


@dataclass(frozen=True)
class PresenceUpdate:
    presence: Presence | None  # set when the retained presence must be re-published
    events: tuple[Event, ...] = ()


class PresenceTracker:
    def __init__(self, enter_frames: int, leave_s: float, start_timestamp_s: float) -> None:
        if enter_frames < 1 or leave_s <= 0:
            raise ValueError("enter_frames must be >= 1 and leave_s > 0")
        self.enter_frames = enter_frames
        self.leave_s = leave_s
        self.state = Presence(present=False, people=0, since_s=start_timestamp_s)
        self._streak = 0  # consecutive frames with a pose while absent
        self._candidate = 0  # a people count different from the reported one, and how many frames agreed
        self._candidate_frames = 0
        self._last_seen_monotonic_s = 0.0
        self._last_seen_timestamp_s = start_timestamp_s

    def take_over(self, previous: PresenceTracker) -> None:
        """Continue from a tracker this one replaces (a reload with new presence settings): who is in
        the room and since when carry over, so the reload itself is not an arrival or a departure."""
        self.state = previous.state
        self._last_seen_monotonic_s = previous._last_seen_monotonic_s
        self._last_seen_timestamp_s = previous._last_seen_timestamp_s

    def observe(self, people: int, timestamp_s: float, monotonic_s: float) -> PresenceUpdate:
        """One inferred frame with `people` poses above the score threshold."""
        if people <= 0:
            self._streak = 0
            self._candidate_frames = 0
            return self.tick(timestamp_s, monotonic_s)
        self._last_seen_monotonic_s = monotonic_s
        self._last_seen_timestamp_s = timestamp_s
        if not self.state.present:
            self._streak += 1
            if self._streak < self.enter_frames:
                return PresenceUpdate(None)
            self._streak = 0
            self.state = Presence(present=True, people=people, since_s=timestamp_s)
            return PresenceUpdate(self.state, (Event(EventKind.PERSON_ENTERED, timestamp_s, people=people),))
        if people == self.state.people:
            self._candidate_frames = 0
            return PresenceUpdate(None)
        if people == self._candidate:
            self._candidate_frames += 1
        else:
            self._candidate, self._candidate_frames = people, 1
        if self._candidate_frames < self.enter_frames:
            return PresenceUpdate(None)
        self._candidate_frames = 0
        self.state = Presence(present=True, people=people, since_s=self.state.since_s)
        return PresenceUpdate(self.state)

    def tick(self, timestamp_s: float, monotonic_s: float) -> PresenceUpdate:
        """Time passing without a pose (also called when no frame arrives, e.g. a dead camera)."""
        if not self.state.present or monotonic_s - self._last_seen_monotonic_s < self.leave_s:
            return PresenceUpdate(None)
        entered_s = self.state.since_s
        self.state = Presence(present=False, people=0, since_s=self._last_seen_timestamp_s)
        left = Event(EventKind.PERSON_LEFT, timestamp_s, present_s=max(0.0, self._last_seen_timestamp_s - entered_s))
        return PresenceUpdate(self.state, (left,))
