"""make test-cluster: a 3-node RabbitMQ cluster (MQTT plugin) on loopback, checked and measured with
edgepose's own tools.

Nodes ep1..ep3@localhost, each with its own AMQP, Erlang distribution and MQTT port, data and log
directories under a temporary directory, epmd bound to 127.0.0.1. ep2 and ep3 join ep1. Then:

1. what the cluster gives edgepose, each an observed yes/no: retained status and health published
   on one node seen by a consumer on another; a device's Last Will (SIGKILLed simulator on ep3) seen
   on ep1; QoS 1 across nodes; shared subscriptions ($share/...); MQTT 5;
2. capacity: fleet-sim spread over the three nodes, one `edgepose watch` on ep1 (no shared group:
   RabbitMQ 3.10 has none), MQTT 3.1.1, as bench/fleet.py measures one mosquitto.

    .venv/bin/python bench/cluster.py --json bench/results/cluster-latest.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet import Case, edgepose, run_case, table

from edgepose.localbroker import free_port

RABBIT_BIN = Path(os.environ.get("RABBIT_BIN", "/usr/lib/rabbitmq/bin"))
NODES = 3


class Node:
    def __init__(self, index: int, root: Path) -> None:
        self.name = f"ep{index}@localhost"
        self.dir = root / f"ep{index}"
        self.dir.mkdir(parents=True)
        self.amqp_port, self.dist_port, self.mqtt_port = free_port(), free_port(), free_port()
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt_port}\n"
            "mqtt.allow_anonymous = true\n"
            "loopback_users.guest = true\n"
            "log.console = false\n"
        )
        (self.dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        self.env = {
            **os.environ,
            "HOME": str(root),  # the Erlang cookie: one for all nodes and rabbitmqctl
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.dir / "pid"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def mqtt(self) -> str:
        return f"127.0.0.1:{self.mqtt_port}"

    def start(self) -> None:
        with (self.dir / "server.out").open("wb") as out:
            self.process = subprocess.Popen(
                [str(RABBIT_BIN / "rabbitmq-server")],
                env=self.env,
                stdout=out,
                stderr=out,
                start_new_session=True,
                cwd=self.dir,
            )

    def await_startup(self, timeout_s: float = 300) -> None:
        """Until the node answers: await_startup itself gives up at once while epmd does not know the node."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                log = (self.dir / "server.out").read_text(errors="replace")[-800:]
                raise SystemExit(f"RabbitMQ node {self.name} exited ({self.process.returncode}): {log}")
            result = subprocess.run(
                [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.name, "await_startup", "--timeout", "60"],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=120,
                cwd=self.dir,
            )
            if result.returncode == 0:
                return
            time.sleep(2)
        raise SystemExit(f"RabbitMQ node {self.name} did not start within {timeout_s:.0f}s")

    def ctl(self, *args: str, timeout_s: float = 120) -> str:
        result = subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.name, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=self.dir,  # where a CLI VM that crashes leaves its erl_crash.dump
        )
        if result.returncode != 0:
            raise SystemExit(f"rabbitmqctl -n {self.name} {' '.join(args)}: {result.stderr.strip()[-400:]}")
        return result.stdout

    def vm_processes(self) -> list[psutil.Process]:
        """The node's Erlang VM (beam.smp) under the rabbitmq-server script: its CPU is the broker's."""
        assert self.process is not None
        children = psutil.Process(self.process.pid).children(recursive=True)
        # The node's own VM has been up since start; rabbitmqctl and helper VMs come and go.
        settled = time.time() - 20
        return [p for p in children if p.name().startswith("beam") and p.create_time() < settled]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            subprocess.run(
                [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.name, "stop"],
                env=self.env,
                capture_output=True,
                timeout=60,
            )
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def start_cluster(nodes: list[Node]) -> None:
    for node in nodes:
        node.start()
    for node in nodes:
        node.await_startup()
    for node in nodes[1:]:
        node.ctl("stop_app")
        node.ctl("join_cluster", nodes[0].name)
        node.ctl("start_app")
        node.await_startup()
    status = nodes[0].ctl("cluster_status", "--formatter", "json")
    running = json.loads(status[status.index("{") :]).get("running_nodes", [])
    if len(running) != NODES:
        raise SystemExit(f"cluster did not form: running nodes {running}")


# -- checks: what the cluster gives edgepose ----------------------------------------------------


def client(address: str, name: str, protocol: int = mqtt.MQTTv311) -> mqtt.Client:
    host, port = address.rsplit(":", 1)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=protocol)
    c.connect(host, int(port))
    c.loop_start()
    return c


def collect(address: str, topic: str, qos: int, wait_s: float, before: Callable[[], None] | None = None) -> list[bytes]:
    got: list[bytes] = []
    subscribed = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"check-{time.monotonic_ns()}")
    c.on_message = lambda cl, ud, m: got.append(bytes(m.payload))
    c.on_subscribe = lambda *a: subscribed.set()
    host, port = address.rsplit(":", 1)
    c.connect(host, int(port))
    c.loop_start()
    c.subscribe(topic, qos)
    subscribed.wait(10)
    if before is not None:
        before()
    time.sleep(wait_s)
    c.disconnect()
    c.loop_stop()
    return got


def checks(nodes: list[Node]) -> dict[str, Any]:
    a, b, c = (n.mqtt for n in nodes)
    out: dict[str, Any] = {}

    device = client(b, "edgepose-retained-probe")
    device.publish("edgepose/retained-probe/status", "online", qos=1, retain=True).wait_for_publish(10)
    time.sleep(1)
    out["retained status, consumer on the same node"] = collect(b, "edgepose/retained-probe/status", 1, 1.5) == [
        b"online"
    ]
    out["retained status, consumer on another node"] = collect(a, "edgepose/retained-probe/status", 1, 1.5) == [
        b"online"
    ]
    # What edgepose consumers do: one wildcard subscription for every device's status.
    out["retained status, wildcard edgepose/+/status on the same node"] = collect(b, "edgepose/+/status", 1, 1.5) == [
        b"online"
    ]
    device.disconnect()
    device.loop_stop()

    def kill_a_device() -> None:
        sim = subprocess.Popen(
            [
                *edgepose("fleet-sim", "--devices", "1", "--fps", "5", "--duration", "60", "--mqtt", c),
                "--protocol",
                "3.1.1",
                "--id-prefix",
                "lwt",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(6)  # start, connect, publish a while
        os.killpg(sim.pid, signal.SIGKILL)
        sim.wait(10)

    statuses = collect(a, "edgepose/lwt-0000/status", 1, 4, before=kill_a_device)
    out["Last Will of a device on ep3 seen on ep1"] = b"offline" in statuses
    out["Last Will: statuses seen on ep1"] = [s.decode() for s in statuses]

    publisher = client(b, "edgepose-qos1-probe")

    def send_qos1() -> None:
        infos = [publisher.publish("edgepose/qos1-probe/health", str(i), qos=1) for i in range(200)]
        for info in infos:
            info.wait_for_publish(10)

    got = collect(a, "edgepose/qos1-probe/health", 1, 2, before=send_qos1)
    out["QoS 1 across nodes: 200 sent on ep2, received on ep1"] = len(got)
    publisher.disconnect()
    publisher.loop_stop()

    shared_publisher = client(b, "edgepose-share-probe")

    def send_plain() -> None:
        for i in range(20):
            shared_publisher.publish("edgepose/share-probe/keypoints", str(i), qos=1).wait_for_publish(10)

    out["shared subscription $share/g/...: of 20 messages, received"] = len(
        collect(a, "$share/g/edgepose/+/keypoints", 0, 2, before=send_plain)
    )
    shared_publisher.disconnect()
    shared_publisher.loop_stop()

    refused = threading.Event()
    accepted = threading.Event()
    v5 = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edgepose-v5-probe", protocol=mqtt.MQTTv5)
    v5.on_connect = lambda cl, ud, fl, rc, pr: (refused if rc.is_failure else accepted).set()
    v5.on_disconnect = lambda *args: refused.set()
    try:
        host, port = a.rsplit(":", 1)
        v5.connect(host, int(port))
        v5.loop_start()
        if not (accepted.wait(5) or refused.is_set()):
            refused.set()
    except OSError:
        refused.set()
    finally:
        v5.loop_stop()
    out["MQTT 5 accepted"] = accepted.is_set() and not refused.is_set()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, nargs="+", default=[50, 200, 500])
    parser.add_argument("--fps", type=float, nargs="+", default=[10])
    parser.add_argument("--formats", nargs="+", default=["json", "compact"], choices=["json", "compact"])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--label", default="")
    parser.add_argument("--keep", action="store_true", help="leave the data directory for inspection")
    args = parser.parse_args()
    if not (RABBIT_BIN / "rabbitmq-server").exists():
        raise SystemExit(f"{RABBIT_BIN}/rabbitmq-server not found: sudo apt install rabbitmq-server (set RABBIT_BIN)")
    root = Path(tempfile.mkdtemp(prefix="edgepose-cluster-"))
    started = time.time()
    nodes = [Node(i + 1, root) for i in range(NODES)]
    try:
        print("starting 3 RabbitMQ nodes ...", file=sys.stderr, flush=True)
        start_cluster(nodes)
        formed_s = round(time.time() - started, 1)
        version = nodes[0].ctl("version").strip()
        print(f"cluster formed in {formed_s}s (RabbitMQ {version}); checks ...", file=sys.stderr, flush=True)
        found = checks(nodes)
        for what, value in found.items():
            print(f"  {what}: {value}", file=sys.stderr, flush=True)
        results = []
        addresses = [n.mqtt for n in nodes]
        pids = [p.pid for n in nodes for p in n.vm_processes()]
        cases = [Case(d, f, fmt, args.duration) for f in args.fps for d in args.devices for fmt in args.formats]
        work = root / "bench"
        work.mkdir()
        for n, case in enumerate(cases):
            print(f"[{n + 1}/{len(cases)}] {case}", file=sys.stderr, flush=True)
            results.append(run_case(case, addresses, "3.1.1", work, consumers=1, share=None, broker_pids=pids))
            print(table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
        print(table(results))
        report = {
            "broker": f"RabbitMQ {version} with rabbitmq_mqtt, 3 nodes on loopback (Debian package)",
            "label": args.label,
            "cluster_formed_s": formed_s,
            "checks": found,
            "layout": "devices round-robin over ep1, ep2, ep3; one consumer on ep1 (no shared group); MQTT 3.1.1; "
            "broker CPU is the three Erlang VMs together",
            "command": " ".join(["bench/cluster.py", *sys.argv[1:]]),
            "wall_s": round(time.time() - started, 1),
            "results": results,
        }
        if args.json:
            args.json.write_text(json.dumps(report, indent=1) + "\n")
        if args.markdown:
            args.markdown.write_text(table(results) + "\n")
    finally:
        for node in reversed(nodes):
            node.stop()
        epmd = shutil.which("epmd") or next(iter(Path("/usr/lib/erlang").glob("erts-*/bin/epmd")), None)
        if epmd:  # the port mapper the first node started; it refuses while any node is registered
            subprocess.run([str(epmd), "-kill"], env=nodes[0].env, capture_output=True, check=False)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
