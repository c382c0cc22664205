"""`edgepose bench` runs end to end and writes valid JSON. No timing is asserted: numbers vary by machine."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path

import pytest

from edgepose.bench import CpuSample, steady_cpu_ms_per_frame, thread_cpu_s, thread_group
from edgepose.nativethread import set_native_name
from tests.conftest import run_edgepose


@pytest.mark.slow
def test_bench_smoke_writes_json(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = run_edgepose(
        "bench", "--threads", "1", "--frames", "200", "--paced-fps", "10", "--json", str(out),
        model_dir=model_dir, timeout_s=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "ratio" in result.stdout and f"wrote {out}" in result.stdout
    report = json.loads(out.read_text())
    assert report["model"] == "movenet_lightning_int8" and report["frames"] == 200
    (row,) = report["rows"]
    assert row["error"] is None, row["error"]
    assert row["threads"] == 1 and row["runtime_version"].startswith("litert")
    assert row["raw"]["fps"] > 0 and row["raw"]["p50_ms"] > 0
    pipeline = row["pipeline"]
    assert pipeline["frames"] == 200 and pipeline["exit_code"] == 0
    assert pipeline["fps"] > 0 and pipeline["peak_rss_mb"] > 0 and pipeline["first_keypoints_s"] > 0
    assert row["paced"]["source"] == "synthetic:10"
    assert row["ratios"]["pipeline_over_raw_fps"] > 0
    # CPU per frame: the interpreter's own loop, the daemon's, and what the daemon adds outside the interpreter.
    assert row["raw"]["cpu_ms_per_frame"] > 0 and pipeline["cpu_ms_per_frame"] > 0
    assert row["ratios"]["overhead_cpu_ms_per_frame"] == pytest.approx(
        pipeline["cpu_ms_per_frame"] - row["ratios"]["raw_cpu_ms_per_frame"]
    )
    # The daemon's named threads show up in the split; the invoke thread carries the interpreter's work.
    split = pipeline["thread_cpu_ms_per_frame"]
    assert {"prepare", "invoke", "publish"} <= set(split), split
    assert split["invoke"] > split["prepare"]
    # The serial loop of the TF Raspberry Pi example ran against the same broker, side by side.
    serial = row["serial"]
    assert serial["frames"] == 200 and serial["exit_code"] == 0 and serial["cpu_ms_per_frame"] > 0
    assert row["ratios"]["serial_over_raw_fps"] > 0
    assert "serial fps" in result.stdout and "overhead" in result.stdout


def test_steady_cpu_skips_start_up_and_shutdown() -> None:
    samples = [
        CpuSample(0, 1.0, {"prepare": 0.0}),  # imports and model load: not per-frame work
        CpuSample(100, 2.0, {"prepare": 0.1, "invoke": 0.5}),
        CpuSample(500, 4.0, {"prepare": 0.3, "invoke": 1.5}),
        CpuSample(900, 6.0, {"prepare": 0.5, "invoke": 2.5}),
        CpuSample(1000, 9.0, {"prepare": 1.0, "invoke": 3.0}),  # shutdown
    ]
    cpu_ms, split = steady_cpu_ms_per_frame(samples, 1000)
    assert cpu_ms == pytest.approx(5.0)  # (6.0 - 2.0) s over 800 frames
    assert split == {"invoke": pytest.approx(2.5), "prepare": pytest.approx(0.5)}


def test_steady_cpu_of_a_short_run_spans_the_frames_seen() -> None:
    samples = [CpuSample(0, 1.0, {}), CpuSample(5, 2.0, {}), CpuSample(60, 2.5, {})]
    cpu_ms, _ = steady_cpu_ms_per_frame(samples, 60)
    assert cpu_ms == pytest.approx(0.5 / 55 * 1e3)
    cpu_ms, split = steady_cpu_ms_per_frame([CpuSample(500, 1.0, {})], 1000)
    assert math.isnan(cpu_ms) and split == {}


def test_thread_groups_follow_native_names() -> None:
    assert thread_group(100, 101, "ep-invoke") == "invoke"
    assert thread_group(100, 100, "python") == "main"
    assert thread_group(100, 102, "python") == "other"


def test_named_threads_are_split_out_of_this_process() -> None:
    spun, done = threading.Event(), threading.Event()

    def spin() -> None:
        set_native_name("ep-spinner")
        end = time.thread_time() + 0.05
        while time.thread_time() < end:
            pass
        spun.set()
        done.wait(5)

    thread = threading.Thread(target=spin)
    thread.start()
    try:
        assert spun.wait(30)
        groups = thread_cpu_s(os.getpid())
    finally:
        done.set()
        thread.join()
    assert groups.get("spinner", 0.0) >= 0.04, groups
    assert "main" in groups
