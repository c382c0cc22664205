"""Names the OS thread under the Python thread, so `top -H`, `ps -L` and `edgepose bench` can tell
the pipeline's threads apart (Python 3.11 names only its own thread objects, not the kernel's)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# prctl(2) options; the kernel keeps 15 bytes of the name plus the terminating NUL.
_PR_SET_NAME = 15
_PR_GET_NAME = 16
_NAME_BUFFER_BYTES = 16


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def native_name() -> str | None:
    """The calling thread's OS name, or None where the OS offers no way to read it."""
    libc = _libc()
    if libc is None:
        return None
    buffer = ctypes.create_string_buffer(_NAME_BUFFER_BYTES)
    if int(libc.prctl(_PR_GET_NAME, buffer, 0, 0, 0)) != 0:
        return None
    return buffer.value.decode("ascii", "replace")


def set_native_name(name: str) -> bool:
    """Name the calling thread (Linux `comm`, cut to 15 bytes); False where the OS offers no way."""
    libc = _libc()
    if libc is None:
        return False
    encoded = name.encode("ascii", "replace")[: _NAME_BUFFER_BYTES - 1]
    return int(libc.prctl(_PR_SET_NAME, ctypes.c_char_p(encoded), 0, 0, 0)) == 0


@contextmanager
def threads_started_as(name: str) -> Iterator[None]:
    """Threads a C library starts inside this block inherit `name` (Linux copies it at clone);
    the calling thread gets its own name back afterwards."""
    previous = native_name()
    set_native_name(name)
    try:
        yield
    finally:
        if previous is not None:
            set_native_name(previous)
