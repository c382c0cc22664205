"""edgepose.client: the tracker's arithmetic (pure), topics, and the paho consumer against a real mosquitto."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgepose.client import DeviceState, FleetClient, FleetTracker, Subscription
from edgepose.errors import BrokerError
from edgepose.fleet.replay import photo_poses
from edgepose.mqtt.decode import KeypointsFrame, PayloadError, decode_keypoints
from edgepose.mqtt.payloads import PayloadFormat, keypoints_bytes
from tests.conftest import Broker, edgepose_command, run_edgepose
from tests.test_decode import assert_same_poses
from tests.test_payloads import _message


def _frame(device: str, seq: int, timestamp_s: float = 100.0) -> KeypointsFrame:
    return decode_keypoints(device, keypoints_bytes(_message(seq=seq, timestamp_s=timestamp_s), PayloadFormat.COMPACT))


def test_tracker_counts_gaps_duplicates_and_restarts() -> None:
    tracker = FleetTracker(clock=lambda: 200.0)
    for seq in [0, 1, 2, 5, 6, 6, 10]:  # 3, 4 and 7..9 lost; 6 delivered twice
        tracker.keypoints(_frame("a", seq), received_s=100.010)
    for seq in [0, 1, 0, 1, 2]:  # the daemon restarted: seq counts from 0 again, no loss
        tracker.keypoints(_frame("b", seq), received_s=100.030)
    summary = tracker.summary()
    assert summary["received"] == 12 and summary["devices_seen"] == 2
    assert summary["seq_gaps"] == 5
    assert summary["devices"]["a"]["seq_gaps"] == 5 and summary["devices"]["b"]["seq_gaps"] == 0
    assert summary["duplicates"] == 1 and summary["restarts"] == 1
    # receive time - capture timestamp: 7 messages 10 ms late, 5 messages 30 ms late.
    assert summary["latency_ms"]["p50"] == pytest.approx(10.0, abs=0.01)
    assert summary["latency_ms"]["max"] == pytest.approx(30.0, abs=0.01)


def test_shared_member_does_not_count_gaps() -> None:
    tracker = FleetTracker(shared=True)
    for seq in [0, 2, 4, 6]:  # the other member of the group got the odd ones
        tracker.keypoints(_frame("a", seq), received_s=100.0)
    assert tracker.summary()["seq_gaps"] is None
    assert tracker.devices()[0].seq_gaps is None


def test_states_follow_status_and_keypoints() -> None:
    tracker = FleetTracker()
    tracker.status("a", "online", 1.0)
    tracker.keypoints(_frame("b", 0), 1.0)  # keypoints before any status: online
    tracker.status("c", "online", 1.0)
    tracker.status("c", "offline", 2.0)
    states = {v.device_id: v.state for v in tracker.devices()}
    assert states == {"a": DeviceState.ONLINE, "b": DeviceState.ONLINE, "c": DeviceState.OFFLINE}
    assert tracker.summary()["devices_seen"] == 1  # only b sent keypoints


def test_invalid_messages_are_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    tracker = FleetTracker()
    for _ in range(3):
        tracker.invalid("a", PayloadError("a: keypoints payload is not JSON"), 1.0)
    assert tracker.summary()["invalid"] == 3
    assert sum("invalid keypoints message" in r.message for r in caplog.records) == 1


def test_subscription_filters() -> None:
    assert Subscription().filters() == [
        ("edgepose/+/keypoints", 0),
        ("edgepose/+/status", 1),
        ("edgepose/+/health", 1),
    ]
    shared = Subscription("site/gym", "cam-1", "analytics").filters()
    assert shared[0] == ("$share/analytics/site/gym/cam-1/keypoints", 0)
    assert shared[1] == ("site/gym/cam-1/status", 1)  # status is never shared: retained, every consumer needs it
    assert Subscription("site/gym").parse("site/gym/cam-1/keypoints") == ("cam-1", "keypoints")
    assert Subscription("site/gym").parse("other/cam-1/keypoints") is None
    for bad in ("", "a/b", "a+", "#"):
        with pytest.raises(ValueError):
            Subscription(share=bad)


class Collected:
    def __init__(self) -> None:
        self.frames: dict[str, KeypointsFrame] = {}
        self.statuses: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.event = threading.Event()

    def keypoints(self, frame: KeypointsFrame, received_s: float) -> None:
        self.frames[frame.device_id] = frame
        if len(self.frames) == 2:
            self.event.set()

    def status(self, device_id: str, text: str, received_s: float) -> None:
        self.statuses.append((device_id, text))

    def health(self, device_id: str, payload: bytes, received_s: float) -> None:
        pass

    def invalid(self, device_id: str, error: PayloadError, received_s: float) -> None:
        self.errors.append(str(error))


@pytest.mark.parametrize("protocol", [pytest.param("5", marks=pytest.mark.needs_mqtt5), "3.1.1"])
def test_compact_round_trips_through_the_broker_to_the_same_poses_as_json(broker: Broker, protocol: Any) -> None:
    handler = Collected()
    message = _message(poses=tuple(photo_poses()))
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-device")
    publisher.connect(broker.host, broker.port)
    publisher.loop_start()
    with FleetClient(broker.host, broker.port, Subscription(), handler, protocol=protocol):
        publisher.publish("edgepose/cam-json/keypoints", keypoints_bytes(message, PayloadFormat.JSON)).wait_for_publish(
            5
        )
        publisher.publish("edgepose/cam-kpc/keypoints", keypoints_bytes(message, PayloadFormat.COMPACT))
        publisher.publish("edgepose/cam-bad/keypoints", b'{"schema": "edgepose.kpc/1"}')
        assert handler.event.wait(5)
    publisher.loop_stop()
    as_json, as_compact = handler.frames["cam-json"], handler.frames["cam-kpc"]
    assert as_json.payload_format is PayloadFormat.JSON and as_compact.payload_format is PayloadFormat.COMPACT
    assert (as_json.seq, as_json.timestamp_s) == (as_compact.seq, as_compact.timestamp_s)
    assert_same_poses(as_json.poses, as_compact.poses)
    assert len(handler.errors) == 1 and "cam-bad: edgepose.kpc/1:" in handler.errors[0]


def test_unreachable_broker_is_one_clear_error(broker_factory: Any) -> None:
    stopped = broker_factory(start=False)
    client = FleetClient(stopped.host, stopped.port, Subscription(), FleetTracker())
    with pytest.raises(BrokerError, match=f"cannot connect to MQTT broker 127.0.0.1:{stopped.port}"):
        client.start(timeout_s=2)


@pytest.mark.needs_mqtt5  # FleetClient's default protocol
def test_a_device_that_dies_without_disconnecting_goes_offline(broker: Broker) -> None:
    """SIGKILL the simulator: no DISCONNECT, no `offline` of its own; the broker's Last Will tells us."""
    tracker = FleetTracker()
    with FleetClient(broker.host, broker.port, Subscription(), tracker):
        command = edgepose_command("fleet-sim", "--devices", "3", "--fps", "5", "--duration", "60")
        sim = subprocess.Popen(
            [*command, "--mqtt", f"{broker.host}:{broker.port}", "--id-prefix", "doomed"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            assert _wait(lambda: _states(tracker) == {DeviceState.ONLINE: 3} and tracker.summary()["received"] >= 6)
            os.killpg(sim.pid, signal.SIGKILL)
            sim.wait(5)
            assert _wait(lambda: _states(tracker) == {DeviceState.OFFLINE: 3}), _states(tracker)
        finally:
            if sim.poll() is None:
                os.killpg(sim.pid, signal.SIGKILL)
                sim.wait(5)
    # Mid-stream death, not a clean stop: the last seq it managed is far from the 300 it had planned.
    assert all(d["last_seq"] < 250 for d in tracker.summary()["devices"].values())


def _states(tracker: FleetTracker) -> dict[DeviceState, int]:
    counts: dict[DeviceState, int] = {}
    for view in tracker.devices():
        counts[view.state] = counts.get(view.state, 0) + 1
    return counts


def _wait(condition: Any, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


class Frames:
    """A FleetHandler that keeps every decoded frame."""

    def __init__(self) -> None:
        self.frames: list[KeypointsFrame] = []
        self.errors: list[str] = []

    def keypoints(self, frame: KeypointsFrame, received_s: float) -> None:
        self.frames.append(frame)

    def status(self, device_id: str, text: str, received_s: float) -> None:
        pass

    def health(self, device_id: str, payload: bytes, received_s: float) -> None:
        pass

    def invalid(self, device_id: str, error: PayloadError, received_s: float) -> None:
        self.errors.append(str(error))


@pytest.mark.needs_mqtt5  # FleetClient's default protocol
def test_daemon_publishes_compact_that_the_client_decodes(broker: Broker, model_dir: Any) -> None:
    handler = Frames()
    with FleetClient(broker.host, broker.port, Subscription(device_id="compact-demo"), handler):
        result = run_edgepose(
            *("run", "--max-frames", "12", "--set", "camera.source=demo", "--set", "publish.format=compact"),
            *("--set", f"mqtt.host={broker.host}", "--set", f"mqtt.port={broker.port}"),
            *("--set", "device_id=compact-demo"),
            model_dir=model_dir,
        )
        assert result.returncode == 0, result.stderr
        assert _wait(lambda: len(handler.frames) >= 12, timeout_s=5)
    assert not handler.errors
    assert [f.seq for f in handler.frames] == list(range(12))
    assert all(f.payload_format is PayloadFormat.COMPACT and f.size_bytes <= 300 for f in handler.frames)
    assert sum(1 for f in handler.frames if f.poses and f.poses[0].score > 0.3) >= 10  # the demo's people
