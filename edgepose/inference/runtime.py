"""Loading the TFLite interpreter (LiteRT or tflite-runtime) and the EdgeTPU delegate.

This is the only module that imports an interpreter package. Everything above it talks to an
`InferenceBackend`: give it an input tensor, get the output tensors back.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgepose.errors import BackendError, ModelError
from edgepose.nativethread import threads_started_as

log = logging.getLogger(__name__)

# Preference order for `runtime: auto`: LiteRT is the maintained successor; tflite-runtime stopped at 2.14.
_RUNTIME_MODULES = {"litert": "ai_edge_litert.interpreter", "tflite": "tflite_runtime.interpreter"}
_RUNTIME_PACKAGES = {"litert": "ai-edge-litert", "tflite": "tflite-runtime"}

EDGETPU_LIBRARY = "libedgetpu.so.1"
EDGETPU_CUSTOM_OP = "edgetpu-custom-op"


class BackendKind(StrEnum):
    """Where an invoke runs; serialised as these strings in payloads and health."""

    CPU = "cpu"
    EDGETPU = "edgetpu"


@dataclass(frozen=True)
class Runtime:
    name: str  # "litert" | "tflite"
    version: str
    interpreter_class: Callable[..., Any]
    load_delegate: Callable[..., Any]


def load_runtime(choice: str = "auto") -> Runtime:
    """Import the interpreter module for `choice` (auto: LiteRT first, then tflite-runtime)."""
    order = ["litert", "tflite"] if choice == "auto" else [choice]
    failures = []
    for name in order:
        module_name = _RUNTIME_MODULES[name]
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            failures.append(f"{_RUNTIME_PACKAGES[name]} ({module_name}): {type(exc).__name__}: {exc}")
            continue
        version = _package_version(_RUNTIME_PACKAGES[name])
        return Runtime(name, version, module.Interpreter, module.load_delegate)
    hint = "pip install ai-edge-litert" if choice != "tflite" else "pip install 'edgepose[tflite]'"
    raise BackendError(f"no TFLite runtime importable ({'; '.join(failures)}); install one: {hint}")


def _package_version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def effective_threads(requested: int | str, cpu_count: int | None = None) -> tuple[int, str | None]:
    """Cap the thread count at the machine's cores: oversubscribed XNNPACK threads spin and slow down.

    "auto" not yet resolved by a measurement (edgepose/threadtune.py; `infer` does not measure) is every core.
    """
    cores = cpu_count or os.cpu_count() or 1
    if not isinstance(requested, int):
        return cores, None
    if requested > cores:
        return cores, (
            f"model.num_threads={requested} is more than the {cores} CPU cores here; using {cores} "
            "(more threads than cores makes inference several times slower)"
        )
    return requested, None


@dataclass(frozen=True)
class TensorSpec:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    scale: float
    zero_point: int


def _spec(detail: dict[str, Any]) -> TensorSpec:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorSpec(
        index=int(detail["index"]),
        name=str(detail.get("name", "")),
        shape=tuple(int(d) for d in detail["shape"]),
        dtype=np.dtype(detail["dtype"]),
        scale=float(scale),
        zero_point=int(zero_point),
    )


class InferenceBackend(Protocol):
    """What the estimator needs from an accelerator: one input tensor in, output tensors out."""

    @property
    def kind(self) -> BackendKind: ...  # where the next invoke runs

    @property
    def runtime(self) -> Runtime: ...

    @property
    def degraded_reason(self) -> str | None: ...  # set while running on a fallback

    @property
    def input_spec(self) -> TensorSpec: ...

    @property
    def output_specs(self) -> list[TensorSpec]: ...

    def invoke(self, input_tensor: np.ndarray) -> list[np.ndarray]: ...

    def resize_input(self, shape: tuple[int, ...]) -> None: ...

    def close(self) -> None: ...


class InterpreterBackend:
    """A TFLite interpreter (CPU/XNNPACK, or with the EdgeTPU delegate) behind `InferenceBackend`."""

    degraded_reason: str | None = None

    def __init__(self, interpreter: Any, kind: BackendKind, runtime: Runtime, model_path: Path) -> None:
        self._interpreter = interpreter
        self._kind = kind
        self._runtime = runtime
        self.model_path = model_path
        self._refresh_specs()

    def _refresh_specs(self) -> None:
        self._input_spec = _spec(self._interpreter.get_input_details()[0])
        self._output_specs = [_spec(d) for d in self._interpreter.get_output_details()]

    @property
    def kind(self) -> BackendKind:
        return self._kind

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    @property
    def input_spec(self) -> TensorSpec:
        return self._input_spec

    @property
    def output_specs(self) -> list[TensorSpec]:
        return self._output_specs

    def invoke(self, input_tensor: np.ndarray) -> list[np.ndarray]:
        self._interpreter.set_tensor(self._input_spec.index, input_tensor)
        self._interpreter.invoke()
        # get_tensor copies, so results stay valid after the next invoke.
        return [self._interpreter.get_tensor(spec.index) for spec in self._output_specs]

    def resize_input(self, shape: tuple[int, ...]) -> None:
        if shape == self._input_spec.shape:
            return
        self._interpreter.resize_tensor_input(self._input_spec.index, list(shape), strict=False)
        self._interpreter.allocate_tensors()
        self._refresh_specs()

    def close(self) -> None:
        self._interpreter = None


def _model_error(model_path: Path, exc: BaseException) -> ModelError:
    text = str(exc)
    if EDGETPU_CUSTOM_OP in text:
        return ModelError(
            f"{model_path.name} is compiled for the Coral EdgeTPU (it contains {EDGETPU_CUSTOM_OP}) and cannot "
            "run on the CPU: set model.backend: edgetpu with a Coral attached, or use the CPU model "
            "(e.g. model.name: movenet_lightning_int8)"
        )
    if "Unsupported data type in custom op handler" in text:
        return ModelError(
            f"{model_path.name}: libedgetpu and the TFLite runtime are not a matched build pair "
            "('Unsupported data type in custom op handler'); install the libedgetpu1-std matching your "
            "runtime's TensorFlow version (see README, Troubleshooting)"
        )
    first_line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return ModelError(f"cannot load model {model_path}: {first_line}")


# The OS name of the interpreter's own worker threads (XNNPACK's thread pool).
INTERPRETER_WORKER_THREAD = "ep-interp"


def open_cpu_backend(model_path: Path, runtime: Runtime, num_threads: int) -> InterpreterBackend:
    try:
        # XNNPACK starts its worker threads here: named, `top -H` and `edgepose bench` can tell them apart.
        with threads_started_as(INTERPRETER_WORKER_THREAD):
            interpreter = runtime.interpreter_class(model_path=str(model_path), num_threads=num_threads)
            interpreter.allocate_tensors()
    except (RuntimeError, ValueError, OSError) as exc:
        raise _model_error(model_path, exc) from None
    return InterpreterBackend(interpreter, BackendKind.CPU, runtime, model_path)


@contextlib.contextmanager
def _quiet_failed_delegate() -> Iterator[None]:
    """LiteRT's Delegate.__del__ raises AttributeError when its constructor failed; keep that off stderr."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, AttributeError) and "_library" in str(unraisable.exc_value):
            return
        previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        gc.collect()
        sys.unraisablehook = previous


def load_edgetpu_delegate(runtime: Runtime, device: str) -> Any:
    options = {"device": device} if device else {}
    with _quiet_failed_delegate():
        try:
            return runtime.load_delegate(EDGETPU_LIBRARY, options)
        except (ValueError, OSError, RuntimeError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # Raised outside the except block: the half-built Delegate must not live on in __context__,
        # where its failing __del__ would print after the quieting hook is gone.
        raise BackendError(
            f"cannot load the EdgeTPU delegate {EDGETPU_LIBRARY} (device '{device}'): {reason}; "
            "install libedgetpu1-std (scripts/install_pi.sh --coral) and check the Coral is attached"
        )


def open_edgetpu_backend(model_path: Path, runtime: Runtime, device: str) -> InterpreterBackend:
    delegate = load_edgetpu_delegate(runtime, device)
    try:
        interpreter = runtime.interpreter_class(model_path=str(model_path), experimental_delegates=[delegate])
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError, OSError) as exc:
        raise _model_error(model_path, exc) from None
    return InterpreterBackend(interpreter, BackendKind.EDGETPU, runtime, model_path)
