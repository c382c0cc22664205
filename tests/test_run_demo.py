"""`make run` (scripts/run_demo.sh): the live view listens where WEB_LISTEN says and the script
prints that address, so a newcomer whose port 8080 is taken can still open it."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from edgepose.localbroker import free_port
from tests.rundemo import run_demo, wait_until


def _page(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bytes(response.read())
    except OSError:
        return None


def test_make_run_serves_the_live_view_on_web_listen(model_dir: Path) -> None:
    web_port = free_port()
    with run_demo(model_dir, free_port(), web_port) as demo:
        url = f"http://127.0.0.1:{web_port}/"
        page = None

        def served() -> bool:
            nonlocal page
            page = _page(url)
            return page is not None

        assert wait_until(served, 60), "no live view on WEB_LISTEN:\n" + demo.output
        assert page is not None and b"<html" in page.lower()
        assert any(f"live view: {url}" in line for line in demo.lines), demo.output
    assert demo.process.returncode == 0, demo.output
