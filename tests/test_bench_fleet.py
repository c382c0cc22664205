"""bench/fleet.py (make bench-fleet) keeps working: one tiny case, checked for the figures it reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_fleet_bench_runs_one_case_and_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "fleet.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "fleet.py"),
            "--devices",
            "4",
            "--fps",
            "5",
            "--formats",
            "compact",
            "--duration",
            "1.5",
            "--no-target",
            "--json",
            str(out),
            "--markdown",
            str(tmp_path / "fleet.md"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (case,) = json.loads(out.read_text())["results"]
    assert case["devices"] == 4 and case["format"] == "compact" and case["sent"] > 0
    assert case["received"] == case["sent"] and case["loss"] == 0  # 30 messages on loopback: none lost
    assert sorted(case["consumer_share"]) == pytest.approx([0.5, 0.5], abs=0.1)
    assert set(case["cpu_percent"]) == {"broker", "consumers", "simulator"} and case["cpu_percent"]["broker"] >= 0
    assert set(case["machine"]) >= {"busy_percent_of_all_cores", "others_cpu_percent", "load1_before"}
    assert case["limit"]
    assert "| 4 | 5 | compact |" in (tmp_path / "fleet.md").read_text()
