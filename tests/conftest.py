"""Shared fixtures: the real model (fetched through the real fetcher from the mirror), the test
photos with their ground truth, and a real mosquitto on a free loopback port."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgepose.localbroker import LocalBroker, broker_description, mosquitto_binary

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGEPOSE_SHARED_DIR", REPO.parent / "shared"))
POSE_DATA = SHARED / "testdata" / "pose"
MODEL_MIRROR = SHARED / "models"
LIGHTNING = "movenet_lightning_int8"
LIGHTNING_EDGETPU = "movenet_lightning_int8_edgetpu"


def pytest_report_header(config: pytest.Config) -> str:
    return f"MQTT broker for the tests: {broker_description()}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    # Also at the end, where `make test` (pytest -q) shows it: which broker this run really used.
    terminalreporter.write_line(f"MQTT broker for the tests: {broker_description()}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if mosquitto_binary() is not None:
        return
    skip = pytest.mark.skip(reason="needs MQTT v5; the embedded amqtt broker (no mosquitto installed) speaks 3.1.1")
    for item in items:
        if "needs_mqtt5" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config: pytest.Config) -> None:
    missing = [p for p in (POSE_DATA / "image1.png", MODEL_MIRROR) if not p.exists()]
    if missing:
        raise pytest.UsageError(f"test data not found: {missing}; set EDGEPOSE_SHARED_DIR to the shared/ directory")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models and demo photos fetched by the project's own fetcher from the local mirror."""
    from edgepose.models import fetch, load_manifest

    directory = tmp_path_factory.mktemp("models")
    manifest = load_manifest()
    fetch(
        [LIGHTNING, LIGHTNING_EDGETPU, *manifest.samples],
        directory,
        manifest,
        [MODEL_MIRROR, POSE_DATA],
        progress=lambda *_: None,
    )
    return directory


@pytest.fixture(scope="session")
def lightning_path(model_dir: Path) -> Path:
    from edgepose.models import load_manifest

    return model_dir / load_manifest().models[LIGHTNING].file


@dataclass(frozen=True)
class TruthImage:
    path: Path
    keypoints_px: np.ndarray  # (17, 2) x, y


@pytest.fixture(scope="session")
def truth_images() -> list[TruthImage]:
    with (POSE_DATA / "pose_landmark_truth.csv").open() as handle:
        rows = list(csv.reader(handle))[1:]
    names = ["image1.png", "image2.jpeg"]
    return [
        TruthImage(POSE_DATA / n, np.array(r, dtype=float).reshape(17, 2)) for n, r in zip(names, rows, strict=False)
    ]


class Broker(LocalBroker):
    """A real broker on a free loopback port (mosquitto, else the embedded amqtt), startable and
    stoppable by the test."""


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Any]:
    if mosquitto_binary() is None and broker_description().startswith("none"):
        pytest.fail("no MQTT broker: install mosquitto (.ci/run does) or amqtt (in the dev extra)")
    brokers: list[Broker] = []

    def make(start: bool = True) -> Broker:
        broker = Broker(workdir=tmp_path / f"broker{len(brokers)}")
        brokers.append(broker)
        if start:
            broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def broker(broker_factory: Any) -> Broker:
    created: Broker = broker_factory()
    return created


@dataclass
class Collector:
    """Subscribes to a broker and records (topic, payload, retain) in arrival order."""

    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self.lock:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))

    def on(self, suffix: str) -> list[bytes]:
        with self.lock:
            return [payload for topic, payload, _ in self.messages if topic.endswith(suffix)]

    def wait_for(self, suffix: str, count: int, timeout_s: float) -> list[bytes]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.on(suffix)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        return self.on(suffix)


@pytest.fixture
def subscribe() -> Iterator[Any]:
    clients: list[mqtt.Client] = []

    def make(broker: Broker, topic: str = "edgepose/#") -> Collector:
        collector = Collector()
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"test-{len(clients)}")
        client.on_message = collector.on_message
        subscribed = threading.Event()
        client.on_subscribe = lambda *args: subscribed.set()
        client.connect(broker.host, broker.port)
        client.subscribe(topic, qos=1)
        client.loop_start()
        if not subscribed.wait(5):
            raise RuntimeError("test subscriber could not subscribe")
        clients.append(client)
        return collector

    yield make
    for client in clients:
        client.disconnect()
        client.loop_stop()


def edgepose_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgepose", *args]


def edgepose_env(model_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["EDGEPOSE_MODEL_DIR"] = str(model_dir)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    env.update(extra)
    return env


def run_edgepose(
    *args: str, model_dir: Path, timeout_s: float = 120, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        edgepose_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=edgepose_env(model_dir, **env),
        cwd=cwd or tempfile.gettempdir(),
    )


def write_video(path: Path, frames: list[np.ndarray], fps: float = 15.0) -> Path:
    """Write RGB frames as an MJPG .avi (OpenCV's built-in codec: no ffmpeg needed)."""
    import cv2

    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened(), "OpenCV cannot write MJPG video"
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path
