"""`edgepose bench` runs end to end and writes valid JSON. No timing is asserted: numbers vary by machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_edgepose


@pytest.mark.slow
def test_bench_smoke_writes_json(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = run_edgepose(
        "bench", "--threads", "1", "--frames", "60", "--paced-fps", "10", "--json", str(out),
        model_dir=model_dir, timeout_s=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "ratio" in result.stdout and f"wrote {out}" in result.stdout
    report = json.loads(out.read_text())
    assert report["model"] == "movenet_lightning_int8" and report["frames"] == 60
    (row,) = report["rows"]
    assert row["error"] is None, row["error"]
    assert row["threads"] == 1 and row["runtime_version"].startswith("litert")
    assert row["raw"]["fps"] > 0 and row["raw"]["p50_ms"] > 0
    pipeline = row["pipeline"]
    assert pipeline["frames"] == 60 and pipeline["exit_code"] == 0
    assert pipeline["fps"] > 0 and pipeline["peak_rss_mb"] > 0 and pipeline["first_keypoints_s"] > 0
    assert row["paced"]["source"] == "synthetic:10"
    assert row["ratios"]["pipeline_over_raw_fps"] > 0
