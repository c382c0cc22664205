"""The EdgeTPU in a child process the daemon can kill, with a CPU interpreter ready to take over.

A hung `invoke` inside libedgetpu (a USB Accelerator that browns out, a wedged PCIe driver)
blocks in C code: no Python thread can interrupt it, and a thread left hanging keeps holding the
device and the interpreter. A process can be killed. So the EdgeTPU interpreter lives in a
spawned child; frames go in and keypoints come out through shared memory, and a pipe carries
only "go" and "done". The parent waits with a timeout; on an error or a timeout it kills the
child and the same call answers from the CPU interpreter that was loaded at start. Later calls
start a fresh child every `reprobe_interval_s` and switch back once its test invoke succeeded,
polling it without blocking: the daemon owns the threads, so none are started here.
See docs/edgetpu.md.
"""

from __future__ import annotations

import importlib
import logging
import math
import multiprocessing
import signal
import time
from dataclasses import dataclass
from enum import StrEnum
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import numpy as np

from edgepose.errors import BackendError, ModelError
from edgepose.inference.runtime import (
    BackendKind,
    InferenceBackend,
    InterpreterBackend,
    Runtime,
    TensorSpec,
    _quiet_failed_delegate,
    load_runtime,
    open_edgetpu_backend,
)

log = logging.getLogger(__name__)

# Spawning Python, importing the runtime and loading the model takes seconds on a Pi.
STARTUP_TIMEOUT_S = 30.0
# The first invoke on an EdgeTPU also uploads the model to the device, so it gets longer than hang_timeout_s.
WARMUP_TIMEOUT_S = 5.0
# A child that died is reaped after at most this long, to report its exit status; never longer.
EXIT_STATUS_WAIT_S = 0.05
# Shutdown only: a ready child gets this long to exit on "stop", then it is killed.
STOP_JOIN_S = 1.0
# Shutdown only: SIGKILL takes effect when the child leaves the kernel; one stuck in a USB call may take longer.
KILL_JOIN_S = 0.5
_GO = b"g"
_STOP = b"s"
_ALIGN_BYTES = 64


@dataclass(frozen=True)
class WorkerSpec:
    """How the child builds its backend: `factory` ("module:function") is imported there and called
    with `args`. Plain data, so it pickles into a spawned process; tests point it at a faulty backend."""

    factory: str
    args: tuple[Any, ...] = ()


def edgetpu_worker(model_path: str, runtime_name: str, device: str) -> InferenceBackend:
    """The production worker, run in the child: the EdgeTPU model through libedgetpu."""
    return open_edgetpu_backend(Path(model_path), load_runtime(runtime_name), device)


def edgetpu_worker_spec(model_path: Path, runtime: Runtime, device: str) -> WorkerSpec:
    return WorkerSpec(f"{__name__}:edgetpu_worker", (str(model_path), runtime.name, device))


@dataclass(frozen=True)
class _Tensor:
    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int
    offset: int

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    def view(self, buffer: Any) -> np.ndarray:
        return np.ndarray(self.shape, np.dtype(self.dtype), buffer=buffer, offset=self.offset)

    def describe(self) -> str:
        return f"{np.dtype(self.dtype).name}{list(self.shape)}"


def _tensor(spec: TensorSpec, offset: int) -> _Tensor:
    return _Tensor(spec.shape, spec.dtype.str, spec.scale, spec.zero_point, offset)


@dataclass(frozen=True)
class TensorLayout:
    """Where the input and each output live in the two shared-memory blocks. The CPU model defines
    it: the estimator was built on the CPU model's tensors, so the EdgeTPU build must match them."""

    input: _Tensor
    outputs: tuple[_Tensor, ...]

    @classmethod
    def from_specs(cls, input_spec: TensorSpec, output_specs: list[TensorSpec]) -> TensorLayout:
        outputs = []
        offset = 0
        for spec in output_specs:
            tensor = _tensor(spec, offset)
            outputs.append(tensor)
            offset += -(-tensor.nbytes // _ALIGN_BYTES) * _ALIGN_BYTES
        return cls(_tensor(input_spec, 0), tuple(outputs))

    @property
    def input_bytes(self) -> int:
        return self.input.nbytes

    @property
    def output_bytes(self) -> int:
        return max((t.offset + t.nbytes for t in self.outputs), default=0)

    def mismatch(self, input_spec: TensorSpec, output_specs: list[TensorSpec]) -> str | None:
        other = TensorLayout.from_specs(input_spec, output_specs)
        if other == self:
            return None
        mine = ", ".join(t.describe() for t in (self.input, *self.outputs))
        theirs = ", ".join(t.describe() for t in (other.input, *other.outputs))
        return f"the EdgeTPU model's tensors ({theirs}) differ from the CPU model's ({mine})"


# ---------------------------------------------------------------------------------------------
# The child


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Reply(StrEnum):
    """What the child sends on the pipe: start-up progress, then one reply per invoke."""

    LOADED = "loaded"
    READY = "ready"
    FAILED = "failed"  # while starting: (FAILED, ErrorKind, message)
    DONE = "done"
    ERROR = "error"  # an invoke raised: (ERROR, ErrorKind, message)


class ErrorKind(StrEnum):
    """Which domain error a child's failure becomes in the parent."""

    MODEL = "ModelError"
    BACKEND = "BackendError"


class WorkerState(StrEnum):
    STARTING = "starting"
    LOADED = "loaded"
    READY = "ready"


def _error_kind(exc: BaseException) -> ErrorKind:
    return ErrorKind.MODEL if isinstance(exc, ModelError) else ErrorKind.BACKEND


def _build(spec: WorkerSpec) -> InferenceBackend:
    module_name, _, function_name = spec.factory.partition(":")
    factory = getattr(importlib.import_module(module_name), function_name)
    backend: InferenceBackend = factory(*spec.args)
    return backend


def _child_main(spec: WorkerSpec, conn: Connection, layout: TensorLayout, input_name: str, output_name: str) -> None:
    """Load, test-invoke once, report, then serve "go" until "stop" or the parent goes away."""
    # Ctrl-C reaches the whole process group; the parent decides when this process ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    failure: tuple[ErrorKind, str] | None = None
    # The failure's traceback holds LiteRT's half-built Delegate, whose __del__ complains on stderr
    # when it is freed: free it (at the end of `except`) while that complaint is muted.
    with _quiet_failed_delegate():
        try:
            backend = _build(spec)
            mismatch = layout.mismatch(backend.input_spec, backend.output_specs)
            if mismatch:
                raise ModelError(mismatch)
        except BaseException as exc:  # every failure goes to the parent as one line, never a traceback
            failure = (_error_kind(exc), _one_line(exc))
    if failure is not None:
        conn.send((Reply.FAILED, *failure))
        return
    conn.send((Reply.LOADED,))
    try:
        input_memory = SharedMemory(name=input_name)
        output_memory = SharedMemory(name=output_name)
    except OSError as exc:
        conn.send((Reply.FAILED, ErrorKind.BACKEND, f"cannot attach the shared tensors: {exc}"))
        return
    try:
        backend.invoke(np.zeros(layout.input.shape, np.dtype(layout.input.dtype)))
    except Exception as exc:
        conn.send((Reply.FAILED, _error_kind(exc), f"test invoke failed: {_one_line(exc)}"))
        return
    conn.send((Reply.READY,))
    try:
        _serve(backend, conn, layout.input.view(input_memory.buf), [t.view(output_memory.buf) for t in layout.outputs])
    finally:
        input_memory.close()
        output_memory.close()
        backend.close()


def _serve(backend: InferenceBackend, conn: Connection, input_view: np.ndarray, output_views: list[np.ndarray]) -> None:
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the parent is gone
        if message != _GO:
            return
        try:
            for view, result in zip(output_views, backend.invoke(input_view), strict=True):
                view[...] = result
        except Exception as exc:
            reply: tuple[str, ...] = (Reply.ERROR, _error_kind(exc), _one_line(exc))
        else:
            reply = (Reply.DONE,)
        try:
            conn.send(reply)
        except OSError:
            return  # the parent is gone (or killed us mid-reply)


# ---------------------------------------------------------------------------------------------
# The parent's handle on one child


class WorkerFailed(Exception):
    """The child failed to load, raised, hung or died; `kind` names the domain error to raise at start."""

    def __init__(self, message: str, kind: ErrorKind = ErrorKind.BACKEND) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind

    def as_error(self) -> BackendError | ModelError:
        return ModelError(self.message) if self.kind == ErrorKind.MODEL else BackendError(self.message)


def _ended(process: BaseProcess) -> str:
    process.join(EXIT_STATUS_WAIT_S)
    code = process.exitcode
    if code is None:
        return "EdgeTPU worker process ended"
    if code < 0:
        try:
            return f"EdgeTPU worker process ended (killed by {signal.Signals(-code).name})"
        except ValueError:
            return f"EdgeTPU worker process ended (killed by signal {-code})"
    return f"EdgeTPU worker process ended (exit status {code})"


class _Worker:
    """One child process: starting -> loaded -> ready, then invoked; killable at any point."""

    def __init__(self, spec: WorkerSpec, layout: TensorLayout, input_name: str, output_name: str) -> None:
        # spawn, not fork: the parent has threads (a forked child inherits their locks, maybe held) and a
        # loaded TFLite interpreter; forkserver would add a long-lived helper process for little gain.
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe(duplex=True)
        self.process = context.Process(
            target=_child_main,
            args=(spec, child_end, layout, input_name, output_name),
            name="edgepose-edgetpu",
            daemon=True,  # multiprocessing's exit handler terminates it if the parent exits without close()
        )
        self.process.start()
        # Only the child holds its end now, so the child dying shows up here as EOF.
        child_end.close()
        self.conn = parent_end
        self.state = WorkerState.STARTING
        self.phase_started_s = time.monotonic()

    def _receive(self) -> tuple[Any, ...]:
        try:
            message: tuple[Any, ...] = self.conn.recv()
        except (EOFError, OSError):
            raise WorkerFailed(_ended(self.process)) from None
        return message

    def poll_start(self, startup_timeout_s: float, warmup_timeout_s: float, wait_s: float = 0.0) -> bool:
        """Advance the start without blocking (or up to wait_s); True once ready, WorkerFailed on failure."""
        deadline_s = time.monotonic() + wait_s
        while self.state != WorkerState.READY:
            now = time.monotonic()
            limit_s = startup_timeout_s if self.state == WorkerState.STARTING else warmup_timeout_s
            phase_deadline_s = self.phase_started_s + limit_s
            if now > phase_deadline_s:
                what = "load the model" if self.state == WorkerState.STARTING else "finish its test invoke"
                raise WorkerFailed(f"EdgeTPU worker did not {what} within {limit_s:.1f}s")
            if not self.conn.poll(max(0.0, min(deadline_s, phase_deadline_s) - now)):
                if time.monotonic() >= deadline_s:
                    return False
                continue
            message = self._receive()
            if message[0] == Reply.FAILED:
                raise WorkerFailed(message[2], ErrorKind(message[1]))
            self.state = WorkerState(message[0])  # loaded or ready
            self.phase_started_s = time.monotonic()
        return True

    def invoke(self, timeout_s: float) -> None:
        """Run one invoke on what is in the input block; WorkerFailed on an error or after timeout_s."""
        try:
            self.conn.send_bytes(_GO)
        except OSError:
            raise WorkerFailed(_ended(self.process)) from None
        if not self.conn.poll(timeout_s):
            raise WorkerFailed(f"invoke did not return within {timeout_s:.2f}s (hung)")
        message = self._receive()
        if message[0] != Reply.DONE:
            raise WorkerFailed(f"invoke failed: {message[2]}", ErrorKind(message[1]))

    def kill(self, wait_s: float = 0.0) -> bool:
        """SIGKILL; True once reaped. Without wait_s it never blocks: the caller reaps it later."""
        self.conn.close()
        if self.process.exitcode is None:
            # Once SIGKILL is pending the child runs no more user code, so it can no longer touch the
            # shared blocks even while a kernel call (a stuck USB transfer) delays its exit.
            self.process.kill()
        return self.reap(wait_s)

    def stop(self) -> bool:
        """Shutdown: ask the child to exit, kill it if it does not (a hung invoke never reads "stop")."""
        if self.state == WorkerState.READY:  # a child still loading reads no messages yet
            try:
                self.conn.send_bytes(_STOP)
            except OSError:
                pass  # already gone: kill() below reaps it
            else:
                self.process.join(STOP_JOIN_S)
        return self.kill(KILL_JOIN_S)

    def reap(self, wait_s: float = 0.0) -> bool:
        if self.process.exitcode is None:
            self.process.join(wait_s)
        if self.process.exitcode is None:
            return False
        self.process.close()
        return True


# ---------------------------------------------------------------------------------------------
# The backend


@dataclass
class FallbackStats:
    fallbacks: int = 0  # EdgeTPU -> CPU switches
    recoveries: int = 0  # CPU -> EdgeTPU switches after a successful re-probe
    probes: int = 0
    probe_failures: int = 0
    last_fallback_gap_s: float | None = None  # last EdgeTPU result to the CPU result replacing it
    # Last EdgeTPU result to the switch itself: the fallback's own delay, without the CPU invoke that
    # follows it (which only measures how fast the CPU is, e.g. on a loaded machine).
    last_switch_s: float | None = None


class FallbackBackend:
    """`InferenceBackend` on the EdgeTPU (in a child process) that degrades to the CPU and recovers.

    Used from one thread (inference); `kind` and `degraded_reason` may be read from any thread.
    """

    def __init__(
        self,
        worker: WorkerSpec,
        cpu: InterpreterBackend,
        hang_timeout_s: float,
        reprobe_interval_s: float,
        *,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
        warmup_timeout_s: float = WARMUP_TIMEOUT_S,
        model_path: Path | None = None,
    ) -> None:
        """Start the child and wait until its test invoke succeeded; BackendError/ModelError if not."""
        self._spec = worker
        self._cpu = cpu
        self.runtime = cpu.runtime
        self.model_path = model_path or cpu.model_path
        self.hang_timeout_s = hang_timeout_s
        self.reprobe_interval_s = reprobe_interval_s
        self.startup_timeout_s = startup_timeout_s
        self.warmup_timeout_s = max(warmup_timeout_s, hang_timeout_s)
        self.stats = FallbackStats()
        self.degraded_reason: str | None = None
        self._failure: str | None = None
        self._layout = TensorLayout.from_specs(cpu.input_spec, cpu.output_specs)
        # SharedMemory rejects size 0.
        self._input_memory = SharedMemory(create=True, size=max(1, self._layout.input_bytes))
        self._output_memory = SharedMemory(create=True, size=max(1, self._layout.output_bytes))
        self._input_view = self._layout.input.view(self._input_memory.buf)
        self._output_views = [t.view(self._output_memory.buf) for t in self._layout.outputs]
        self._active: _Worker | None = None
        self._probe: _Worker | None = None
        self._unreaped: list[_Worker] = []
        self._next_probe_s = math.inf
        self._degraded_since_s = 0.0
        self._last_edgetpu_result_s = 0.0
        self._last_probe_error: str | None = None
        self._closed = False
        try:
            first = self._spawn()
        except WorkerFailed as exc:
            self._release_memory()
            raise exc.as_error() from None
        try:
            if not first.poll_start(startup_timeout_s, self.warmup_timeout_s, wait_s=math.inf):
                raise WorkerFailed("EdgeTPU worker did not start")
        except WorkerFailed as exc:
            first.kill(KILL_JOIN_S)
            self._release_memory()
            raise exc.as_error() from None
        self._active = first

    # -- InferenceBackend -------------------------------------------------------------------------

    @property
    def kind(self) -> BackendKind:
        return BackendKind.EDGETPU if self._active is not None else BackendKind.CPU

    @property
    def degraded(self) -> bool:
        return self._active is None

    @property
    def input_spec(self) -> TensorSpec:
        return self._cpu.input_spec

    @property
    def output_specs(self) -> list[TensorSpec]:
        return self._cpu.output_specs

    def invoke(self, input_tensor: np.ndarray) -> list[np.ndarray]:
        if self._unreaped:
            self._unreaped = [w for w in self._unreaped if not w.reap()]
        if self._active is None:
            self._poll_probe()
        if self._active is not None:
            self._input_view[...] = input_tensor
            try:
                self._active.invoke(self.hang_timeout_s)
            except WorkerFailed as exc:
                self._fall_back(exc.message)
            else:
                self._last_edgetpu_result_s = time.monotonic()
                # Copies: the next invoke overwrites the shared block, results must outlive it.
                return [view.copy() for view in self._output_views]
        outputs = self._cpu.invoke(input_tensor)
        if self.stats.last_fallback_gap_s is None and self.stats.fallbacks:
            self.stats.last_fallback_gap_s = time.monotonic() - self._last_edgetpu_result_s
        return outputs

    def resize_input(self, shape: tuple[int, ...]) -> None:
        if shape != self._layout.input.shape:
            # The shared blocks and the compiled EdgeTPU model both have one fixed shape.
            raise BackendError(
                f"the EdgeTPU backend has a fixed input shape {list(self._layout.input.shape)}; "
                f"cannot resize to {list(shape)}: use model.backend: cpu for dynamic-shape models"
            )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for worker in (self._active, self._probe, *self._unreaped):
            if worker is not None and not worker.stop():
                log.warning("EdgeTPU worker pid %s did not exit after SIGKILL", worker.process.pid)
        self._active = self._probe = None
        self._unreaped = []
        self._release_memory()
        self._cpu.close()

    # -- lending the device during a reload ------------------------------------------------------

    def lend_device(self, reason: str) -> bool:
        """Stop the EdgeTPU child so another backend can open the device; run on the CPU meanwhile.

        Called while the pipeline is stopped (no invoke in flight). True if a device was lent.
        """
        if self._closed or self._active is None:
            return False
        if not self._active.stop():
            self._unreaped.append(self._active)
        self._active = None
        self._failure = reason
        self._degraded_since_s = time.monotonic()
        self._next_probe_s = math.inf  # no re-probe while the device is lent
        self.degraded_reason = f"EdgeTPU {reason}; running on the CPU model"
        return True

    def reclaim_device(self) -> None:
        """Take the device back after `lend_device`: the next invoke starts a re-probe. If that
        fails, this backend keeps running on the CPU and re-probes every reprobe_interval_s."""
        if self._closed or self._active is not None:
            return
        self._next_probe_s = time.monotonic()
        self.degraded_reason = f"EdgeTPU {self._failure}; taking it back; running on the CPU model"

    # -- switching ------------------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        try:
            return _Worker(self._spec, self._layout, self._input_memory.name, self._output_memory.name)
        except OSError as exc:  # fork/exec refused: out of memory or processes
            raise WorkerFailed(f"cannot start the EdgeTPU worker process: {exc}") from None

    def _discard(self, worker: _Worker) -> None:
        if not worker.kill():
            self._unreaped.append(worker)

    def _fall_back(self, reason: str) -> None:
        assert self._active is not None
        self._discard(self._active)
        self._active = None
        now = time.monotonic()
        self._failure = reason
        self._degraded_since_s = now
        self._next_probe_s = now + self.reprobe_interval_s
        self._last_probe_error = None
        self.stats.fallbacks += 1
        self.stats.last_fallback_gap_s = None
        self.stats.last_switch_s = now - self._last_edgetpu_result_s
        self.degraded_reason = f"EdgeTPU {reason}; running on the CPU model"
        log.warning(
            "EdgeTPU %s: switched to the CPU model, re-probing the EdgeTPU every %gs",
            reason,
            self.reprobe_interval_s,
        )

    def _poll_probe(self) -> None:
        """Start a re-probe when one is due, or advance the running one; never blocks."""
        now = time.monotonic()
        try:
            if self._probe is None:
                if now >= self._next_probe_s:
                    self.stats.probes += 1
                    self._probe = self._spawn()
                return
            ready = self._probe.poll_start(self.startup_timeout_s, self.warmup_timeout_s)
        except WorkerFailed as exc:
            if self._probe is not None:
                self._discard(self._probe)
            self._probe = None
            self.stats.probe_failures += 1
            self._next_probe_s = now + self.reprobe_interval_s
            self.degraded_reason = f"EdgeTPU {self._failure}; re-probe failed: {exc.message}; running on the CPU model"
            # Once per distinct reason: a Coral left unplugged must not fill the journal every 30 s.
            level = logging.INFO if exc.message != self._last_probe_error else logging.DEBUG
            log.log(level, "EdgeTPU re-probe failed: %s; next in %gs", exc.message, self.reprobe_interval_s)
            self._last_probe_error = exc.message
            return
        if ready:
            self._active, self._probe = self._probe, None
            self.stats.recoveries += 1
            self.degraded_reason = None
            log.info(
                "EdgeTPU works again (re-probe %d): switched back from the CPU model after %.1fs",
                self.stats.probes,
                now - self._degraded_since_s,
            )

    def _release_memory(self) -> None:
        # Views into the blocks must go before close(): mmap refuses to close with exports alive.
        self._input_view = np.empty(0)
        self._output_views = []
        for memory in (self._input_memory, self._output_memory):
            memory.close()
            memory.unlink()
