"""Pure decoders for keypoints payloads: both formats (json, compact) into the same `Pose` objects.

The consumer side of payloads.py. Every message is checked against the JSON Schema shipped next to
this module (compiled once by fastjsonschema), so a consumer never acts on a half-valid message; a
message that fails gets one `PayloadError` naming what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import fastjsonschema

from edgepose.errors import EXIT_DATA, EdgeposeError
from edgepose.mqtt.payloads import (
    COMPACT_COORD_SCALE,
    COMPACT_SCORE_SCALE,
    KEYPOINTS_COMPACT_SCHEMA,
    KEYPOINTS_SCHEMA,
    PayloadFormat,
)
from edgepose.pose import KEYPOINT_NAMES, BoundingBox, Keypoint, Pose

SCHEMA_FILES = {
    KEYPOINTS_SCHEMA: "keypoints.schema.json",
    KEYPOINTS_COMPACT_SCHEMA: "keypoints-compact.schema.json",
}


class PayloadError(EdgeposeError):
    """A keypoints message that is not JSON, names an unknown schema, or does not match its schema."""

    exit_code = EXIT_DATA


@dataclass(frozen=True)
class KeypointsFrame:
    """One decoded keypoints message, whatever format it came in."""

    device_id: str
    seq: int
    timestamp_s: float
    frame_width_px: int
    frame_height_px: int
    poses: tuple[Pose, ...]
    payload_format: PayloadFormat
    size_bytes: int
    # Only the json format carries these; compact leaves them to the retained health message.
    model: str | None = None
    backend: str | None = None


@cache
def schema_validator(schema_id: str) -> Callable[[Any], Any]:
    """The compiled validator for a schema id (compiling costs milliseconds; validating microseconds)."""
    text = resources.files("edgepose.mqtt").joinpath("schemas", SCHEMA_FILES[schema_id]).read_text(encoding="utf-8")
    validate: Callable[[Any], Any] = fastjsonschema.compile(json.loads(text))
    return validate


def decode_keypoints(device_id: str, payload: bytes, validate: bool = True) -> KeypointsFrame:
    """Decode one message from `<base>/<device_id>/keypoints`. Raises PayloadError."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"{device_id}: keypoints payload is not JSON: {exc}") from None
    schema_id = data.get("schema") if isinstance(data, dict) else None
    if schema_id not in SCHEMA_FILES:
        raise PayloadError(f"{device_id}: unknown keypoints schema {schema_id!r} (known: {', '.join(SCHEMA_FILES)})")
    if validate:
        try:
            schema_validator(schema_id)(data)
        except fastjsonschema.JsonSchemaException as exc:
            raise PayloadError(f"{device_id}: {schema_id}: {exc}") from None
    try:
        if schema_id == KEYPOINTS_COMPACT_SCHEMA:
            return _from_compact(device_id, data, len(payload))
        return _from_json(device_id, data, len(payload))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        # Reached only with validate=False: the schema rules these out.
        raise PayloadError(f"{device_id}: {schema_id}: malformed message ({type(exc).__name__}: {exc})") from None


def _from_json(device_id: str, data: dict[str, Any], size_bytes: int) -> KeypointsFrame:
    poses = []
    for item in data["poses"]:
        keypoints = tuple(
            Keypoint(k["name"], float(k["x"]), float(k["y"]), float(k["score"])) for k in item["keypoints"]
        )
        box = item.get("bbox")
        bbox = BoundingBox(box["xmin"], box["ymin"], box["xmax"], box["ymax"]) if box is not None else None
        poses.append(Pose(keypoints, float(item["score"]), item.get("id"), bbox))
    return KeypointsFrame(
        device_id=device_id,
        seq=int(data["seq"]),
        timestamp_s=float(data["timestamp"]),
        frame_width_px=int(data["frame"]["width"]),
        frame_height_px=int(data["frame"]["height"]),
        poses=tuple(poses),
        payload_format=PayloadFormat.JSON,
        size_bytes=size_bytes,
        model=data["model"],
        backend=data["backend"],
    )


def _from_compact(device_id: str, data: dict[str, Any], size_bytes: int) -> KeypointsFrame:
    ids = data.get("ids") or [None] * len(data["poses"])
    boxes = data.get("boxes") or [None] * len(data["poses"])
    poses = []
    for packed, track_id, box in zip(data["poses"], ids, boxes, strict=True):
        keypoints = tuple(
            Keypoint(
                name,
                packed[1 + 3 * i] / COMPACT_COORD_SCALE,
                packed[2 + 3 * i] / COMPACT_COORD_SCALE,
                packed[3 + 3 * i] / COMPACT_SCORE_SCALE,
            )
            for i, name in enumerate(KEYPOINT_NAMES)
        )
        bbox = BoundingBox(*(v / COMPACT_COORD_SCALE for v in box)) if box is not None else None
        poses.append(Pose(keypoints, packed[0] / COMPACT_SCORE_SCALE, track_id, bbox))
    width_px, height_px = data["frame"]
    return KeypointsFrame(
        device_id=device_id,
        seq=int(data["seq"]),
        timestamp_s=float(data["ts"]),
        frame_width_px=int(width_px),
        frame_height_px=int(height_px),
        poses=tuple(poses),
        payload_format=PayloadFormat.COMPACT,
        size_bytes=size_bytes,
    )
