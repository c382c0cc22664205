"""`edgepose watch`: a live table of a fleet (devices x fps x latency x gaps x state), a JSON report
at the end, and optionally every message received written to a JSON Lines file."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TextIO

from edgepose.client import DeviceView, FleetClient, FleetTracker, MqttProtocol, Subscription
from edgepose.errors import OutputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WatchOptions:
    host: str
    port: int
    subscription: Subscription
    duration_s: float | None = None
    json_out: Path | None = None
    record: Path | None = None
    protocol: MqttProtocol = "5"
    validate: bool = True
    refresh_s: float = 1.0


class Recorder:
    """Writes `{"received": UNIX_S, "topic": ..., "payload": ...}` per message, one per line. JSON
    payloads are embedded as objects, others (status) as strings. Called on paho's thread."""

    def __init__(self, path: Path) -> None:
        try:
            self._file: IO[str] = path.open("w", encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"--record {path}: cannot write: {exc.strerror or exc}") from None
        self._lock = threading.Lock()
        self.lines = 0

    def __call__(self, topic: str, payload: bytes, received_s: float) -> None:
        text = payload.decode("utf-8", "replace")
        body: Any
        try:
            body = json.loads(text) if text[:1] in "{[" else text
        except json.JSONDecodeError:
            body = text
        line = json.dumps({"received": round(received_s, 6), "topic": topic, "payload": body}, separators=(",", ":"))
        with self._lock:
            self._file.write(line + "\n")
            self.lines += 1

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(tracker: FleetTracker, options: WatchOptions, elapsed_s: float, max_rows: int | None) -> str:
    """The table as text: two summary lines, a header, one row per device (up to max_rows)."""
    views: list[DeviceView] = tracker.devices()
    summary = tracker.summary()
    latency = summary["latency_ms"]
    states = summary["states"]
    rate = sum(v.rate_per_s for v in views)
    share = f" shared group {options.subscription.share}" if options.subscription.share else ""
    target = options.subscription.device_id or "+"
    gaps = "n/a (shared)" if summary["seq_gaps"] is None else summary["seq_gaps"]
    lines = [
        f"edgepose watch  {options.host}:{options.port}  {options.subscription.base_topic}/{target}{share}  "
        f"{elapsed_s:.0f}s",
        f"devices {len(views)} (online {states['online']}, offline {states['offline']}, unknown {states['unknown']})"
        f"  received {summary['received']}  {rate:.0f} msg/s  gaps {gaps}  invalid {summary['invalid']}"
        f"  latency p50 {_fmt(latency['p50'], '.1f')} p95 {_fmt(latency['p95'], '.1f')} ms",
        f"{'DEVICE':24} {'STATE':8} {'FPS':>6} {'MSGS':>8} {'GAPS':>6} {'P50ms':>7} {'P95ms':>7} {'LAST':>6} "
        f"{'FORMAT':8} {'BYTES':>6}",
    ]
    shown = views if max_rows is None else views[:max_rows]
    for v in shown:
        lines.append(
            f"{v.device_id[:24]:24} {v.state.value:8} {v.rate_per_s:6.1f} {v.received:8d} "
            f"{_fmt(v.seq_gaps, 'd'):>6} {_fmt(v.latency_p50_ms, '.1f'):>7} {_fmt(v.latency_p95_ms, '.1f'):>7} "
            f"{_fmt(v.last_seen_s, '.1f'):>6} {v.payload_format.value if v.payload_format else '-':8} "
            f"{_fmt(v.mean_size_bytes, '.0f'):>6}"
        )
    if len(shown) < len(views):
        lines.append(f"... {len(views) - len(shown)} more devices")
    return "\n".join(lines)


def run_watch(options: WatchOptions, stop: threading.Event, out: TextIO) -> dict[str, Any]:
    """Watch until `duration_s` passes or `stop` is set; returns (and writes) the JSON report."""
    tracker = FleetTracker(shared=options.subscription.share is not None)
    recorder = Recorder(options.record) if options.record is not None else None
    client = FleetClient(
        options.host,
        options.port,
        options.subscription,
        tracker,
        validate=options.validate,
        protocol=options.protocol,
        on_raw=recorder,
    )
    live = out.isatty()
    try:
        client.start()
        log.info("subscribed at %s to %s", client.address, ", ".join(f for f, _ in options.subscription.filters()))
        started_s = time.monotonic()
        deadline_s = started_s + options.duration_s if options.duration_s is not None else None
        next_draw_s = started_s
        while not stop.is_set():
            now = time.monotonic()
            if deadline_s is not None and now >= deadline_s:
                break
            if live and now >= next_draw_s:
                rows = max(1, shutil.get_terminal_size().lines - 5)
                # Home and clear: redraw in place rather than scroll.
                out.write("\x1b[H\x1b[2J" + render(tracker, options, now - started_s, rows) + "\n")
                out.flush()
                next_draw_s = now + options.refresh_s
            wait_s = 0.2 if deadline_s is None else max(0.0, min(0.2, deadline_s - now))
            stop.wait(wait_s)
    finally:
        client.stop()
        if recorder is not None:
            recorder.close()
    elapsed_s = time.monotonic() - started_s
    out.write(render(tracker, options, elapsed_s, None if not live else max(1, shutil.get_terminal_size().lines - 5)))
    out.write("\n")
    out.flush()
    report = tracker.summary()
    report["consumer_disconnects"] = client.disconnects
    if recorder is not None:
        report["recorded"] = recorder.lines
    if options.json_out is not None:
        try:
            options.json_out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"--json {options.json_out}: cannot write: {exc.strerror or exc}") from None
    return report
