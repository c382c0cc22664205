"""`edgepose watch` and `edgepose fleet-sim` as a user runs them, against a real mosquitto."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgepose.client import DeviceState
from tests.conftest import Broker, edgepose_command

# A cap on every background watcher: stopped early by report(), or ended by the `watchers` fixture,
# it still ends by itself if the test run is killed outright.
WATCH_CAP = ("--duration", "120")


class Watcher:
    """`edgepose watch` in the background; wait_subscribed() returns once it is subscribed."""

    def __init__(self, broker: Broker, out: Path, *extra: str) -> None:
        self.out = out
        self.process = subprocess.Popen(
            [
                *edgepose_command("watch", "--mqtt", f"{broker.host}:{broker.port}", "--json", str(out)),
                *WATCH_CAP,
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_subscribed(self, timeout_s: float = 20.0) -> None:
        assert self.process.stderr is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if "subscribed at" in line:
                return
            if not line and self.process.poll() is not None:
                break
        pytest.fail(f"watch did not subscribe: rc={self.process.poll()}")

    def report(self, settle_s: float = 0.5) -> dict[str, Any]:
        """Stop it the way a user does (SIGTERM or Ctrl-C) once what was sent has had time to arrive."""
        time.sleep(settle_s)
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(30) == 0
        report: dict[str, Any] = json.loads(self.out.read_text())
        return report


@pytest.fixture
def watchers() -> Iterator[Callable[..., Watcher]]:
    """Makes Watchers and ends any still running when the test ends, passed or failed."""
    made: list[Watcher] = []

    def make(broker: Broker, out: Path, *extra: str) -> Watcher:
        made.append(Watcher(broker, out, *extra))
        return made[-1]

    yield make
    for watcher in made:
        if watcher.process.poll() is None:
            watcher.process.kill()
            watcher.process.wait(10)


def start_fleet_sim(broker: Broker, out: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*edgepose_command("fleet-sim", "--mqtt", f"{broker.host}:{broker.port}", "--json", str(out)), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def sim_report(process: subprocess.Popen[str], out: Path) -> dict[str, Any]:
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    report: dict[str, Any] = json.loads(out.read_text())
    assert json.loads(stdout) == report
    return report


def fleet_sim(broker: Broker, out: Path, *args: str) -> dict[str, Any]:
    return sim_report(start_fleet_sim(broker, out, *args), out)


@pytest.mark.needs_mqtt5  # shared subscriptions ($share) and watch's default protocol
def test_shared_group_splits_the_stream_between_two_consumers(
    broker: Broker, tmp_path: Path, watchers: Callable[..., Watcher]
) -> None:
    members = [watchers(broker, tmp_path / f"member{n}.json", "--share", "analytics") for n in range(2)]
    whole = watchers(broker, tmp_path / "whole.json", "--record", str(tmp_path / "all.jsonl"))
    for watcher in [*members, whole]:
        watcher.wait_subscribed()
    sim = fleet_sim(
        broker, tmp_path / "sim.json", "--devices", "6", "--fps", "10", "--duration", "2", "--format", "compact"
    )
    assert set(sim) >= {"devices", "fps", "sent", "duration_s", "send_lag_ms"}
    assert sim["devices"] == 6 and sim["fps"] == 10 and sim["planned"] == 120 and sim["format"] == "compact"
    # A starved simulator skips the frames it is more than one interval late for, as a camera would;
    # every planned frame is either sent or counted as skipped (a skip near the end may count frames past it),
    # and the split below is judged on what was sent.
    assert sim["sent"] <= 120 <= sim["sent"] + sim["skipped_late"] and sim["dropped"] == 0
    assert sim["sent"] >= 60, sim
    assert sim["mean_size_bytes"] <= 300

    shares = [m.report() for m in members]
    received = [s["received"] for s in shares]
    assert sum(received) == sim["sent"]  # every message to exactly one member of the group
    assert all(0.4 <= r / sim["sent"] <= 0.6 for r in received), received
    assert all(s["seq_gaps"] is None and s["shared"] for s in shares)  # a member's gaps mean nothing
    # mosquitto hands out group messages round-robin, not by device: with evenly paced devices each
    # member may see only some devices' keypoints. Status is not shared: both know all 6 went offline.
    seen = [{d for d, f in s["devices"].items() if f["received"]} for s in shares]
    assert len(seen[0] | seen[1]) == 6
    assert all(s["states"]["offline"] == 6 for s in shares)

    report = whole.report()
    assert report["received"] == sim["sent"] and report["devices_seen"] == 6 and report["seq_gaps"] == 0
    assert set(report) >= {"received", "devices_seen", "seq_gaps", "latency_ms"}
    assert set(report["latency_ms"]) == {"p50", "p95", "max"}
    assert 0 <= report["latency_ms"]["p50"] <= report["latency_ms"]["p95"] <= report["latency_ms"]["max"] < 5000
    assert report["states"] == {"online": 0, "offline": 6, "unknown": 0}  # the sim stopped cleanly
    lines = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    keypoints = [r for r in lines if r["topic"].endswith("/keypoints")]
    assert len(keypoints) == sim["sent"] and report["recorded"] == len(lines)
    assert keypoints[0]["payload"]["schema"] == "edgepose.kpc/1" and isinstance(keypoints[0]["received"], float)
    statuses = [r["payload"] for r in lines if r["topic"].endswith("/status")]
    assert statuses.count(DeviceState.ONLINE.value) == 6 and statuses.count(DeviceState.OFFLINE.value) == 6


@pytest.mark.needs_mqtt5  # watch's default protocol
def test_watch_counts_exactly_the_messages_a_lossy_device_dropped(
    broker: Broker, tmp_path: Path, watchers: Callable[..., Watcher]
) -> None:
    watcher = watchers(broker, tmp_path / "watch.json")
    watcher.wait_subscribed()
    clean = start_fleet_sim(broker, tmp_path / "sim.json", "--devices", "4", "--fps", "20", "--duration", "1.5")
    lossy = start_fleet_sim(
        broker,
        tmp_path / "lossy.json",
        *("--devices", "2", "--fps", "20", "--duration", "1.5", "--loss-percent", "20", "--id-prefix", "wifi"),
    )
    sim, sim_lossy = sim_report(clean, tmp_path / "sim.json"), sim_report(lossy, tmp_path / "lossy.json")
    report = watcher.report()
    assert sim["dropped"] == 0 and sim_lossy["dropped"] > 0
    assert report["received"] == sim["sent"] + sim_lossy["sent"]
    assert report["seq_gaps"] == sim_lossy["dropped"]
    for device, figures in report["devices"].items():
        expected = 0 if device.startswith("sim-") else None
        if expected is not None:
            assert figures["seq_gaps"] == 0, device
    assert sum(f["seq_gaps"] for d, f in report["devices"].items() if d.startswith("wifi-")) == sim_lossy["dropped"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["watch", "--mqtt", "localhost"], 64, "--mqtt localhost: expected HOST:PORT"),
        (["watch", "--mqtt", "localhost:1883", "--share", "a/b"], 64, "share group 'a/b'"),
        (["watch", "--mqtt", "localhost:1883", "--duration", "0"], 64, "--duration 0.0: must be positive"),
        (["fleet-sim", "--devices", "0", "--fps", "1", "--duration", "1", "--mqtt", "h:1"], 64, "--devices 0"),
        (["fleet-sim", "--devices", "1", "--fps", "1", "--duration", "1", "--mqtt", "h:x"], 64, "'h:x' is not HOST"),
    ],
)
def test_bad_arguments_are_one_line_errors(args: list[str], code: int, message: str) -> None:
    result = subprocess.run(edgepose_command(*args), capture_output=True, text=True, timeout=30)
    assert result.returncode == code
    assert message in result.stderr and "Traceback" not in result.stderr


def test_no_broker_is_exit_69(broker_factory: Any) -> None:
    stopped = broker_factory(start=False)
    for args in (["watch"], ["fleet-sim", "--devices", "2", "--fps", "1", "--duration", "1"]):
        result = subprocess.run(
            edgepose_command(*args, "--mqtt", f"127.0.0.1:{stopped.port}"), capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 69, result.stderr
        assert f"cannot connect to MQTT broker 127.0.0.1:{stopped.port}" in result.stderr
        assert "Traceback" not in result.stderr


def _persistent_consumer(broker: Broker, topic: str, client_id: str) -> tuple[Any, list[bytes]]:
    """An MQTT 5 consumer with a 60 s session: the broker queues QoS 1 messages while it is away."""
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    got: list[bytes] = []
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, m: got.append(bytes(m.payload))
    client.on_subscribe = lambda *a: subscribed.set()
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 60
    client.connect(broker.host, broker.port, clean_start=False, properties=properties)
    client.loop_start()
    client.subscribe(topic, qos=1)
    assert subscribed.wait(5)
    return client, got


@pytest.mark.parametrize("expiry_s", [0, 1])
def test_keypoints_expiry_spares_a_returning_consumer_stale_frames(broker: Broker, expiry_s: int) -> None:
    from edgepose.fleet.sim import BrokerAddress, SimConfig, run_fleet

    prefix = f"exp{expiry_s}"
    client, got = _persistent_consumer(broker, "edgepose/+/keypoints", f"analytics-{prefix}")
    client.disconnect()  # away: its session keeps the QoS 1 subscription
    client.loop_stop()
    broker_address = (BrokerAddress(broker.host, broker.port),)
    report = run_fleet(
        SimConfig(2, 10, 1.0, broker_address, id_prefix=prefix, qos_keypoints=1, keypoints_expiry_s=expiry_s)
    )
    time.sleep(2.0)  # the consumer comes back after every frame is more than a second old
    client, got = _persistent_consumer(broker, "edgepose/+/keypoints", f"analytics-{prefix}")
    time.sleep(1.0)
    client.disconnect()
    client.loop_stop()
    assert report["sent"] > 10
    assert len(got) == (0 if expiry_s else report["sent"])


def test_simulated_devices_publish_schema_valid_health_and_status(broker: Broker, subscribe: Any) -> None:
    """Consumers validate a simulated device's health like a real one's."""
    import jsonschema

    from edgepose.fleet.sim import BrokerAddress, SimConfig, run_fleet
    from tests.test_payloads import load_schema

    collector = subscribe(broker)
    report = run_fleet(SimConfig(2, 10, 0.5, (BrokerAddress(broker.host, broker.port),), id_prefix="valid"))
    health = collector.wait_for("/health", 2, timeout_s=5)
    assert len(health) >= 2
    schema = load_schema("health")
    for payload in health:
        message = json.loads(payload)
        jsonschema.validate(message, schema)
        assert message["device_id"].startswith("valid-") and message["source"] == "fleet-sim"
    statuses = [p.decode() for p in collector.on("/status")]
    assert statuses.count("online") == 2 and statuses.count("offline") == 2
    assert report["sent"] > 0
