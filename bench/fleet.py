"""Fleet capacity: fleet-sim -> one broker -> two `edgepose watch` consumers in one shared group.

For each devices x fps x format: a fresh mosquitto on loopback, two consumers subscribed as
`$share/bench/edgepose/+/keypoints`, then `edgepose fleet-sim` for --duration seconds. Measured:
messages delivered per second at the consumers, loss (1 - received / sent), latency p50/p95
(receive - capture timestamp, the worse of the two consumers), CPU of the broker, each consumer and
the simulator (percent of one core), each consumer's share, and what the rest of the machine was
doing meanwhile (other processes' CPU, load average): on a shared machine that decides the knee.

    make bench-fleet                     # the matrix (~6 min) plus the 500 x 10 fps x 20 s target run
    .venv/bin/python bench/fleet.py --devices 500 --fps 10 --formats json --duration 20 --no-target
    .venv/bin/python bench/fleet.py --brokers 127.0.0.1:1884,127.0.0.1:1885 ...   # an external broker/cluster
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from edgepose.localbroker import LocalBroker

SETTLE_S = 1.0  # after the simulator exits, at least this long for the last messages to reach the consumers
DRAIN_MAX_S = 60.0  # consumers behind by seconds keep working through the broker's queue this long at most
IDLE_CPU_S = 0.003  # a consumer that used less CPU than this in a second has nothing left to read
CORE_BUSY_LIMIT = 85.0  # a single-threaded process above this % of a core is saturated


@dataclass(frozen=True)
class Case:
    devices: int
    fps: float
    payload_format: str
    duration_s: float


def edgepose(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgepose", *args]


def start_consumer(address: str, out: Path, share: str | None, protocol: str, cap_s: float) -> subprocess.Popen[str]:
    group = ["--share", share] if share else []
    # --duration is only a cap (they are stopped once drained): a killed bench leaves no consumer behind.
    return subprocess.Popen(
        edgepose(
            "watch", "--mqtt", address, *group, "--json", str(out), "--protocol", protocol, "--duration", str(cap_s)
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_subscribed(process: subprocess.Popen[str], address: str) -> subprocess.Popen[str]:
    assert process.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if "subscribed at" in line:
            return process
        if not line and process.poll() is not None:
            break
    raise SystemExit(f"consumer did not subscribe to {address} (rc {process.poll()})")


def cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def drain(consumers: list[psutil.Process]) -> float:
    """Wait until every consumer is idle (it has read what the broker still held for it); seconds waited.

    Stopping them at once would count messages still queued for a slow consumer as lost."""
    started = time.monotonic()
    last = [cpu_s(p) for p in consumers]
    while time.monotonic() - started < DRAIN_MAX_S:
        time.sleep(1.0)
        now = [cpu_s(p) for p in consumers]
        if all(b - a < IDLE_CPU_S for a, b in zip(last, now, strict=True)):
            break
        last = now
    return round(time.monotonic() - started, 1)


def machine_busy_s() -> float:
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def run_case(
    case: Case,
    brokers: list[str] | None,
    protocol: str,
    workdir: Path,
    consumers: int = 2,
    share: str | None = "bench",
    broker_pids: list[int] | None = None,
) -> dict[str, Any]:
    """One measurement. Consumers attach to the first broker; the simulator spreads over all.
    `broker_pids`: the processes of external brokers, whose CPU is added up as the broker's."""
    broker = None
    brokers_watched = [psutil.Process(pid) for pid in broker_pids or []]
    if brokers is None:
        broker = LocalBroker(workdir=workdir / "broker")
        broker.start()
        addresses = [f"{broker.host}:{broker.port}"]
        brokers_watched = [psutil.Process(broker.pid)] if broker.pid else []
    else:
        addresses = brokers
    name = f"{case.devices}x{case.fps:g}-{case.payload_format}"
    outs = [workdir / f"{name}-consumer{n}.json" for n in range(consumers)]
    sim_out = workdir / f"{name}-sim.json"
    cap_s = case.duration_s + DRAIN_MAX_S + 180
    watchers = [start_consumer(addresses[0], out, share, protocol, cap_s) for out in outs]
    for watcher in watchers:
        wait_subscribed(watcher, addresses[0])
    watched = [psutil.Process(c.pid) for c in watchers]
    watched += brokers_watched
    before = {p.pid: cpu_s(p) for p in watched}
    busy_before, wall_before = machine_busy_s(), time.monotonic()
    load_before = os.getloadavg()[0]
    sim = subprocess.Popen(
        edgepose(
            *("fleet-sim", "--devices", str(case.devices), "--fps", str(case.fps), "--duration", str(case.duration_s)),
            *("--mqtt", ",".join(addresses), "--format", case.payload_format, "--json", str(sim_out)),
            *("--protocol", protocol, "--id-prefix", "bench"),
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # wait4: the simulator's CPU including its worker processes, which it waits for itself.
    _, status, usage = os.wait4(sim.pid, 0)
    sim.returncode = os.waitstatus_to_exitcode(status)
    sim_stderr = sim.stderr.read() if sim.stderr else ""
    time.sleep(SETTLE_S)
    drain_s = drain(watched[: len(watchers)])
    wall_s = time.monotonic() - wall_before
    after = {p.pid: cpu_s(p) for p in watched}
    busy_s = machine_busy_s() - busy_before
    for watcher in watchers:
        watcher.send_signal(signal.SIGTERM)
    for watcher in watchers:
        watcher.wait(60)
    if broker is not None:
        broker.stop()
    if sim.returncode != 0:
        return {"case": name, "error": sim_stderr.strip().splitlines()[-1:] or [f"exit {sim.returncode}"]}
    report = json.loads(sim_out.read_text())
    shares = [json.loads(out.read_text()) for out in outs]
    received = sum(s["received"] for s in shares)
    sim_cpu_s = usage.ru_utime + usage.ru_stime
    consumer_cpu = [round(100 * (after[c.pid] - before[c.pid]) / wall_s, 1) for c in watchers]
    broker_cpu_s = sum(after[p.pid] - before[p.pid] for p in brokers_watched) if brokers_watched else None
    broker_cpu = round(100 * broker_cpu_s / wall_s, 1) if broker_cpu_s is not None else None
    ours_s = sum(after[p] - before[p] for p in after) + sim_cpu_s
    result = {
        "case": name,
        "devices": case.devices,
        "fps": case.fps,
        "format": case.payload_format,
        "duration_s": case.duration_s,
        "planned": report["planned"],
        "sent": report["sent"],
        "received": received,
        "delivered_ratio": round(received / report["sent"], 5) if report["sent"] else None,
        "loss": round(1 - received / report["sent"], 5) if report["sent"] else None,
        "sent_per_s": round(report["sent"] / report["duration_s"], 1),
        "delivered_per_s": round(received / report["duration_s"], 1),
        "sim_shortfall": round(max(0.0, 1 - report["sent"] / report["planned"]), 4) if report["planned"] else None,
        "latency_ms": {
            "p50": max(s["latency_ms"]["p50"] or 0 for s in shares),
            "p95": max(s["latency_ms"]["p95"] or 0 for s in shares),
            "max": max(s["latency_ms"]["max"] or 0 for s in shares),
        },
        "drain_s": drain_s,
        "window_s": round(wall_s, 1),
        "consumer_share": [round(s["received"] / received, 3) if received else None for s in shares],
        "cpu_percent": {
            "broker": broker_cpu,
            "consumers": consumer_cpu,
            "simulator": round(100 * sim_cpu_s / wall_s, 1),
        },
        # CPU per message: what each side costs, whatever share of the CPU it was given.
        "cpu_us_per_message": {
            "broker": round(1e6 * broker_cpu_s / report["sent"], 1)
            if broker_cpu_s is not None and report["sent"]
            else None,
            "consumer": round(1e6 * sum(after[c.pid] - before[c.pid] for c in watchers) / received, 1)
            if received
            else None,
            "simulator": round(1e6 * sim_cpu_s / report["sent"], 1) if report["sent"] else None,
        },
        "send_lag_ms": report["send_lag_ms"],
        "sim_processes": report["processes"],
        "mean_size_bytes": report["mean_size_bytes"],
        "machine": {
            "busy_percent_of_all_cores": round(100 * busy_s / wall_s / (os.cpu_count() or 1), 1),
            "others_cpu_percent": round(100 * (busy_s - ours_s) / wall_s, 1),
            "load1_before": round(load_before, 2),
            "load1_after": round(os.getloadavg()[0], 2),
        },
    }
    result["limit"] = limit(result)
    return result


def limit(result: dict[str, Any]) -> str:
    """Which side stops this case from keeping up, by the first sign of saturation."""
    cpu = result["cpu_percent"]
    saturated = []
    if (result["sim_shortfall"] or 0) > 0.01 or result["send_lag_ms"]["p95"] > 1000 / result["fps"]:
        saturated.append("simulator")
    if cpu["broker"] is not None and cpu["broker"] >= CORE_BUSY_LIMIT:
        saturated.append("broker")
    if any(c >= CORE_BUSY_LIMIT for c in cpu["consumers"]):
        saturated.append("consumer")
    if result["machine"]["busy_percent_of_all_cores"] >= 95:
        saturated.append("machine CPU")
    if saturated:
        return "+".join(saturated)
    if (result["loss"] or 0) > 0.001 or result["latency_ms"]["p95"] > 50:
        return "queueing (no single process saturated)"
    return "none"


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| devices | fps | format | sent/s | delivered/s | loss % | p50 ms | p95 ms | broker CPU % "
        "| consumer CPU % | sim CPU % | µs/msg broker / consumers / sim | split | others' CPU % | limit |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['case']} | error: {r['error']} |")
            continue
        cpu = r["cpu_percent"]
        lines.append(
            f"| {r['devices']} | {r['fps']:g} | {r['format']} | {r['sent_per_s']:.0f} "
            f"| {r['delivered_per_s']:.0f} | {100 * r['loss']:.3f} | {r['latency_ms']['p50']:.1f} "
            f"| {r['latency_ms']['p95']:.1f} | {cpu['broker'] if cpu['broker'] is not None else '-'} "
            f"| {' / '.join(str(c) for c in cpu['consumers'])} | {cpu['simulator']} "
            f"| {' / '.join('-' if v is None else f'{v:.0f}' for v in r['cpu_us_per_message'].values())} "
            f"| {' / '.join(f'{100 * s:.0f}%' for s in r['consumer_share'] if s is not None)} "
            f"| {r['machine']['others_cpu_percent']} | {r['limit']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, nargs="+", default=[50, 200, 500, 1000])
    parser.add_argument("--fps", type=float, nargs="+", default=[10, 30])
    parser.add_argument("--formats", nargs="+", default=["json", "compact"], choices=["json", "compact"])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per matrix case (default 8)")
    parser.add_argument("--no-target", action="store_true", help="skip the 500 devices x 10 fps x 20 s target run")
    parser.add_argument("--brokers", help="HOST:PORT[,...] of running brokers instead of a private mosquitto")
    parser.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    parser.add_argument("--label", default="", help="free text about the conditions, kept in the JSON")
    args = parser.parse_args()

    cases = [Case(d, f, fmt, args.duration) for f in args.fps for d in args.devices for fmt in args.formats]
    if not args.no_target:
        cases += [Case(500, 10, fmt, 20.0) for fmt in args.formats]
    brokers = args.brokers.split(",") if args.brokers else None
    started = time.time()
    results = []
    with tempfile.TemporaryDirectory(prefix="edgepose-bench-fleet-") as tmp:
        for n, case in enumerate(cases):
            print(
                f"[{n + 1}/{len(cases)}] {case.devices} devices x {case.fps:g} fps, {case.payload_format}, "
                f"{case.duration_s:g} s",
                file=sys.stderr,
                flush=True,
            )
            results.append(run_case(case, brokers, args.protocol, Path(tmp)))
            print(table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    text = table(results)
    print(text)
    report = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "broker": args.brokers or f"mosquitto {mosquitto_version()} (private, loopback)",
        "protocol": args.protocol,
        "label": args.label,
        "started_unix_s": round(started),
        "wall_s": round(time.time() - started, 1),
        "command": " ".join(["bench/fleet.py", *sys.argv[1:]]),
        "results": results,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(text + "\n")


def mosquitto_version() -> str:
    try:
        out = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, timeout=5).stdout
    except OSError:
        return "?"
    return out.split("version", 1)[-1].split()[0] if "version" in out else "?"


if __name__ == "__main__":
    main()
