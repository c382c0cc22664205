from __future__ import annotations

import json
from dataclasses import replace
from importlib import resources
from typing import Any

import jsonschema
import numpy as np
import pytest

from edgepose.fleet.replay import photo_poses
from edgepose.inference.movenet import keypoints_to_pose
from edgepose.mqtt.payloads import (
    HealthReport,
    KeypointsMessage,
    PayloadFormat,
    encode,
    health_payload,
    keypoints_bytes,
    keypoints_payload,
)
from edgepose.pose import KEYPOINT_NAMES, BoundingBox, CropBox, Keypoint, Pose


def load_schema(name: str) -> dict[str, Any]:
    text = resources.files("edgepose.mqtt").joinpath("schemas", f"{name}.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def _pose(score: float = 0.5, track_id: int | None = None) -> Pose:
    keypoints = tuple(Keypoint(name, x=0.1 + i / 40, y=0.2, score=score) for i, name in enumerate(KEYPOINT_NAMES))
    bbox = BoundingBox(xmin=0.1, ymin=0.25, xmax=0.6, ymax=0.9) if track_id is not None else None
    return Pose(keypoints=keypoints, score=score, track_id=track_id, bbox=bbox)


def _message(**overrides: Any) -> KeypointsMessage:
    fields: dict[str, Any] = dict(
        device_id="pi-lab",
        seq=42,
        timestamp_s=1764000000.1234,
        frame_width_px=640,
        frame_height_px=480,
        model="movenet_lightning_int8",
        backend="cpu",
        inference_ms=4.123,
        capture_to_publish_ms=6.127,
        poses=(_pose(),),
        crop=CropBox(-0.1667, 0.0, 1.1667, 1.0),
    )
    fields.update(overrides)
    return KeypointsMessage(**fields)


def test_keypoints_payload_matches_documented_example_shape() -> None:
    payload = json.loads(encode(keypoints_payload(_message())))
    jsonschema.validate(payload, load_schema("keypoints"))
    assert payload["schema"] == "edgepose.keypoints/1"
    assert payload["seq"] == 42 and payload["timestamp"] == 1764000000.123
    assert payload["frame"] == {"width": 640, "height": 480}
    assert payload["latency_ms"] == {"inference": 4.12, "capture_to_publish": 6.13}
    assert [k["name"] for k in payload["poses"][0]["keypoints"]] == list(KEYPOINT_NAMES)
    assert payload["poses"][0]["keypoints"][0] == {"name": "nose", "x": 0.1, "y": 0.2, "score": 0.5}


def test_multipose_fields_validate() -> None:
    payload = keypoints_payload(_message(poses=(_pose(0.7, track_id=3), _pose(0.4, track_id=5))))
    jsonschema.validate(payload, load_schema("keypoints"))
    assert [p["id"] for p in payload["poses"]] == [3, 5]
    assert payload["poses"][0]["bbox"] == {"xmin": 0.1, "ymin": 0.25, "xmax": 0.6, "ymax": 0.9}


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p.pop("seq"),
        lambda p: p["poses"][0]["keypoints"].pop(),
        lambda p: p["poses"][0]["keypoints"][0].update(name="snout"),
        lambda p: p.update(backend="gpu"),
        lambda p: p.update(extra=1),
    ],
)
def test_schema_rejects_malformed_payloads(mutate: Any) -> None:
    payload = json.loads(encode(keypoints_payload(_message())))
    mutate(payload)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(payload, load_schema("keypoints"))


def test_coordinates_keep_four_decimals_and_scores_three() -> None:
    """4 decimals of a 640 px frame is 0.06 px; 2 decimals would move a keypoint by up to 3.2 px."""
    keypoints = tuple(
        Keypoint(name, x=0.123456 + i / 100, y=0.654321 - i / 100, score=0.87654)
        for i, name in enumerate(KEYPOINT_NAMES)
    )
    pose = Pose(keypoints=keypoints, score=0.55555, track_id=1, bbox=BoundingBox(0.12345, 0.23456, 0.78901, 0.89012))
    payload = json.loads(
        encode(keypoints_payload(_message(poses=(pose,), crop=CropBox(-0.16666, 0.03333, 1.16666, 0.98765))))
    )
    (out,) = payload["poses"]
    assert [k["x"] for k in out["keypoints"]] == [round(0.123456 + i / 100, 4) for i in range(17)]
    assert [k["y"] for k in out["keypoints"]] == [round(0.654321 - i / 100, 4) for i in range(17)]
    assert out["keypoints"][0] == {"name": "nose", "x": 0.1235, "y": 0.6543, "score": 0.877}
    assert out["score"] == 0.556
    assert out["bbox"] == {"xmin": 0.1235, "ymin": 0.2346, "xmax": 0.789, "ymax": 0.8901}
    assert payload["crop"] == {"ymin": -0.1667, "xmin": 0.0333, "ymax": 1.1667, "xmax": 0.9877}


def test_encode_refuses_nan() -> None:
    with pytest.raises(ValueError):
        encode({"x": float("nan")})


# -- publish.format: compact -------------------------------------------------------------------


def _replayed_message(poses: tuple[Pose, ...]) -> KeypointsMessage:
    return _message(seq=1234567, timestamp_s=1764000000.1234, poses=poses)


def test_compact_one_real_person_fits_in_300_bytes() -> None:
    # The demo photos' real model output (what fleet-sim replays), with a large seq and a real timestamp.
    for pose in photo_poses():
        compact = keypoints_bytes(_replayed_message((pose,)), PayloadFormat.COMPACT)
        full = keypoints_bytes(_replayed_message((pose,)), PayloadFormat.JSON)
        assert len(compact) <= 300, (len(compact), compact)
        assert len(full) > 4 * len(compact)  # the json format is over 1.2 kB for the same person
    # ...and an empty frame is tiny.
    assert len(keypoints_bytes(_replayed_message(()), PayloadFormat.COMPACT)) < 100


def test_compact_payload_shape_and_schema() -> None:
    payload = json.loads(keypoints_bytes(_message(), PayloadFormat.COMPACT))
    jsonschema.validate(payload, load_schema("keypoints-compact"))
    assert payload["schema"] == "edgepose.kpc/1"
    assert payload["seq"] == 42 and payload["ts"] == 1764000000.123 and payload["frame"] == [640, 480]
    pose = payload["poses"][0]
    assert len(pose) == 1 + 3 * 17
    # [score, x0, y0, s0, ...]: thousandths of the frame, hundredths of a score.
    assert pose[:4] == [50, 100, 200, 50] and pose[4:7] == [125, 200, 50]
    assert "ids" not in payload and "boxes" not in payload


def test_compact_multipose_ids_and_boxes_validate() -> None:
    payload = json.loads(
        keypoints_bytes(_message(poses=(_pose(0.7, track_id=3), _pose(0.4, track_id=5))), PayloadFormat.COMPACT)
    )
    jsonschema.validate(payload, load_schema("keypoints-compact"))
    assert payload["ids"] == [3, 5]
    assert payload["boxes"][0] == [100, 250, 600, 900]  # xmin, ymin, xmax, ymax


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p.pop("ts"),
        lambda p: p["poses"][0].pop(),
        lambda p: p["poses"][0].__setitem__(3, 0.5),
        lambda p: p.update(frame=[640]),
        lambda p: p.update(device_id="x"),
    ],
)
def test_compact_schema_rejects_malformed_payloads(mutate: Any) -> None:
    payload = json.loads(keypoints_bytes(_message(), PayloadFormat.COMPACT))
    mutate(payload)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(payload, load_schema("keypoints-compact"))
    with pytest.raises(ValueError):
        encode({"poses": [{"keypoints": [{"x": float("inf")}]}], "reason": None})
    assert encode({"reason": None, "x": 0.5}) == b'{"reason":null,"x":0.5}'


def test_encode_writes_what_the_standard_library_writes() -> None:
    """orjson replaced json.dumps for speed; subscribers must not see a byte of difference."""
    rng = np.random.default_rng(7)
    for _ in range(50):
        keypoints = rng.random((17, 3))
        message = replace(_message(), poses=(keypoints_to_pose(keypoints),), seq=int(rng.integers(0, 2**40)))
        payload = keypoints_payload(message)
        assert encode(payload) == json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


def _percentiles(p50: float | None, p95: float | None) -> dict[str, float | None]:
    return {"p50": p50, "p95": p95}


def test_health_payload_carries_every_field_of_the_report() -> None:
    latency = {
        "inference": _percentiles(9.5, 12.25),
        "capture_to_publish": _percentiles(20.0, 31.5),
        "frame_age_at_inference": _percentiles(1.5, 2.75),
        "stages": {
            stage: _percentiles(float(i), float(i) + 0.5)
            for i, stage in enumerate(("capture_wait", "preprocess", "invoke", "decode", "publish"))
        },
    }
    counters = {
        "frames_captured": 101,
        "frames_inferred": 99,
        "frames_published": 98,
        "frames_dropped": 2,
        "frames_dropped_stale": 2,
        "frames_dropped_throttle": 0,
        "frames_failed": 1,
        "publish_failed": 1,
        "source_reopens": 3,
    }
    mqtt = {"connected": True, "reconnects": 4, "queued": 5, "not_published": 6}
    system = {"cpu_percent": 55.5, "memory_rss_mb": 120.25, "load1": 1.5, "cpu_temp_c": None}
    report = HealthReport(
        device_id="pi-lab",
        timestamp_s=1764000000.12345,
        uptime_s=61.25,
        version="0.1.0",
        state="degraded",
        state_reason="source: no frame within 2.0s",
        runtime="litert",
        runtime_version="1.2.0",
        backend="edgetpu",
        backend_reason="auto: Coral found",
        edgetpu_temp_c=48.5,
        model="movenet_lightning_int8_edgetpu",
        source="picamera2 camera 0 (imx708)",
        num_threads=2,
        fps={"capture": 30.0, "inference": 29.5, "published": 29.25},
        latency_ms=latency,
        counters=counters,
        mqtt=mqtt,
        system=system,
        pose_score=0.61234,
    )
    payload = json.loads(encode(health_payload(report)))
    jsonschema.validate(payload, load_schema("health"))
    assert payload == {
        "schema": "edgepose.health/1",
        "device_id": "pi-lab",
        "timestamp": 1764000000.123,
        "uptime_s": 61.2,
        "version": "0.1.0",
        "state": "degraded",
        "state_reason": "source: no frame within 2.0s",
        "runtime": "litert",
        "runtime_version": "1.2.0",
        "backend": "edgetpu",
        "backend_reason": "auto: Coral found",
        "edgetpu_temp_c": 48.5,
        "model": "movenet_lightning_int8_edgetpu",
        "source": "picamera2 camera 0 (imx708)",
        "num_threads": 2,
        "fps": {"capture": 30.0, "inference": 29.5, "published": 29.25},
        "latency_ms": latency,
        "counters": counters,
        "mqtt": mqtt,
        "system": system,
        "pose_score": 0.612,
    }


def test_encode_is_compact_utf8_json() -> None:
    payload = {"device_id": "küche", "seq": [1, 2], "x": 0.5, "reason": None}
    encoded = encode(payload)
    assert isinstance(encoded, bytes) and b" " not in encoded  # no spaces after separators
    assert json.loads(encoded.decode("utf-8")) == payload


def test_compact_boxes_are_null_for_a_pose_without_one() -> None:
    with_box = _pose(0.7, track_id=3)
    without = replace(_pose(0.4), track_id=5)
    payload = json.loads(keypoints_bytes(_message(poses=(with_box, without)), PayloadFormat.COMPACT))
    jsonschema.validate(payload, load_schema("keypoints-compact"))
    assert payload["boxes"] == [[100, 250, 600, 900], None]


def test_encode_names_what_json_cannot_carry() -> None:
    with pytest.raises(ValueError, match=r"^payload holds a NaN or an infinity, which JSON cannot carry$"):
        encode({"x": float("nan")})
