"""OS thread names: what `top -H` and `edgepose bench` read from /proc."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from edgepose.nativethread import native_name, set_native_name, threads_started_as

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl names are Linux's")


def _comm(native_id: int) -> str:
    return Path(f"/proc/self/task/{native_id}/comm").read_text().strip()


def test_a_thread_names_itself_cut_to_15_bytes() -> None:
    seen: list[str] = []

    def body() -> None:
        assert set_native_name("ep-a-very-long-thread-name")
        seen.append(_comm(threading.get_native_id()))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == ["ep-a-very-long-"]


def test_threads_started_inside_inherit_the_name_and_the_caller_gets_its_own_back() -> None:
    seen: list[str] = []

    def outer() -> None:
        set_native_name("ep-outer")
        with threads_started_as("ep-workers"):
            inner = threading.Thread(target=lambda: seen.append(_comm(threading.get_native_id())))
            inner.start()
            inner.join()
        seen.append(native_name() or "")

    thread = threading.Thread(target=outer)
    thread.start()
    thread.join()
    assert seen == ["ep-workers", "ep-outer"]
