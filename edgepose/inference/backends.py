"""`model.backend` (auto | cpu | edgetpu) -> the backend to run, and the reason, for logs and health.

The configured model may be either build of a model: the manifest links a CPU model to its
EdgeTPU-compiled twin and back, so `backend: cpu` with an `_edgetpu` model runs its CPU build and
`backend: edgetpu` with a CPU model runs its EdgeTPU build (with the CPU build as the fallback).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgepose.config import ModelConfig
from edgepose.errors import BackendError, ModelError
from edgepose.inference.edgetpu import DEV_ROOT, SYSFS_ROOT, EdgeTpuProbe, probe_edgetpu
from edgepose.inference.fallback import FallbackBackend, WorkerSpec, edgetpu_worker_spec
from edgepose.inference.runtime import (
    EDGETPU_CUSTOM_OP,
    EDGETPU_LIBRARY,
    InterpreterBackend,
    Runtime,
    effective_threads,
    open_cpu_backend,
)
from edgepose.models import Manifest, ResolvedModel, resolve_model

log = logging.getLogger(__name__)

WorkerFactory = Callable[[Path, Runtime, str], WorkerSpec]


@dataclass(frozen=True)
class BackendChoice:
    backend: InterpreterBackend | FallbackBackend
    reason: str  # health's backend_reason
    probe: EdgeTpuProbe | None  # None for backend: cpu, which never looks
    model: ResolvedModel  # what the backend runs first: the EdgeTPU build when on the EdgeTPU
    num_threads: int  # of the CPU interpreter


def model_label(model: ResolvedModel) -> str:
    return model.spec.name if model.spec else model.path.name


def is_edgetpu_compiled(path: Path) -> bool:
    """edgetpu_compiler replaces the graph with one custom op whose name is stored in the flatbuffer."""
    try:
        return EDGETPU_CUSTOM_OP.encode() in path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model {path}: {exc.strerror or exc}") from None


def cpu_build(model: ResolvedModel, manifest: Manifest, model_dir: Path) -> ResolvedModel:
    """The CPU model for `model`: itself, its manifest cpu_twin, or for a loose `x_edgetpu.tflite`
    the `x.tflite` next to it (edgetpu_compiler's naming). Without one, `model` itself, so that
    loading it fails with the "compiled for the Coral EdgeTPU" ModelError."""
    spec = model.spec
    if spec is not None and spec.backend == "edgetpu" and spec.cpu_twin:
        return resolve_model(spec.cpu_twin, model_dir, manifest)
    if spec is None and model.path.stem.endswith("_edgetpu"):
        sibling = model.path.with_name(model.path.stem.removesuffix("_edgetpu") + model.path.suffix)
        if sibling.is_file():
            return ResolvedModel(sibling, None)
    return model


def edgetpu_build(model: ResolvedModel, manifest: Manifest, model_dir: Path) -> ResolvedModel:
    """The EdgeTPU-compiled model for `model`; ModelError if there is none, ModelNotFoundError
    (naming the fetch command) if it is in the manifest but not fetched."""
    spec = model.spec
    if spec is None:
        if not is_edgetpu_compiled(model.path):
            raise ModelError(
                f"{model.path.name} is not compiled for the EdgeTPU (no {EDGETPU_CUSTOM_OP}): compile it with "
                "edgetpu_compiler, or set model.backend: cpu"
            )
        return model
    if spec.backend == "edgetpu":
        return model
    if spec.edgetpu_twin:
        return resolve_model(spec.edgetpu_twin, model_dir, manifest)
    compiled = ", ".join(sorted(name for name, s in manifest.models.items() if s.backend == "edgetpu"))
    raise ModelError(
        f"model '{spec.name}' has no EdgeTPU build: use one that has (e.g. {compiled}) or set model.backend: cpu"
    )


def select_backend(
    model_config: ModelConfig,
    model: ResolvedModel,
    manifest: Manifest,
    model_dir: Path,
    runtime: Runtime,
    *,
    sysfs_root: Path = SYSFS_ROOT,
    dev_root: Path = DEV_ROOT,
    worker: WorkerFactory = edgetpu_worker_spec,
) -> BackendChoice:
    """Open the backend `model_config.backend` asks for. `worker` builds the EdgeTPU child's spec
    (tests pass a fault-injecting one); sysfs_root/dev_root are where the probe looks."""
    threads, warning = effective_threads(model_config.num_threads)
    if warning:
        log.warning(warning)
    if model_config.backend == "cpu":
        cpu_model = cpu_build(model, manifest, model_dir)
        backend = open_cpu_backend(cpu_model.path, runtime, threads)
        reason = "model.backend: cpu"
        if cpu_model != model:
            reason += f" (running {model_label(cpu_model)}, the CPU build of {model_label(model)})"
        log.info("backend: %s", reason)
        return BackendChoice(backend, reason, None, cpu_model, threads)

    probe = probe_edgetpu(model_config.edgetpu_device, sysfs_root, dev_root)
    if model_config.backend == "edgetpu":
        tpu_model = edgetpu_build(model, manifest, model_dir)
        cpu = open_cpu_backend(cpu_build(model, manifest, model_dir).path, runtime, threads)
        try:
            fallback = _open_fallback(model_config, tpu_model, cpu, runtime, worker)
        except BackendError as exc:
            cpu.close()
            # The probe says whether it is the library or the device that is missing.
            raise BackendError(f"{exc} ({probe.description})" if not probe.present else str(exc)) from None
        except ModelError:
            cpu.close()
            raise
        reason = f"model.backend: edgetpu ({probe.description})"
        log.info("backend: %s", reason)
        return BackendChoice(fallback, reason, probe, tpu_model, threads)

    cpu_model = cpu_build(model, manifest, model_dir)
    cpu = open_cpu_backend(cpu_model.path, runtime, threads)
    if not probe.present:
        return _on_cpu(cpu, f"auto: {probe.description}", probe, cpu_model, threads, logging.INFO)
    try:
        tpu_model = edgetpu_build(model, manifest, model_dir)
    except ModelError as exc:
        return _on_cpu(cpu, f"auto: {probe.description}, but {exc}", probe, cpu_model, threads, logging.WARNING)
    try:
        fallback = _open_fallback(model_config, tpu_model, cpu, runtime, worker)
    except BackendError as exc:
        reason = f"auto: EdgeTPU present but {EDGETPU_LIBRARY} not loadable: {exc}"
        return _on_cpu(cpu, reason, probe, cpu_model, threads, logging.WARNING)
    except ModelError as exc:
        reason = f"auto: EdgeTPU present but {model_label(tpu_model)} did not load on it: {exc}"
        return _on_cpu(cpu, reason, probe, cpu_model, threads, logging.WARNING)
    reason = f"auto: {probe.description}"
    log.info("backend: %s", reason)
    return BackendChoice(fallback, reason, probe, tpu_model, threads)


def _open_fallback(
    model_config: ModelConfig,
    tpu_model: ResolvedModel,
    cpu: InterpreterBackend,
    runtime: Runtime,
    worker: WorkerFactory,
) -> FallbackBackend:
    return FallbackBackend(
        worker(tpu_model.path, runtime, model_config.edgetpu_device),
        cpu,
        model_config.hang_timeout_s,
        model_config.edgetpu_reprobe_s,
        model_path=tpu_model.path,
    )


def _on_cpu(
    cpu: InterpreterBackend,
    reason: str,
    probe: EdgeTpuProbe,
    model: ResolvedModel,
    threads: int,
    level: int,
) -> BackendChoice:
    log.log(level, "backend: %s", reason)
    return BackendChoice(cpu, reason, probe, model, threads)
