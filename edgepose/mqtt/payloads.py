"""Pure builders for the JSON payloads. Their shapes are fixed by schemas/*.schema.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edgepose.pose import CropBox, Pose

KEYPOINTS_SCHEMA = "edgepose.keypoints/1"
HEALTH_SCHEMA = "edgepose.health/1"

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


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")


@dataclass(frozen=True)
class HealthReport:
    device_id: str
    timestamp_s: float
    uptime_s: float
    version: str
    state: str  # starting | running | degraded | stopping
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
    }
