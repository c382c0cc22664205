"""Per-frame functions before and after #14, thread CPU per call (docs/performance.md, Levers).

The "before" implementations are the ones tests/test_hot_path_reference.py keeps to check the new
ones give the same numbers. Thread CPU time, best of 5 rounds of 3,000 calls, so other load on the
machine mostly drops out. Run from the repository root:

    .venv/bin/python bench/hot_path_levers.py
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np

from edgepose.crop import CropRegionTracker
from edgepose.geometry import letterbox_box
from edgepose.inference.movenet import decode_singlepose, keypoints_to_pose
from edgepose.mqtt.payloads import KeypointsMessage, encode, keypoints_payload
from edgepose.smoothing import OneEuroFilter, OneEuroParams
from tests.test_hot_path_reference import (
    ReferenceOneEuro,
    ReferenceTracker,
    random_keypoints,
    reference_decode,
    reference_pose,
)


def thread_cpu_us(fn: Callable[[], object], calls: int = 3000, rounds: int = 5) -> float:
    for _ in range(100):
        fn()
    best = float("inf")
    for _ in range(rounds):
        started = time.thread_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.thread_time() - started) / calls * 1e6)
    return best


def main() -> None:
    rng = np.random.default_rng(0)
    keypoints = random_keypoints(rng)
    keypoints[[5, 6, 11, 12], 2] = 0.9  # a visible torso: the crop does its full work
    output = rng.random((1, 1, 17, 3)).astype(np.float32)
    box = letterbox_box(480, 640)
    old_tracker, new_tracker = ReferenceTracker(), CropRegionTracker()
    old_filter, new_filter = ReferenceOneEuro(OneEuroParams()), OneEuroFilter(OneEuroParams())
    clock = {"old": 0.0, "new": 0.0}

    def filtered(which: str, one_euro: ReferenceOneEuro | OneEuroFilter) -> Callable[[], object]:
        def call() -> object:
            clock[which] += 1 / 30
            return one_euro.apply(keypoints[:, :2], clock[which])

        return call

    message = KeypointsMessage(
        "living-room", 123456, 1764130000.123, 640, 480, "movenet_lightning_int8", "cpu", 4.71, 6.23,
        (keypoints_to_pose(keypoints),), box, True,
    )  # fmt: skip
    payload = keypoints_payload(message)
    rows: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
        ("decode", lambda: reference_decode(output, box), lambda: decode_singlepose(output, box)),
        ("crop region + low-pass", lambda: old_tracker.next_box(keypoints, 480, 640),
         lambda: new_tracker.next_box(keypoints, 480, 640)),
        ("one-euro filter (17x2)", filtered("old", old_filter), filtered("new", new_filter)),
        ("keypoints -> Pose", lambda: reference_pose(keypoints), lambda: keypoints_to_pose(keypoints)),
        ("JSON encode, json -> orjson", lambda: json.dumps(payload, separators=(",", ":")).encode(),
         lambda: encode(payload)),
    ]  # fmt: skip
    try:  # the alternative to orjson, not a dependency: `pip install msgspec` to compare
        import msgspec

        encoder = msgspec.json.Encoder()
        rows.append(("JSON encode, json -> msgspec", rows[-1][1], lambda: encoder.encode(payload)))
    except ImportError:
        pass
    print(f"{'per frame':32} {'before us':>10} {'after us':>10}")
    for name, before, after in rows:
        print(f"{name:32} {thread_cpu_us(before):10.1f} {thread_cpu_us(after):10.1f}")


if __name__ == "__main__":
    main()
