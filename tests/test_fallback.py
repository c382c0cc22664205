"""The live EdgeTPU -> CPU fallback, driven by a fault-injecting "EdgeTPU" worker.

The worker runs the real CPU MoveNet in the child process, so results are real and comparable,
and reads a flag file on every invoke: `ok`, `raise`, `hang` (sleeps forever, like a wedged
USB transfer) or `crash` (the process dies). The test flips the flag to break and heal the "TPU".
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from edgepose.errors import BackendError, ModelError
from edgepose.inference.fallback import FallbackBackend, WorkerSpec
from edgepose.inference.movenet import SinglePoseEstimator
from edgepose.inference.runtime import InferenceBackend, TensorSpec, load_runtime, open_cpu_backend
from edgepose.sources.images import read_rgb
from tests.conftest import POSE_DATA

# The product default (model.hang_timeout_s): a shorter one mistakes a real invoke on a loaded
# machine for a hang.
HANG_TIMEOUT_S = 1.0
REPROBE_S = 1.0
MAX_GAP_S = 2.0


class FaultyBackend:
    """Runs in the child: the real CPU model behind the flag file's fault."""

    def __init__(self, inner: InferenceBackend, flag: Path, mismatched: bool) -> None:
        self._inner = inner
        self._flag = flag
        self._mismatched = mismatched

    @property
    def kind(self) -> str:
        return "edgetpu"

    @property
    def input_spec(self) -> TensorSpec:
        spec = self._inner.input_spec
        if self._mismatched:
            return TensorSpec(spec.index, spec.name, (1, 256, 256, 3), spec.dtype, spec.scale, spec.zero_point)
        return spec

    @property
    def output_specs(self) -> list[TensorSpec]:
        return self._inner.output_specs

    def invoke(self, input_tensor: np.ndarray) -> list[np.ndarray]:
        mode = self._flag.read_text().strip()
        if mode == "raise":
            raise RuntimeError("injected fault: EdgeTPU invoke failed")
        if mode == "hang":
            time.sleep(1e9)
        if mode == "crash":
            os._exit(13)
        return self._inner.invoke(input_tensor)

    def resize_input(self, shape: tuple[int, ...]) -> None:
        self._inner.resize_input(shape)

    def close(self) -> None:
        self._inner.close()


def faulty_worker(model_path: str, flag_path: str) -> InferenceBackend:
    """WorkerSpec factory (module-level, so the spawned child can import it)."""
    flag = Path(flag_path)
    mode = flag.read_text().strip()
    if mode == "noload":
        raise BackendError("injected fault: cannot open the EdgeTPU")
    # One thread each: the parent's CPU model and the child share the 2 cores of the test machine.
    return FaultyBackend(open_cpu_backend(Path(model_path), load_runtime(), 1), flag, mode == "mismatch")


def faulty_spec(model_path: Path, flag: Path) -> WorkerSpec:
    return WorkerSpec(f"{__name__}:faulty_worker", (str(model_path), str(flag)))


@pytest.fixture
def flag(tmp_path: Path) -> Path:
    path = tmp_path / "tpu-mode"
    path.write_text("ok")
    return path


def open_fallback(lightning_path: Path, flag: Path) -> FallbackBackend:
    cpu = open_cpu_backend(lightning_path, load_runtime(), 1)
    # A shorter warm-up limit: a probe into a hanging "TPU" gives up after 3 s instead of 5 (not less:
    # a healthy child's first invoke takes over a second on a loaded machine, and the re-probe fails).
    return FallbackBackend(faulty_spec(lightning_path, flag), cpu, HANG_TIMEOUT_S, REPROBE_S, warmup_timeout_s=3.0)


def spawned_children() -> list[psutil.Process]:
    """Worker processes of this test process, counting unreaped (zombie) ones."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            command = " ".join(child.cmdline())
        except psutil.ZombieProcess:
            command = "spawn_main (zombie)"
        except psutil.NoSuchProcess:
            continue
        if "spawn_main" in command:
            found.append(child)
    return found


@pytest.fixture
def frame() -> np.ndarray:
    return read_rgb(POSE_DATA / "image1.png")


def test_results_come_through_shared_memory_unchanged(lightning_path: Path, flag: Path, frame: np.ndarray) -> None:
    backend = open_fallback(lightning_path, flag)
    try:
        assert backend.kind == "edgetpu" and not backend.degraded and backend.degraded_reason is None
        assert backend.runtime.name in ("litert", "tflite")
        on_tpu = SinglePoseEstimator(backend).estimate(frame).keypoints
        assert backend.kind == "edgetpu"
    finally:
        backend.close()
    cpu = open_cpu_backend(lightning_path, load_runtime(), 1)
    on_cpu = SinglePoseEstimator(cpu).estimate(frame).keypoints
    cpu.close()
    np.testing.assert_allclose(on_tpu, on_cpu, atol=1e-6)
    assert on_tpu[:, 2].mean() > 0.3  # a real pose, not zeros from an unwritten buffer
    assert spawned_children() == []


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("raise", "injected fault"), ("hang", "did not return within 1.00s"), ("crash", "worker process ended")],
)
def test_fault_falls_back_to_cpu_within_2s_and_switches_back_after_reprobe(
    lightning_path: Path, flag: Path, frame: np.ndarray, fault: str, reason: str
) -> None:
    backend = open_fallback(lightning_path, flag)
    estimator = SinglePoseEstimator(backend)
    reference = estimator.estimate(frame).keypoints
    try:
        for _ in range(5):
            estimator.estimate(frame)
            assert backend.kind == "edgetpu"
        last_tpu_s = time.monotonic()

        flag.write_text(fault)
        raw = estimator.estimate(frame)  # this very call fails over: no frame is lost
        first_cpu_s = time.monotonic()
        assert backend.kind == "cpu" and backend.degraded
        gap_s = first_cpu_s - last_tpu_s
        print(f"\n[{fault}] gap last EdgeTPU result -> first CPU result: {gap_s:.3f}s")
        # The requirement: switched within 2 s of the last EdgeTPU result (the backend's own clock).
        # The CPU invoke after the switch is the CPU's speed, not the fallback's (seconds on a loaded
        # machine), so it is printed, not bounded; that this same call returned the CPU result is.
        switch_s = backend.stats.last_switch_s
        print(f"[{fault}] last EdgeTPU result -> switch: {switch_s}s; -> CPU result: {gap_s:.3f}s")
        assert switch_s is not None and switch_s < MAX_GAP_S
        assert backend.stats.last_fallback_gap_s is not None and backend.stats.last_fallback_gap_s >= switch_s
        np.testing.assert_allclose(raw.keypoints, reference, atol=1e-6)
        assert backend.degraded_reason is not None and reason in backend.degraded_reason
        assert backend.stats.fallbacks == 1

        # Still broken: re-probes fail, inference carries on at CPU speed meanwhile.
        worst_invoke_s = 0.0

        def probe_in_flight() -> bool:
            stats = backend.stats
            return stats.probes > stats.probe_failures + stats.recoveries

        # Re-probing (spawning, loading, test-invoking a child) never stalls inference: frames keep
        # returning while a probe is under way. A blocking probe would finish (or fail) inside the
        # invoke that started it, so no invoke would ever return with one in flight. (Counted, not
        # timed: a time bound on an invoke fails on a loaded machine and proves less.)
        returned_while_failing_probe = returned_while_healing_probe = 0
        deadline_s = time.monotonic() + 60
        while backend.stats.probe_failures < 1:
            assert time.monotonic() < deadline_s, "no re-probe within 60s"
            start_s = time.monotonic()
            estimator.estimate(frame)
            worst_invoke_s = max(worst_invoke_s, time.monotonic() - start_s)
            returned_while_failing_probe += probe_in_flight()
            assert backend.kind == "cpu"
        assert backend.degraded_reason is not None and "re-probe failed" in backend.degraded_reason

        flag.write_text("ok")
        healed_s = time.monotonic()
        while backend.kind == "cpu":
            assert time.monotonic() < healed_s + 60, "did not switch back within 60s"
            start_s = time.monotonic()
            estimator.estimate(frame)
            worst_invoke_s = max(worst_invoke_s, time.monotonic() - start_s)
            returned_while_healing_probe += probe_in_flight()
        switch_back_s = time.monotonic() - healed_s
        print(
            f"[{fault}] switched back {switch_back_s:.2f}s after the fault cleared "
            f"(re-probe every {REPROBE_S}s); slowest frame while degraded {worst_invoke_s * 1e3:.0f}ms; "
            f"frames returned during a probe: {returned_while_failing_probe} failing, "
            f"{returned_while_healing_probe} healing"
        )
        assert returned_while_failing_probe >= 1 and returned_while_healing_probe >= 1
        assert backend.degraded_reason is None and backend.stats.recoveries == 1
        np.testing.assert_allclose(estimator.estimate(frame).keypoints, reference, atol=1e-6)
        assert backend.kind == "edgetpu"
        # Only the live worker is left: every failed and killed child was reaped.
        assert len(spawned_children()) == 1
    finally:
        backend.close()
    assert spawned_children() == []


def test_worker_that_cannot_open_the_edgetpu_fails_at_start(lightning_path: Path, flag: Path) -> None:
    flag.write_text("noload")
    with pytest.raises(BackendError, match="injected fault: cannot open the EdgeTPU") as caught:
        open_fallback(lightning_path, flag)
    assert caught.value.exit_code == 69
    assert "\n" not in str(caught.value)
    assert spawned_children() == []


def test_edgetpu_model_with_other_tensors_than_the_cpu_model_is_a_model_error(lightning_path: Path, flag: Path) -> None:
    flag.write_text("mismatch")
    with pytest.raises(ModelError, match=r"uint8\[1, 256, 256, 3\].*differ from the CPU model's"):
        open_fallback(lightning_path, flag)


def test_fault_during_start_test_invoke_is_reported(lightning_path: Path, flag: Path) -> None:
    flag.write_text("hang")
    started_s = time.monotonic()
    with pytest.raises(BackendError, match=r"did not finish its test invoke within 3\.0s"):
        open_fallback(lightning_path, flag)
    assert time.monotonic() - started_s < 15
    assert spawned_children() == []


def test_fixed_input_shape(lightning_path: Path, flag: Path) -> None:
    backend = open_fallback(lightning_path, flag)
    try:
        backend.resize_input((1, 192, 192, 3))  # the same shape: nothing to do
        with pytest.raises(BackendError, match="fixed input shape"):
            backend.resize_input((1, 256, 256, 3))
    finally:
        backend.close()
    backend.close()  # idempotent: the daemon's stop path may close twice
