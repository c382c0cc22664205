"""The daemon (real CLI, real model, real mosquitto) through broker outages, a broker crash with
persistence, and a twin with the same client id.

The outages run is parametrised: a short one (2 s + 3 s) is part of `make test`; the issue's
6 s + 12 s + 20 s runs with `make test-outages` (about a minute) and writes its figures to
bench/results/outages-latest.json (docs/reliability.md quotes them).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.brokers import ConfiguredBroker
from tests.conftest import edgepose_command, edgepose_env
from tests.test_publisher import wait_until

FULL_OUTAGES_S = (6.0, 12.0, 20.0)
SHORT_OUTAGES_S = (2.0, 3.0)
UP_WINDOW_S = 4.0
RECONNECT_BOUND_S = 3.0


class PersistentSubscriber:
    """A subscriber whose session (QoS 1 subscription and queue) the broker keeps across restarts,
    so it counts every message the broker accepted, also those that arrive before it reconnects."""

    def __init__(self, port: int, topic: str) -> None:
        self.lock = threading.Lock()
        self.received: list[tuple[str, bytes, bool, float, float]] = []  # topic, payload, retain, monotonic, wall
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="reliability-counter", protocol=mqtt.MQTTv311, clean_session=False
        )
        self.client.reconnect_delay_set(0.05, 0.1)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(5)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self.lock:
            self.received.append(
                (message.topic, bytes(message.payload), bool(message.retain), time.monotonic(), time.time())
            )

    def on(self, suffix: str, live_only: bool = False) -> list[tuple[str, bytes, bool, float, float]]:
        with self.lock:
            return [m for m in self.received if m[0].endswith(suffix) and not (live_only and m[2])]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _daemon(model_dir: Path, port: int, device_id: str, *extra: str) -> subprocess.Popen[bytes]:
    args = [
        "run",
        "--set", "camera.source=synthetic:20",
        "--set", "model.num_threads=1",
        "--set", "mqtt.host=127.0.0.1",
        "--set", f"mqtt.port={port}",
        "--set", f"device_id={device_id}",
        "--set", "health.interval_s=1",
        *extra,
    ]  # fmt: skip
    env = edgepose_env(model_dir)
    return subprocess.Popen(edgepose_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


@pytest.fixture
def daemons() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def _stop(process: subprocess.Popen[bytes]) -> str:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr.decode()[-2000:]
    return stderr.decode()


def run_outages(
    tmp_path: Path, model_dir: Path, daemons: list[subprocess.Popen[bytes]], outages_s: tuple[float, ...]
) -> dict[str, Any]:
    """Broker down for each of outages_s in turn, UP_WINDOW_S up in between; QoS 1 keypoints."""
    broker = ConfiguredBroker(
        tmp_path / "broker",
        "allow_anonymous true\npersistence true\n"
        f"persistence_location {tmp_path / 'broker'}/\nmax_queued_messages 100000\n",
    )
    device = "outages"
    # The daemon starts first, against a broker that is not there yet: the reason is in the first health.
    with socket.create_server((broker.host, broker.port)) as stand_in:
        daemons.append(_daemon(model_dir, broker.port, device, "--set", "mqtt.qos.keypoints=1"))
        stand_in.settimeout(120)
        stand_in.accept()[0].close()  # its first attempt: answered by nothing, then refused until the broker is up
    time.sleep(1.0)
    broker.start()
    subscriber = PersistentSubscriber(broker.port, f"edgepose/{device}/#")
    delays_s: list[float] = []
    first_health_after: list[dict[str, Any]] = []
    try:
        assert wait_until(lambda: len(subscriber.on("/keypoints")) >= 20 and subscriber.on("/health"), 60), (
            "no messages"
        )
        # Retained or live: the broker is new, so the first health is the one sent on connecting.
        first_health = json.loads(subscriber.on("/health")[0][1])
        for outage_s in outages_s:
            broker.stop()
            down_wall_s = time.time()  # after the broker has exited: nothing later reached the old one
            time.sleep(outage_s)
            up_monotonic_s = broker.start()
            up_wall_s = time.time() - (time.monotonic() - up_monotonic_s)

            # Only a frame captured after the broker went down can have come through a new connection
            # (the broker's own saved queue for the subscriber replays older ones first).
            def new_keypoints(since_s: float = down_wall_s) -> list[tuple[str, bytes, bool, float, float]]:
                return [m for m in subscriber.on("/keypoints") if json.loads(m[1])["timestamp"] > since_s]

            assert wait_until(lambda: bool(new_keypoints()), 15), "no keypoints after the outage"
            delays_s.append(round(new_keypoints()[0][3] - up_monotonic_s, 2))

            def healths_since(since_s: float) -> list[dict[str, Any]]:
                payloads = [json.loads(m[1]) for m in subscriber.on("/health", live_only=True)]
                return [h for h in payloads if h["timestamp"] > since_s]

            assert wait_until(lambda t=up_wall_s: bool(healths_since(t)), 30), "no health after the outage"
            # Nothing made while the broker was away (it would say connected: false) is ever sent.
            assert all(h["timestamp"] > up_wall_s for h in healths_since(down_wall_s + 0.5))
            first_health_after.append(healths_since(up_wall_s)[0])
            time.sleep(UP_WINDOW_S)
        stderr = _stop(daemons[-1])
        time.sleep(0.5)
        keypoints = [json.loads(m[1]) for m in subscriber.on("/keypoints")]
        final = json.loads(subscriber.on("/health", live_only=True)[-1][1])
    finally:
        subscriber.close()
        broker.stop()
    seqs = {k["seq"] for k in keypoints}
    return {
        "outages_s": list(outages_s),
        "reconnect_to_first_keypoints_s": delays_s,
        "subscriber_keypoints": len(keypoints),
        "subscriber_distinct_seq": len(seqs),
        "frames_published": final["counters"]["frames_published"],
        "publish_failed": final["counters"]["publish_failed"],
        "frames_inferred": final["counters"]["frames_inferred"],
        "reconnects": final["mqtt"]["reconnects"],
        "first_health": first_health,
        "first_health_after_outages": first_health_after,
        "stderr": stderr,
    }


def _check_outages(result: dict[str, Any], outages_s: tuple[float, ...]) -> None:
    assert len(result["reconnect_to_first_keypoints_s"]) == len(outages_s)
    assert max(result["reconnect_to_first_keypoints_s"]) <= RECONNECT_BOUND_S, result["reconnect_to_first_keypoints_s"]
    # The daemon's count of delivered keypoints and the subscriber's agree within 1%.
    published, counted = result["frames_published"], result["subscriber_distinct_seq"]
    assert abs(published - counted) <= 0.01 * counted, (published, counted)
    assert result["publish_failed"] == 0  # QoS 1: everything queued through the outages was delivered
    assert result["reconnects"] >= len(outages_s)
    # Health while the broker was missing at start: the reason, with its time, in the first health.
    first = result["first_health"]["mqtt"]
    reasons = ("before it answered", "connection refused")
    assert first["connected"] is True and any(r in (first["last_error"] or "") for r in reasons), first
    assert first["last_error_at"] is not None and first["failed_attempts"] >= 1
    for index, health in enumerate(result["first_health_after_outages"]):
        assert health["mqtt"]["connected"] is True  # fresh, made after the reconnect
        assert health["mqtt"]["reconnects"] == index + 1
    # Each outage logged once per change of reason, not once per attempt (about 3 attempts per 6 s).
    refused_logs = [line for line in result["stderr"].splitlines() if "connection refused" in line]
    assert 1 <= len(refused_logs) <= len(outages_s) + 1, refused_logs


def test_short_outages_reconnect_fast_and_count_true(
    tmp_path: Path, model_dir: Path, daemons: list[subprocess.Popen[bytes]]
) -> None:
    result = run_outages(tmp_path, model_dir, daemons, SHORT_OUTAGES_S)
    _check_outages(result, SHORT_OUTAGES_S)


@pytest.mark.skipif(not os.environ.get("EDGEPOSE_OUTAGES"), reason="about a minute: make test-outages")
def test_outages_6_12_20s(tmp_path: Path, model_dir: Path, daemons: list[subprocess.Popen[bytes]]) -> None:
    result = run_outages(tmp_path, model_dir, daemons, FULL_OUTAGES_S)
    figures = {key: value for key, value in result.items() if key not in ("stderr", "first_health")}
    figures["first_health_after_outages"] = [h["mqtt"] for h in result["first_health_after_outages"]]
    out = Path(os.environ["EDGEPOSE_OUTAGES"])
    if out.suffix == ".json":
        out.write_text(json.dumps(figures, indent=2) + "\n")
    _check_outages(result, FULL_OUTAGES_S)


def test_online_does_not_outlive_the_daemon_across_a_broker_crash(
    tmp_path: Path, model_dir: Path, daemons: list[subprocess.Popen[bytes]]
) -> None:
    """The ghost `online`: the broker saves the retained `online`, crashes, the daemon dies while
    it is down, the broker comes back with what it saved. MQTT 5 expiry ends it in time."""
    # Long enough that a broker restart on a loaded machine (seconds) does not outlast the `online`
    # the test needs to see come back; the last refresh was at most expiry_s / 3 before the crash.
    expiry_s = 10.0
    workdir = tmp_path / "broker"
    broker = ConfiguredBroker(
        workdir, f"allow_anonymous true\npersistence true\npersistence_location {workdir}/\nautosave_interval 1\n"
    )
    broker.start()
    device = "ghost"
    daemon = _daemon(model_dir, broker.port, device, "--set", f"mqtt.status_expiry_s={expiry_s}")
    daemons.append(daemon)
    watcher = PersistentSubscriber(broker.port, f"edgepose/{device}/status")
    try:
        assert wait_until(lambda: bool(watcher.on("/status")), 60)
        assert watcher.on("/status")[-1][1] == b"online"
    finally:
        watcher.close()
    # The broker's autosave has written the retained `online` (a fixed 1.5 s was not always enough
    # under load: the restarted broker then had nothing to bring back).
    seen_online_s = time.time()
    database = workdir / "mosquitto.db"
    assert wait_until(lambda: database.exists() and database.stat().st_mtime > seen_online_s + 0.1, 30), (
        "the broker did not autosave"
    )
    broker.crash()
    daemon.kill()
    daemon.wait(10)
    died_s = time.monotonic()
    broker.start()
    seen: list[bytes] = []

    def retained_status() -> tuple[bytes | None, float]:
        """The retained status and when the broker answered the subscription (it sends what it
        retains right behind the SUBACK, so that is the moment the answer describes)."""
        got: list[bytes] = []
        subscribed = threading.Event()
        answered_s: list[float] = []

        def on_subscribe(*_: Any) -> None:
            answered_s.append(time.monotonic())
            subscribed.set()

        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{len(seen)}", protocol=mqtt.MQTTv5)
        client.on_message = lambda c, u, m: got.append(bytes(m.payload))
        client.on_subscribe = on_subscribe
        client.connect("127.0.0.1", broker.port)
        client.subscribe(f"edgepose/{device}/status", qos=1)
        client.loop_start()
        # Waiting for the SUBACK, not a fixed 0.3 s: on a loaded machine the answer can come later,
        # and a probe that gave up early would read a missing `online` as an expired one.
        assert subscribed.wait(30), "no SUBACK from the broker"
        time.sleep(0.3)  # the retained message follows the SUBACK in the same stream
        client.disconnect()
        client.loop_stop()
        return (got[-1] if got else None), answered_s[0]

    try:
        # Bounded: the last refresh was at most expiry_s / 3 before the crash, so `online` is gone
        # at most expiry_s after the daemon died. Measured at the broker's answer, not after the
        # probe's own (load-dependent) connect and teardown.
        gone_after_s = None
        while time.monotonic() - died_s < expiry_s + 30:
            status, answered_s = retained_status()
            seen.append(status or b"(none)")
            if status != b"online":
                gone_after_s = answered_s - died_s
                break
        assert seen[0] == b"online", seen  # the crash really did bring the saved `online` back...
        assert seen[-1] != b"online", seen  # ...and its expiry ended it
        assert gone_after_s is not None and gone_after_s <= expiry_s + 2.0, (gone_after_s, seen)
    finally:
        broker.stop()


def test_takeover_by_a_twin_is_an_error_in_log_and_health(
    tmp_path: Path, model_dir: Path, daemons: list[subprocess.Popen[bytes]]
) -> None:
    broker = ConfiguredBroker(tmp_path / "broker")
    broker.start()
    device = "twin"
    daemon = _daemon(model_dir, broker.port, device)
    daemons.append(daemon)
    subscriber = PersistentSubscriber(broker.port, f"edgepose/{device}/health")
    try:
        assert wait_until(lambda: bool(subscriber.on("/health", live_only=True)), 60)
        # A second device with the same default id: it connects, and connects again.
        for attempt in range(3):
            twin = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edgepose-{device}", protocol=mqtt.MQTTv5)
            twin.connect("127.0.0.1", broker.port)
            twin.loop_start()
            time.sleep(0.8)
            twin.disconnect()
            twin.loop_stop()
            del attempt

        def taken_over() -> bool:
            last = subscriber.on("/health", live_only=True)[-1]
            return int(json.loads(last[1])["mqtt"]["session_takeovers"]) >= 1

        assert wait_until(taken_over, 60)
        health = json.loads(subscriber.on("/health", live_only=True)[-1][1])["mqtt"]
        assert "session taken over" in health["last_error"] and "'edgepose-twin'" in health["last_error"]
        stderr = _stop(daemon)
    finally:
        subscriber.close()
        broker.stop()
    errors = [line for line in stderr.splitlines() if " ERROR " in line and "session taken over" in line]
    assert errors and "'edgepose-twin'" in errors[0]
