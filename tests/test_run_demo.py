"""`make run` (scripts/run_demo.sh): the live view listens where WEB_LISTEN says and the script
prints that address, so a newcomer whose port 8080 is taken can still open it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from edgepose.localbroker import free_port
from tests.conftest import REPO


def _wait(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _page(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bytes(response.read())
    except OSError:
        return None


def test_make_run_serves_the_live_view_on_web_listen(model_dir: Path) -> None:
    web_port = free_port()
    env = dict(os.environ)
    env.update(
        MQTT_PORT=str(free_port()),
        WEB_LISTEN=f"127.0.0.1:{web_port}",
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
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        url = f"http://127.0.0.1:{web_port}/"
        page = None

        def served() -> bool:
            nonlocal page
            page = _page(url)
            return page is not None

        assert _wait(served, 60), "no live view on WEB_LISTEN:\n" + "".join(lines)
        assert page is not None and b"<html" in page.lower()
        assert any(f"live view: {url}" in line for line in lines), "".join(lines)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
    reader.join(5)
    assert process.returncode == 0, "".join(lines)
