"""Pure builders for the JSON payloads. Their shapes are fixed by schemas/*.schema.json."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

from edgepose.pose import CropBox, Pose

KEYPOINTS_SCHEMA = "edgepose.keypoints/1"
KEYPOINTS_COMPACT_SCHEMA = "edgepose.kpc/1"
HEALTH_SCHEMA = "edgepose.health/1"


class PayloadFormat(str, Enum):
    """`publish.format`: the keypoints payload a device sends."""

    JSON = "json"  # edgepose.keypoints/1: self-describing, about 1.3 kB for one person
    COMPACT = "compact"  # edgepose.kpc/1: arrays of fixed-point integers, under 300 bytes for one person


# Normalized coordinates to 4 decimals is 0.06 px on a 640 px frame: finer than any model's accuracy,
# and it keeps a 17-keypoint message around 1.3 kB.
_COORD_DECIMALS = 4
_SCORE_DECIMALS = 3


@dataclass(frozen=True)
class KeypointsMessage:
    device_id: str
    seq: int
    timestamp_s: float
    frame_width_px: int
    frame_height_px: int
    model: str
    backend: str
    inference_ms: float
    capture_to_publish_ms: float
    poses: tuple[Pose, ...]
    crop: CropBox | None = None
    smoothed: bool = False


def _pose_dict(pose: Pose) -> dict[str, Any]:
    out: dict[str, Any] = {
        "score": round(pose.score, _SCORE_DECIMALS),
        "keypoints": [
            {
                "name": k.name,
                "x": round(k.x, _COORD_DECIMALS),
                "y": round(k.y, _COORD_DECIMALS),
                "score": round(k.score, _SCORE_DECIMALS),
            }
            for k in pose.keypoints
        ],
    }
    if pose.track_id is not None:
        out["id"] = pose.track_id
    if pose.bbox is not None:
        out["bbox"] = {
            "xmin": round(pose.bbox.xmin, _COORD_DECIMALS),
            "ymin": round(pose.bbox.ymin, _COORD_DECIMALS),
            "xmax": round(pose.bbox.xmax, _COORD_DECIMALS),
            "ymax": round(pose.bbox.ymax, _COORD_DECIMALS),
        }
    return out


def keypoints_payload(message: KeypointsMessage) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "schema": KEYPOINTS_SCHEMA,
        "device_id": message.device_id,
        "seq": message.seq,
        "timestamp": round(message.timestamp_s, 3),
        "frame": {"width": message.frame_width_px, "height": message.frame_height_px},
        "model": message.model,
        "backend": message.backend,
        "latency_ms": {
            "inference": round(message.inference_ms, 2),
            "capture_to_publish": round(message.capture_to_publish_ms, 2),
        },
        "smoothed": message.smoothed,
        "poses": [_pose_dict(p) for p in message.poses],
    }
    if message.crop is not None:
        payload["crop"] = {
            "ymin": round(message.crop.ymin, _COORD_DECIMALS),
            "xmin": round(message.crop.xmin, _COORD_DECIMALS),
            "ymax": round(message.crop.ymax, _COORD_DECIMALS),
            "xmax": round(message.crop.xmax, _COORD_DECIMALS),
        }
    return payload


# Compact: coordinates in thousandths of the frame (0.64 px on a 640 px frame, finer than the model's
# 192 px input resolves) and scores in hundredths, as integers: "512," is 4 bytes where "0.5123," is 7.
COMPACT_COORD_SCALE = 1000
COMPACT_SCORE_SCALE = 100


def _fixed(value: float, scale: int) -> int:
    return round(value * scale)


def compact_keypoints_payload(message: KeypointsMessage) -> dict[str, Any]:
    """edgepose.kpc/1: each pose is `[score, x0, y0, s0, ... x16, y16, s16]` in fixed-point integers.

    The device id is in the topic; model, backend and stage latencies are in the retained health
    message. Frame-level extras (crop, smoothing flag) are left out: they are diagnostics, and the
    300-byte budget for one person is spent on the keypoints.
    """
    poses: list[list[int]] = []
    for pose in message.poses:
        packed = [_fixed(pose.score, COMPACT_SCORE_SCALE)]
        for k in pose.keypoints:
            packed += [
                _fixed(k.x, COMPACT_COORD_SCALE),
                _fixed(k.y, COMPACT_COORD_SCALE),
                _fixed(k.score, COMPACT_SCORE_SCALE),
            ]
        poses.append(packed)
    payload: dict[str, Any] = {
        "schema": KEYPOINTS_COMPACT_SCHEMA,
        "seq": message.seq,
        "ts": round(message.timestamp_s, 3),
        "frame": [message.frame_width_px, message.frame_height_px],
        "poses": poses,
    }
    if any(p.track_id is not None for p in message.poses):
        payload["ids"] = [p.track_id for p in message.poses]
    if any(p.bbox is not None for p in message.poses):
        payload["boxes"] = [
            None
            if p.bbox is None
            else [_fixed(v, COMPACT_COORD_SCALE) for v in (p.bbox.xmin, p.bbox.ymin, p.bbox.xmax, p.bbox.ymax)]
            for p in message.poses
        ]
    return payload


def keypoints_bytes(message: KeypointsMessage, payload_format: PayloadFormat) -> bytes:
    """The encoded keypoints message in the configured format: the one call the publish loop makes."""
    if payload_format is PayloadFormat.COMPACT:
        return encode(compact_keypoints_payload(message))
    return encode(keypoints_payload(message))


def encode(payload: dict[str, Any]) -> bytes:
    """Compact JSON, byte for byte what `json.dumps(separators=(",", ":"))` writes for these payloads.

    orjson, because the encoder runs for every frame: 3 us against the standard library's 27 us on
    a keypoints payload (bench/README.md). orjson writes NaN and infinities as null where the
    standard library could refuse them; a payload with a null is checked, so they are still refused.
    """
    data = orjson.dumps(payload)
    if b"null" in data and _has_non_finite(payload):
        raise ValueError("payload holds a NaN or an infinity, which JSON cannot carry")
    return data


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_non_finite(v) for v in value)
    return False


@dataclass(frozen=True)
class HealthReport:
    device_id: str
    timestamp_s: float
    uptime_s: float
    version: str
    state: str  # starting | running | degraded | paused | stopping
    state_reason: str | None
    runtime: str
    runtime_version: str
    backend: str
    backend_reason: str | None
    edgetpu_temp_c: float | None
    model: str
    source: str
    num_threads: int
    fps: dict[str, float]
    latency_ms: dict[str, Any]
    counters: dict[str, int]
    mqtt: dict[str, Any]
    system: dict[str, float | None]
    # Mean score of the best pose in the frames with a pose since the last report (None: no pose).
    pose_score: float | None = None


def health_payload(report: HealthReport) -> dict[str, Any]:
    return {
        "schema": HEALTH_SCHEMA,
        "device_id": report.device_id,
        "timestamp": round(report.timestamp_s, 3),
        "uptime_s": round(report.uptime_s, 1),
        "version": report.version,
        "state": report.state,
        "state_reason": report.state_reason,
        "runtime": report.runtime,
        "runtime_version": report.runtime_version,
        "backend": report.backend,
        "backend_reason": report.backend_reason,
        "edgetpu_temp_c": report.edgetpu_temp_c,
        "model": report.model,
        "source": report.source,
        "num_threads": report.num_threads,
        "fps": report.fps,
        "latency_ms": report.latency_ms,
        "counters": report.counters,
        "mqtt": report.mqtt,
        "system": report.system,
        "pose_score": None if report.pose_score is None else round(report.pose_score, 3),
    }
