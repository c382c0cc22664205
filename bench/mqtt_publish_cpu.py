"""CPU per keypoints message through `MqttPublisher`, every thread of the process counted.

One thread publishes a 1.3 kB QoS 0 message every `--interval-ms` (as the publish thread does at
the interpreter's rate) to a private mosquitto; the process's CPU (all threads: the publishing one,
the publisher's network thread) per message is reported, minus the same loop without the publish
call. CPU time, not wall time, so other load on the machine mostly drops out. A/B two trees with
PYTHONPATH, e.g.:

    PYTHONPATH=/path/to/old .venv/bin/python bench/mqtt_publish_cpu.py
    .venv/bin/python bench/mqtt_publish_cpu.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections.abc import Callable

import edgepose
from edgepose.config import MqttConfig
from edgepose.localbroker import LocalBroker
from edgepose.mqtt.publisher import MqttPublisher
from edgepose.mqtt.topics import Topics

PAYLOAD = b'{"x": 1}' + b" " * 1300


def paced_cpu_ms_per_message(send: Callable[[], None], messages: int, interval_s: float) -> float:
    """Process CPU (all threads) per call of `send`, `interval_s` apart, as a pipeline calls it."""
    next_s = time.perf_counter()
    started = time.process_time()
    for _ in range(messages):
        send()
        next_s += interval_s
        delay_s = next_s - time.perf_counter()
        if delay_s > 0:
            time.sleep(delay_s)
    time.sleep(0.05)  # let the network thread finish the last writes
    return (time.process_time() - started) / messages * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--interval-ms", type=float, default=6.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    interval_s = args.interval_ms / 1e3
    delivered = threading.Semaphore(0)
    with LocalBroker() as broker:
        config = MqttConfig(host=broker.host, port=broker.port)
        publisher = MqttPublisher(config, Topics("edgepose", "cpu"), f"edgepose-cpu-{os.getpid()}", None)
        publisher.start()
        deadline = time.monotonic() + 5
        while not publisher.stats.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert publisher.stats.connected, "no connection to the private broker"

        def publish() -> None:
            publisher.publish("edgepose/cpu/keypoints", PAYLOAD, 0, expiry_s=30.0, on_delivery=on_delivery)

        def on_delivery(ok: bool) -> None:
            delivered.release()

        def nothing() -> None:
            pass

        rows = []
        for _ in range(args.repeats):
            idle = paced_cpu_ms_per_message(nothing, args.messages, interval_s)
            busy = paced_cpu_ms_per_message(publish, args.messages, interval_s)
            rows.append({"idle_ms": idle, "publish_ms": busy, "net_ms": busy - idle})
        publisher.stop()
    result = {
        "edgepose": os.path.dirname(edgepose.__file__),
        "messages": args.messages,
        "interval_ms": args.interval_ms,
        "rows": rows,
        "net_ms_per_message_min": min(r["net_ms"] for r in rows),
        "delivered": publisher.stats.delivered,
        "lost": publisher.stats.lost,
        "loadavg": os.getloadavg(),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(result, out, indent=1)


if __name__ == "__main__":
    main()
