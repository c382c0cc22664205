"""The loop a user would write without edgepose, for `edgepose bench` to compare against.

It follows the TF Lite Raspberry Pi pose example (`lite/examples/pose_estimation/raspberry_pi`:
`pose_estimation.py` + `ml/movenet.py`): in one thread, read a frame, pad it square and resize it
with OpenCV, set_tensor + invoke + get_tensor, turn the 17 keypoints into objects one by one, and
then (what the example leaves to the user) json.dumps them and publish them with paho. No crop
tracking and no smoothing: it does less per frame than the daemon, on purpose, as a floor.

Run by the bench as `python -m edgepose.serial_baseline ...` so its CPU is measured per process,
exactly like the daemon's.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgepose.inference.runtime import load_runtime, open_cpu_backend
from edgepose.pose import KEYPOINT_NAMES
from edgepose.sources.synthetic import SyntheticSource


@dataclass
class Point:
    x: float
    y: float


@dataclass
class KeyPoint:
    body_part: str
    coordinate: Point
    score: float


def _pad_square_and_resize(image: np.ndarray, size_px: int) -> np.ndarray:
    """The example's _crop_and_resize on its initial crop region: pad to a square, then resize."""
    height, width = image.shape[:2]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    padded = cv2.copyMakeBorder(image, top, side - height - top, left, side - width - left, cv2.BORDER_CONSTANT)
    return cv2.resize(padded, (size_px, size_px))


def _person(keypoints_with_scores: np.ndarray, height: int, width: int) -> list[KeyPoint]:
    """The example's person_from_keypoints_with_scores: one object per keypoint, in pixels."""
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    points = []
    for index, name in enumerate(KEYPOINT_NAMES):
        y, x, score = keypoints_with_scores[0, 0, index]
        points.append(KeyPoint(name, Point(float(x) * side - left, float(y) * side - top), float(score)))
    return points


def run(
    model_path: Path, runtime: str, threads: int, frames: int, host: str, port: int, topic: str, width: int, height: int
) -> int:
    backend = open_cpu_backend(model_path, load_runtime(runtime), threads)
    size_px = backend.input_spec.shape[1]
    source = SyntheticSource(width, height, None)
    source.open()
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"serial-{socket.gethostname()}")
    client.connect(host, port)
    client.loop_start()
    published = 0
    info: mqtt.MQTTMessageInfo | None = None
    for seq in range(frames):
        frame = source.read()
        assert frame is not None  # a synthetic source never ends
        tensor = _pad_square_and_resize(frame.image, size_px)[np.newaxis].astype(backend.input_spec.dtype)
        started = time.perf_counter()
        (output,) = backend.invoke(tensor)
        inference_ms = (time.perf_counter() - started) * 1e3
        person = _person(output, height, width)
        payload = {
            "seq": seq,
            "timestamp": frame.timestamp_s,
            "keypoints": [
                {"name": p.body_part, "x": p.coordinate.x / width, "y": p.coordinate.y / height, "score": p.score}
                for p in person
            ],
            "latency_ms": {
                "inference": inference_ms,
                "capture_to_publish": (time.monotonic() - frame.monotonic_s) * 1e3,
            },
        }
        info = client.publish(topic, json.dumps(payload), qos=0)
        published += info.rc == mqtt.MQTT_ERR_SUCCESS
    if info is not None:
        info.wait_for_publish(timeout=5.0)  # QoS 0: written to the socket, not left in paho's queue
    client.disconnect()
    client.loop_stop()
    backend.close()
    return 0 if published == frames else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgepose.serial_baseline", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--runtime", default="auto", choices=["auto", "litert", "tflite"])
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--frames", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    args = parser.parse_args(argv)
    return run(
        args.model, args.runtime, args.threads, args.frames, args.host, args.port, args.topic, args.width, args.height
    )


if __name__ == "__main__":
    sys.exit(main())
