"""The floor of per-frame CPU outside the interpreter: every step in ONE thread, right after an invoke.

No hand-offs, no thread wakes, no queues: read a synthetic 640x480 frame, prepare it (crop box +
resize into the input tensor), invoke (1 interpreter thread), the stage's second-pass check, finish
(decode, crop, one-euro, Pose), build + encode the keypoints payload, publish it through the
daemon's MqttPublisher to a private mosquitto. Each step's thread CPU is summed over the frames.
The same steps are then timed in a tight loop of their own (no invoke in between: caches warm), so
the table shows what each step costs on its own and what it costs after an invoke has run through
the core's caches, which is how every frame meets it. `docs/performance.md` (#14) uses this to say
how low `overhead_cpu_ms_per_frame` can go on a machine. Run from the repository root:

    EDGEPOSE_MODEL_DIR=.cache/models .venv/bin/python bench/overhead_floor.py --json out.json
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

import numpy as np

from edgepose import __version__
from edgepose.config import ModelConfig, MqttConfig
from edgepose.inference.runtime import load_runtime, open_cpu_backend
from edgepose.inference.stage import Prepared, SinglePoseStage, build_stage
from edgepose.localbroker import LocalBroker
from edgepose.models import default_model_dir
from edgepose.mqtt.payloads import PayloadFormat, keypoints_bytes
from edgepose.mqtt.publisher import MqttPublisher
from edgepose.mqtt.topics import Topics
from edgepose.pipeline import keypoints_message
from edgepose.sources.synthetic import SyntheticSource

MODEL_FILE = "lite-model_movenet_singlepose_lightning_tflite_int8_4.tflite"
STEPS = ("read", "prepare", "second_pass_check", "finish", "encode", "publish")


class _TimedBackend:
    """Wraps the stage's backend to take the interpreter's own thread CPU out of stage.invoke()."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.cpu_s = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def invoke(self, tensor: np.ndarray) -> list[np.ndarray]:
        started = time.thread_time()
        try:
            return list(self._backend.invoke(tensor))
        finally:
            self.cpu_s += time.thread_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--tight-calls", type=int, default=1000, help="calls per tight-loop round")
    parser.add_argument("--model", type=Path, help=f"the model file (default: {MODEL_FILE} in the model directory)")
    parser.add_argument("--conditions", default="", help="what else loaded the machine")
    args = parser.parse_args()
    model_path = args.model or default_model_dir() / MODEL_FILE
    backend = open_cpu_backend(model_path, load_runtime("auto"), 1)
    stage = build_stage(backend, "movenet_lightning_int8", ModelConfig(), "video")
    assert isinstance(stage, SinglePoseStage)
    timed = _TimedBackend(backend)
    stage.backend = timed  # a transparent wrapper, for the split only
    source = SyntheticSource(640, 480, None)
    source.open()
    tensor = stage.new_input()
    with LocalBroker() as broker:
        publisher = MqttPublisher(
            MqttConfig(host=broker.host, port=broker.port), Topics("edgepose", "floor"), f"floor-{os.getpid()}", None
        )
        publisher.start()
        deadline_s = time.monotonic() + 5
        while not publisher.stats.connected and time.monotonic() < deadline_s:
            time.sleep(0.01)
        assert publisher.stats.connected, "no connection to the private broker"  # else publish measures nothing
        topic = publisher.topics.keypoints
        seq = 0

        def one_frame(cpu_s: dict[str, float]) -> None:
            nonlocal seq
            t0 = time.thread_time()
            frame = source.read()
            assert frame is not None
            t1 = time.thread_time()
            prepared = stage.prepare(frame, tensor)
            t2 = time.thread_time()
            interpreter_before = timed.cpu_s
            outputs = stage.invoke(prepared)
            t3 = time.thread_time()
            interpreter_s = timed.cpu_s - interpreter_before
            result = stage.finish(prepared, outputs, interpreter_s * 1e3)
            t4 = time.thread_time()
            payload = keypoints_bytes(keypoints_message(result, "floor", seq), PayloadFormat.JSON)
            seq += 1
            t5 = time.thread_time()
            publisher.publish(topic, payload, 0, expiry_s=30.0)
            t6 = time.thread_time()
            for step, spent_s in zip(
                ("read", "prepare", "second_pass_check", "finish", "encode", "publish", "interpreter"),
                (t1 - t0, t2 - t1, t3 - t2 - interpreter_s, t4 - t3, t5 - t4, t6 - t5, interpreter_s),
                strict=True,
            ):
                cpu_s[step] = cpu_s.get(step, 0.0) + spent_s

        for _ in range(50):
            one_frame({})
        serial_rounds = []
        for _ in range(args.rounds):
            cpu_s: dict[str, float] = {}
            for _ in range(args.frames):
                one_frame(cpu_s)
            serial_rounds.append({step: spent / args.frames * 1e6 for step, spent in cpu_s.items()})

        # The same steps back to back with no invoke between them: warm caches.
        frame = source.read()
        assert frame is not None
        prepared = stage.prepare(frame, tensor)
        outputs = stage.invoke(prepared)
        result = stage.finish(prepared, outputs, 4.0)
        payload = keypoints_bytes(keypoints_message(result, "floor", 0), PayloadFormat.JSON)
        frames = [f for f in (source.read() for _ in range(8)) if f is not None]
        tight_calls: dict[str, Callable[[int], object]] = {
            "read": lambda i: source.read(),
            "prepare": lambda i: stage.prepare(frames[i % 8], tensor),
            "finish": lambda i: stage.finish(Prepared(frame, prepared.box, tensor, 0.1), outputs, 4.0),
            "encode": lambda i: keypoints_bytes(keypoints_message(result, "floor", i), PayloadFormat.JSON),
            "publish": lambda i: publisher.publish(topic, payload, 0, expiry_s=30.0),
        }
        tight: dict[str, float] = {}
        for step, call in tight_calls.items():
            best_us = float("inf")
            for _ in range(args.rounds):
                started = time.thread_time()
                for i in range(args.tight_calls):
                    call(i)
                best_us = min(best_us, (time.thread_time() - started) / args.tight_calls * 1e6)
                time.sleep(0.2)  # let the broker drain what a tight publish loop sent
            tight[step] = best_us
        publisher.stop()

    serial_min = {step: min(r[step] for r in serial_rounds) for step in (*STEPS, "interpreter")}
    outside_us = [sum(r[step] for step in STEPS) for r in serial_rounds]
    result_json = {
        "edgepose_version": __version__,
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "model": model_path.name,
        "frames_per_round": args.frames,
        "rounds": args.rounds,
        "conditions": args.conditions,
        "load_average_1min": os.getloadavg()[0],
        "serial_after_invoke_us_per_frame": serial_rounds,
        "serial_after_invoke_min_us": serial_min,
        "serial_outside_interpreter_us_per_round": outside_us,
        "tight_loop_us_per_call": tight,
    }
    print(f"{'step':20s} {'after an invoke (min of rounds)':>32s} {'tight loop':>12s}")
    for step in STEPS:
        warm = f"{tight[step]:.1f}" if step in tight else "-"
        print(f"{step:20s} {serial_min[step]:32.1f} {warm:>12s}")
    print(f"{'interpreter':20s} {serial_min['interpreter']:32.1f}")
    print("outside the interpreter per round (us):", ", ".join(f"{v:.0f}" for v in outside_us))
    if args.json:
        Path(args.json).write_text(json.dumps(result_json, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
