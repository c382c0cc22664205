"""`make run`'s script (scripts/run_demo.sh) started as the Makefile starts it, for the tests that
check what a newcomer sees; stopped with Ctrl-C as a terminal would send it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO


def wait_until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@dataclass
class RunDemo:
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "".join(self.lines)


@contextmanager
def run_demo(model_dir: Path, mqtt_port: int, web_port: int) -> Iterator[RunDemo]:
    """Yields the running script; on exit sends SIGINT to its process group and waits for it."""
    env = dict(os.environ)
    env.update(
        MQTT_PORT=str(mqtt_port),
        WEB_LISTEN=f"127.0.0.1:{web_port}",  # 8080 may be another daemon's
        EDGEPOSE=str(Path(sys.executable).parent / "edgepose"),
        EDGEPOSE_PYTHON=sys.executable,
        EDGEPOSE_MODEL_DIR=str(model_dir),
    )
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    process = subprocess.Popen(
        ["bash", "scripts/run_demo.sh"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # Ctrl-C goes to the terminal's whole process group: do the same
    )
    demo = RunDemo(process)
    reader = threading.Thread(target=lambda: demo.lines.extend(iter(process.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        yield demo
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        reader.join(5)
