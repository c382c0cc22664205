"""A real headless Chromium driven over the DevTools protocol (with aiohttp's WebSocket client, which
the project already depends on): open a page, wait for a condition, take PNG screenshots."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")


def chromium_binary() -> str | None:
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


class Browser:
    """`with Browser() as b: b.screenshots(url, ...)`; the profile is a throwaway directory."""

    def __init__(self, width_px: int = 900, height_px: int = 900) -> None:
        binary = chromium_binary()
        if binary is None:
            raise RuntimeError("chromium is not installed (apt install chromium); .ci/run installs it")
        self._profile = Path(tempfile.mkdtemp(prefix="edgepose-chromium-"))
        self._process = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-dev-shm-usage",
                f"--user-data-dir={self._profile}",
                f"--window-size={width_px},{height_px}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.port = self._wait_port()

    def _wait_port(self, timeout_s: float = 30.0) -> int:
        marker = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if marker.is_file() and (text := marker.read_text().split()):
                return int(text[0])
            if self._process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self._process.returncode}")
            time.sleep(0.1)
        raise RuntimeError("chromium did not open its DevTools port")

    def screenshots(
        self, url: str, ready_js: str, count: int, interval_s: float, timeout_s: float = 30.0
    ) -> list[bytes]:
        """Open `url`, wait until `ready_js` is true, then take `count` PNGs `interval_s` apart."""
        return asyncio.run(self._screenshots(url, ready_js, count, interval_s, timeout_s))

    async def _screenshots(
        self, url: str, ready_js: str, count: int, interval_s: float, timeout_s: float
    ) -> list[bytes]:
        ids = itertools.count(1)
        async with aiohttp.ClientSession() as session:
            async with session.put(f"http://127.0.0.1:{self.port}/json/new?about:blank") as response:
                target = await response.json(content_type=None)
            async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:

                async def call(method: str, **params: Any) -> dict[str, Any]:
                    call_id = next(ids)
                    await ws.send_str(json.dumps({"id": call_id, "method": method, "params": params}))
                    while True:
                        message = json.loads((await ws.receive()).data)
                        if message.get("id") == call_id:
                            if "error" in message:
                                raise RuntimeError(f"{method}: {message['error']}")
                            result: dict[str, Any] = message.get("result", {})
                            return result

                await call("Page.enable")
                await call("Page.navigate", url=url)
                deadline = time.monotonic() + timeout_s
                while True:
                    evaluated = await call("Runtime.evaluate", expression=ready_js, returnByValue=True)
                    if evaluated.get("result", {}).get("value") is True:
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"page never became ready: {ready_js}")
                    await asyncio.sleep(0.2)
                shots = []
                for index in range(count):
                    if index:
                        await asyncio.sleep(interval_s)
                    shot = await call("Page.captureScreenshot", format="png")
                    shots.append(base64.b64decode(shot["data"]))
                return shots

    def close(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
