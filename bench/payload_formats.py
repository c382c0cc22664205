"""Keypoints payload formats compared: size, encode and decode time (make bench-payloads).

json (edgepose.keypoints/1) and compact (edgepose.kpc/1) are what the daemon ships; the same
compact structure packed as MessagePack and as CBOR answers "would a binary form help?". Encode is
the daemon's work per frame (build + serialise), decode the consumer's (parse + Pose objects,
without schema validation, which is the same for all compact variants).

    .venv/bin/python bench/payload_formats.py --json bench/results/payload-formats.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import msgpack

from edgepose.fleet.replay import photo_poses
from edgepose.mqtt import decode
from edgepose.mqtt.payloads import (
    KeypointsMessage,
    PayloadFormat,
    compact_keypoints_payload,
    keypoints_bytes,
)
from edgepose.pose import BoundingBox, Pose


def message(poses: tuple[Pose, ...]) -> KeypointsMessage:
    return KeypointsMessage(
        device_id="gym-cam-01",
        seq=123456,
        timestamp_s=1764131328.123,
        frame_width_px=640,
        frame_height_px=480,
        model="movenet_lightning_int8",
        backend="cpu",
        inference_ms=9.12,
        capture_to_publish_ms=14.3,
        poses=poses,
        smoothed=True,
    )


def scenes() -> dict[str, tuple[Pose, ...]]:
    one = photo_poses()[0]
    crowd = tuple(
        Pose(p.keypoints, p.score, track_id=i, bbox=BoundingBox(0.1, 0.1, 0.5, 0.9))
        for i, p in enumerate(photo_poses() * 3)
    )
    return {"empty": (), "one person": (one,), "six people (multi-pose)": crowd}


Encoder = Callable[[KeypointsMessage], bytes]
Decoder = Callable[[bytes], object]


def formats() -> dict[str, tuple[Encoder, Decoder]]:
    def from_compact_dict(data: dict[str, Any], size: int) -> object:
        return decode._from_compact("gym-cam-01", data, size)

    return {
        "json": (
            lambda m: keypoints_bytes(m, PayloadFormat.JSON),
            lambda b: decode.decode_keypoints("gym-cam-01", b, validate=False),
        ),
        "compact": (
            lambda m: keypoints_bytes(m, PayloadFormat.COMPACT),
            lambda b: decode.decode_keypoints("gym-cam-01", b, validate=False),
        ),
        "compact-msgpack": (
            lambda m: msgpack.packb(compact_keypoints_payload(m)),
            lambda b: from_compact_dict(msgpack.unpackb(b), len(b)),
        ),
        "compact-cbor": (
            lambda m: cbor2.dumps(compact_keypoints_payload(m)),
            lambda b: from_compact_dict(cbor2.loads(b), len(b)),
        ),
    }


def time_us(function: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(5):  # best of 5 batches: the least disturbed by other work on the machine
        start = time.perf_counter()
        for _ in range(repeat):
            function()
        best = min(best, (time.perf_counter() - start) / repeat)
    return round(best * 1e6, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    rows = []
    for scene, poses in scenes().items():
        m = message(poses)
        for name, (encoder, decoder) in formats().items():
            payload = encoder(m)
            rows.append(
                {
                    "scene": scene,
                    "format": name,
                    "bytes": len(payload),
                    "encode_us": time_us(lambda e=encoder, m=m: e(m), args.repeat),
                    "decode_us": time_us(lambda d=decoder, p=payload: d(p), args.repeat),
                }
            )
    one_person = message(scenes()["one person"])
    validate_us = {}
    for schema_id, payload_format in (
        (decode.KEYPOINTS_SCHEMA, PayloadFormat.JSON),
        (decode.KEYPOINTS_COMPACT_SCHEMA, PayloadFormat.COMPACT),
    ):
        raw = keypoints_bytes(one_person, payload_format)
        check = decode.schema_validator(schema_id)
        validate_us[schema_id] = time_us(lambda c=check, r=raw: c(json.loads(r)), args.repeat)
    print(f"{'scene':26} {'format':16} {'bytes':>6} {'encode us':>10} {'decode us':>10}")
    for row in rows:
        print(
            f"{row['scene']:26} {row['format']:16} {row['bytes']:6d} {row['encode_us']:10.1f} {row['decode_us']:10.1f}"
        )
    print("parse + schema check, one person:", validate_us)
    if args.json:
        report = {
            "machine": f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}",
            "load1_at_start": round(os.getloadavg()[0], 2),
            "rows": rows,
            "parse_and_validate_us_one_person": validate_us,
            "msgpack": ".".join(map(str, msgpack.version)),
            "cbor2": getattr(cbor2, "__version__", "unknown"),
        }
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
