"""Pure builders for the presence, events, state and command-result payloads.

Their shapes are fixed by schemas/{presence,events,state,set-result}.schema.json.
"""

from __future__ import annotations

from typing import Any

from edgepose.commands import RuntimeSettings
from edgepose.presence import Event, Presence


def presence_payload(device_id: str, presence: Presence) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "present": presence.present,
        "people": presence.people,
        "since": round(presence.since_s, 3),
    }


def event_payload(device_id: str, event: Event) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "event": event.kind.value,
        "device_id": device_id,
        "timestamp": round(event.timestamp_s, 3),
    }
    optional = {
        "people": event.people,
        "present_s": None if event.present_s is None else round(event.present_s, 1),
        "person": event.person,
        "drop": event.drop,
        "down_s": event.down_s,
    }
    payload.update({key: value for key, value in optional.items() if value is not None})
    return payload


def state_payload(device_id: str, settings: RuntimeSettings, timestamp_s: float) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "timestamp": round(timestamp_s, 3),
        "detection": settings.detection.value,
        "publish": {"max_fps": settings.max_fps, "keypoints": settings.keypoints},
        "model": {"score_threshold": settings.score_threshold, "smoothing": {"enabled": settings.smoothing}},
        # Commands change the running daemon only; a restart goes back to the YAML file.
        "persistent": False,
    }


def result_payload(error: str | None) -> dict[str, Any]:
    return {"ok": True} if error is None else {"ok": False, "error": error}
