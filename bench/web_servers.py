"""Which async HTTP stack for the live view: aiohttp or starlette+uvicorn? RSS and CPU, idle and with
one MJPEG viewer, each server in its own process serving the same 640x480 JPEG at 15 fps.

Run in a venv that has both (they are not both project dependencies):
    python bench/web_servers.py --json bench/results/web-servers.json
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

FPS = 15
SERVERS = {
    "aiohttp": """
import asyncio, sys
from aiohttp import web
JPEG = open(sys.argv[2], "rb").read()
async def stream(request):
    response = web.StreamResponse(headers={"Content-Type": "multipart/x-mixed-replace; boundary=frame"})
    await response.prepare(request)
    while True:
        await response.write(b"--frame\\r\\nContent-Type: image/jpeg\\r\\n\\r\\n" + JPEG + b"\\r\\n")
        await asyncio.sleep(1 / %(fps)d)
app = web.Application()
app.router.add_get("/stream.mjpg", stream)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
""",
    "starlette+uvicorn": """
import asyncio, sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route
JPEG = open(sys.argv[2], "rb").read()
async def frames():
    while True:
        yield b"--frame\\r\\nContent-Type: image/jpeg\\r\\n\\r\\n" + JPEG + b"\\r\\n"
        await asyncio.sleep(1 / %(fps)d)
async def stream(request):
    return StreamingResponse(frames(), media_type="multipart/x-mixed-replace; boundary=frame")
app = Starlette(routes=[Route("/stream.mjpg", stream)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
""",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def measure(name: str, jpeg: Path, window_s: float) -> dict[str, float]:
    port = free_port()
    code = SERVERS[name] % {"fps": FPS}
    server = subprocess.Popen([sys.executable, "-c", code, str(port), str(jpeg)])
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        process = psutil.Process(server.pid)
        time.sleep(1.0)
        rss_idle = process.memory_info().rss / 2**20
        before = cpu_s(process)
        time.sleep(window_s)
        idle_cpu = (cpu_s(process) - before) / window_s * 100
        viewer = socket.create_connection(("127.0.0.1", port))
        viewer.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
        viewer.settimeout(1.0)
        received = 0
        before = cpu_s(process)
        end = time.monotonic() + window_s
        while time.monotonic() < end:
            received += len(viewer.recv(1 << 16))
        viewing_cpu = (cpu_s(process) - before) / window_s * 100
        rss_viewing = process.memory_info().rss / 2**20
        viewer.close()
        return {
            "rss_idle_mib": round(rss_idle, 1),
            "rss_one_viewer_mib": round(rss_viewing, 1),
            "cpu_idle_percent": round(idle_cpu, 2),
            "cpu_one_viewer_percent": round(viewing_cpu, 2),
            "stream_mib_s": round(received / window_s / 2**20, 2),
        }
    finally:
        server.terminate()
        server.wait(5)


def main() -> None:
    import importlib.metadata

    import cv2
    import numpy as np

    parser = argparse.ArgumentParser()
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), (9, 9), 3)
    jpeg = Path("/tmp/edgepose-web-bench.jpg")
    cv2.imwrite(str(jpeg), image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    results = {name: measure(name, jpeg, args.window_s) for name in SERVERS}
    versions = {p: importlib.metadata.version(p) for p in ("aiohttp", "starlette", "uvicorn")}
    report = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "versions": versions,
        "jpeg_bytes": jpeg.stat().st_size,
        "fps": FPS,
        "window_s": args.window_s,
        "results": results,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
