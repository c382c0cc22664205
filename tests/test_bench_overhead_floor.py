"""bench/overhead_floor.py (docs/performance.md, #14's floor) keeps working: a tiny run, every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, edgepose_env

STEPS = {"read", "prepare", "second_pass_check", "finish", "encode", "publish"}


def test_overhead_floor_reports_every_step_after_an_invoke_and_in_a_tight_loop(
    lightning_path: Path, model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "floor.json"
    command = [sys.executable, str(REPO / "bench" / "overhead_floor.py"), "--model", str(lightning_path)]
    command += ["--frames", "20", "--rounds", "2", "--tight-calls", "20", "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO, env=edgepose_env(model_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert len(figures["serial_after_invoke_us_per_frame"]) == 2
    minimum = figures["serial_after_invoke_min_us"]
    assert set(minimum) == STEPS | {"interpreter"}
    assert all(value > 0 for value in minimum.values()), minimum
    # The interpreter's own CPU is kept out of the steps: it is by far the largest figure.
    assert minimum["interpreter"] > max(minimum[step] for step in STEPS)
    assert set(figures["tight_loop_us_per_call"]) == STEPS - {"second_pass_check"}
    assert "outside the interpreter per round" in result.stdout
