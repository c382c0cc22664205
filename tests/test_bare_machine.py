"""A machine with Python and nothing else: no mosquitto on PATH. `make run`'s script and the tests'
broker fall back to the embedded pure-Python broker (amqtt), and say so."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgepose.localbroker import LocalBroker, broker_description, free_port, mosquitto_binary
from tests.conftest import REPO
from tests.rundemo import run_demo


def _path_without_mosquitto() -> str:
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(d for d in dirs if d and not (Path(d) / "mosquitto").exists())


@pytest.fixture
def bare(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", _path_without_mosquitto())
    monkeypatch.setenv("EDGEPOSE_MOSQUITTO_DIRS", "")


def _connect(
    port: int, protocol: int = mqtt.MQTTv311
) -> tuple[mqtt.Client, list[tuple[str, bytes, bool]], list[object]]:
    received: list[tuple[str, bytes, bool]] = []
    connacks: list[object] = []
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"t-{time.monotonic_ns()}", protocol=protocol
    )
    client.on_message = lambda c, u, m: received.append((m.topic, bytes(m.payload), bool(m.retain)))
    client.on_connect = lambda c, u, f, reason, p: connacks.append(reason)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client, received, connacks


def _wait(predicate: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_without_mosquitto_the_tests_broker_is_the_embedded_one(bare: None, tmp_path: Path) -> None:
    assert mosquitto_binary() is None
    assert broker_description().startswith("embedded amqtt")
    with LocalBroker(workdir=tmp_path) as broker:
        assert broker.embedded
        publisher, _, _ = _connect(broker.port)
        publisher.publish("edgepose/t/status", b"online", qos=1, retain=True).wait_for_publish(5)
        subscriber, received, _ = _connect(broker.port)
        subscriber.subscribe("edgepose/#", qos=1)
        assert _wait(lambda: ("edgepose/t/status", b"online", True) in received, 5), received
        publisher.publish("edgepose/t/keypoints", b"{}", qos=0)
        assert _wait(lambda: ("edgepose/t/keypoints", b"{}", False) in received, 5), received
        # MQTT v5 is refused cleanly (the tests that need it are skipped under this broker).
        v5, _, connacks = _connect(broker.port, mqtt.MQTTv5)
        assert _wait(lambda: bool(connacks), 5)
        assert getattr(connacks[0], "is_failure", False)
        for client in (publisher, subscriber, v5):
            client.disconnect()
            client.loop_stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", broker.port), timeout=1).close()


def test_make_run_without_mosquitto_uses_the_embedded_broker(bare: None, model_dir: Path) -> None:
    """scripts/run_demo.sh as `make run` calls it, on a PATH without mosquitto: keypoints arrive."""
    port = free_port()
    with run_demo(model_dir, port, free_port()) as demo:
        assert _wait(lambda: any("started the embedded MQTT broker" in line for line in demo.lines), 30), demo.output
        subscriber, received, _ = _connect(port)
        subscriber.subscribe("edgepose/+/keypoints", qos=0)
        assert _wait(lambda: len(received) >= 5, 90), "no keypoints through the embedded broker:\n" + demo.output
        subscriber.disconnect()
        subscriber.loop_stop()
    assert demo.process.returncode == 0, demo.output
    assert "Traceback" not in demo.output
    assert _wait(lambda: _closed(port), 10), "the embedded broker outlived make run"


def _closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return True
    return False


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (.ci/run installs it)")
def test_run_demo_script_is_shellcheck_clean() -> None:
    result = subprocess.run(["shellcheck", "-x", "scripts/run_demo.sh"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
