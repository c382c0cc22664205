"""model.num_threads: auto — measured once per model and machine, cached, the pipeline rate decides."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from edgepose import threadtune
from edgepose.config import Config, ConfigError, load_config
from edgepose.inference.runtime import load_runtime
from edgepose.parts import build_inference
from edgepose.threadtune import CACHE_FILE, measure_pipeline_fps, pick_threads

FRAME = (640, 480)


class Rates:
    """A measurement stand-in: fixed rates per thread count, and how often it was asked."""

    def __init__(self, rates_fps: dict[int, float]) -> None:
        self.rates_fps = rates_fps
        self.asked: list[int] = []

    def __call__(self, threads: int) -> float:
        self.asked.append(threads)
        return self.rates_fps[threads]


@pytest.fixture
def model_copy(lightning_path: Path, tmp_path: Path) -> Path:
    path = tmp_path / "models" / lightning_path.name
    path.parent.mkdir()
    shutil.copy(lightning_path, path)
    return path


def test_picks_the_highest_pipeline_rate_and_caches_it(model_copy: Path) -> None:
    runtime = load_runtime("auto")
    # Like the 2-core VM: the raw loop is fastest at 4 threads, the pipeline at 3.
    rates = Rates({1: 150.0, 2: 230.0, 3: 260.0, 4: 240.0})
    assert pick_threads(model_copy, runtime, model_copy.parent, FRAME, rates, cores=4) == 3
    assert rates.asked == [1, 2, 3, 4]
    cached = json.loads((model_copy.parent / CACHE_FILE).read_text())
    (entry,) = cached.values()
    assert entry["threads"] == 3 and entry["pipeline_fps"] == {"1": 150.0, "2": 230.0, "3": 260.0, "4": 240.0}
    # Measured once: the next start (and the next process) reads the cache.
    again = Rates({})
    assert pick_threads(model_copy, runtime, model_copy.parent, FRAME, again, cores=4) == 3
    assert again.asked == []


def test_another_model_machine_or_frame_size_measures_again(model_copy: Path) -> None:
    runtime = load_runtime("auto")
    pick_threads(model_copy, runtime, model_copy.parent, FRAME, Rates({1: 10.0, 2: 20.0}), cores=2)
    other_cores = Rates({1: 10.0, 2: 20.0, 3: 5.0, 4: 5.0})
    assert pick_threads(model_copy, runtime, model_copy.parent, FRAME, other_cores, cores=4) == 2
    assert other_cores.asked == [1, 2, 3, 4]
    other_size = Rates({1: 30.0, 2: 20.0})
    assert pick_threads(model_copy, runtime, model_copy.parent, (1280, 720), other_size, cores=2) == 1
    # A new model file under the same name (new size and mtime) is a new model.
    model_copy.write_bytes(model_copy.read_bytes() + b"\0")
    os.utime(model_copy, (1, 1))
    new_model = Rates({1: 10.0, 2: 20.0})
    pick_threads(model_copy, runtime, model_copy.parent, FRAME, new_model, cores=2)
    assert new_model.asked == [1, 2]
    assert len(json.loads((model_copy.parent / CACHE_FILE).read_text())) == 4


def test_a_tie_goes_to_fewer_threads(model_copy: Path) -> None:
    rates = Rates({1: 200.01, 2: 199.98})
    assert pick_threads(model_copy, load_runtime("auto"), model_copy.parent, FRAME, rates, cores=2) == 1


def test_unwritable_or_corrupt_cache_still_picks(model_copy: Path, tmp_path: Path) -> None:
    runtime = load_runtime("auto")
    (model_copy.parent / CACHE_FILE).write_text("{not json")
    assert pick_threads(model_copy, runtime, model_copy.parent, FRAME, Rates({1: 5.0, 2: 9.0}), cores=2) == 2
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache directory should be")
    assert pick_threads(model_copy, runtime, blocked, FRAME, Rates({1: 9.0, 2: 5.0}), cores=2) == 1


def test_config_accepts_auto_and_rejects_other_words(tmp_path: Path) -> None:
    assert Config.model_validate({"model": {"num_threads": "auto"}}).model.num_threads == "auto"
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  num_threads: fast\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path, [])
    assert any("num_threads" in problem for problem in raised.value.problems)


def test_the_real_pipeline_is_measured(lightning_path: Path) -> None:
    assert measure_pipeline_fps(lightning_path, load_runtime("auto"), 1, (320, 240), duration_s=0.3) > 1.0


def test_daemon_inference_resolves_auto_once(model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "models"
    shutil.copytree(model_dir, models)
    monkeypatch.setattr(threadtune, "MEASURE_S", 0.2)
    config = Config.model_validate(
        {
            "model": {"num_threads": "auto", "dir": str(models), "backend": "cpu"},
            "camera": {"width": 320, "height": 240},
        }
    )
    with build_inference(config) as inference:
        assert 1 <= inference.num_threads <= (os.cpu_count() or 1)
    (entry,) = json.loads((models / CACHE_FILE).read_text()).values()
    assert entry["threads"] == inference.num_threads
