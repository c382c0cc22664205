"""What one live-view viewer costs inference: the daemon on the synthetic source (as fast as the
interpreter goes, the worst case: encoding competes with inference for the CPU), three ways,
interleaved over several rounds:
  off     web.enabled=false
  idle    the live view on, nobody watching (must cost nothing: no encoding)
  viewer  one client reading /stream.mjpg all along
Inference fps is counted from the keypoints messages on a private mosquitto, as `edgepose bench` does.

    .venv/bin/python bench/web_viewer.py --frames 1500 --rounds 3 --json bench/results/web-viewer.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import threading
import time
from pathlib import Path

from edgepose.bench import measure_pipeline
from edgepose.localbroker import LocalBroker, free_port


class Viewer:
    """Connects to /stream.mjpg as soon as the daemon listens and reads until stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.bytes_read = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: bench\r\n\r\n")
                    while not self.stop.is_set():
                        chunk = sock.recv(1 << 16)
                        if not chunk:
                            break
                        self.bytes_read += len(chunk)
            except OSError:
                time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="movenet_lightning_int8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    fps: dict[str, list[float]] = {"off": [], "idle": [], "viewer": []}
    load_before = os.getloadavg()
    streamed_mb: list[float] = []
    with LocalBroker() as broker:
        for _ in range(args.rounds):
            for mode in fps:
                port = free_port()
                overrides = ["web.enabled=false"] if mode == "off" else [f"web.listen=127.0.0.1:{port}"]
                viewer = Viewer(port) if mode == "viewer" else None
                if viewer is not None:
                    viewer.thread.start()
                try:
                    result = measure_pipeline(
                        args.model, "auto", args.threads, args.frames, "synthetic", broker.host, broker.port,
                        timeout_s=600, overrides=overrides,
                    )  # fmt: skip
                finally:
                    if viewer is not None:
                        viewer.stop.set()
                        viewer.thread.join(5)
                fps[mode].append(result.fps)
                if viewer is not None:
                    streamed_mb.append(viewer.bytes_read / 1e6)
                print(f"{mode:6} {result.fps:7.1f} fps", flush=True)
    median = {mode: statistics.median(values) for mode, values in fps.items()}
    report = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "model": args.model,
        "threads": args.threads,
        "frames": args.frames,
        "rounds": args.rounds,
        "inference_fps": fps,
        "median_fps": median,
        "idle_vs_off": round(median["idle"] / median["off"], 4),
        "viewer_vs_off": round(median["viewer"] / median["off"], 4),
        "viewer_streamed_mb": streamed_mb,
        "cpu_count": os.cpu_count(),
        # Other work on the machine skews absolute rates; the modes are interleaved round by round,
        # so the ratios are what to read. The load averages say how busy the machine was.
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
