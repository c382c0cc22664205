"""The daemon in this test process on a real mosquitto: start, reload, stop, and the parts' lifecycles.

Every part is wrapped so the test sees each one built and closed (exactly once); reloads that
fail in each order must leave the old parts running whole, and nothing edgepose started (threads,
child processes, file descriptors, shared memory) may outlive `run()`, whichever way it ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from edgepose import cli
from edgepose.config import Config
from edgepose.daemon import Daemon
from edgepose.errors import EXIT_OK, InputFileError, SourceError
from edgepose.inference import fallback
from edgepose.inference.backends import cpu_build, model_label
from edgepose.inference.fallback import FallbackBackend
from edgepose.inference.runtime import load_runtime, open_cpu_backend
from edgepose.inference.stage import build_stage
from edgepose.models import load_manifest, resolve_model
from edgepose.parts import MODEL, PARTS, Host, Inference, PartSpec, stage_mode
from tests.conftest import Broker, Collector, write_video
from tests.fakes.picamera2_fake import FakeCameraSystem, Picamera2
from tests.test_fallback import faulty_spec
from tests.test_picamera2 import install

DEVICE = "inproc"


def make_config(broker: Broker, model_dir: Path, **sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {
        "device_id": DEVICE,
        "camera": {"source": "synthetic:30"},
        "model": {"dir": str(model_dir), "num_threads": 1},
        "mqtt": {"host": broker.host, "port": broker.port},
        "health": {"interval_s": 0.3},
        "logging": {"status_interval_s": 0},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return Config.model_validate(data)


@dataclass
class Lifecycle:
    """Each part built (name, the part) and how often it was closed."""

    built: list[tuple[str, object]] = field(default_factory=list)
    closes: dict[int, int] = field(default_factory=dict)

    def instrument(self, specs: tuple[PartSpec, ...]) -> tuple[PartSpec, ...]:
        return tuple(replace(spec, build=self._counting(spec)) for spec in specs)

    def _counting(self, spec: PartSpec) -> Any:
        def build(config: Config, parts: Mapping[str, object], host: Host) -> contextlib.AbstractContextManager[object]:
            inner = spec.build(config, parts, host)

            @contextlib.contextmanager
            def counted() -> Iterator[object]:
                with inner as value:
                    self.built.append((spec.name, value))
                    self.closes[id(value)] = 0
                    try:
                        yield value
                    finally:
                        self.closes[id(value)] += 1

            return counted()

        return build

    def of(self, name: str) -> list[object]:
        return [value for part, value in self.built if part == name]

    def assert_each_closed_once(self) -> None:
        assert self.built, "no part was built"
        counts = {f"{name}#{index}": self.closes[id(value)] for index, (name, value) in enumerate(self.built)}
        assert all(count == 1 for count in counts.values()), counts


@dataclass
class Running:
    """A daemon whose run() goes on in a thread, with its parts' lifecycle and its reload source."""

    daemon: Daemon
    thread: threading.Thread
    result: list[Any]
    lifecycle: Lifecycle
    reloader: Reloader

    def reload(self, config: Config) -> None:
        self.reloader.reload(self.daemon, config)

    def stop(self, timeout_s: float = 15.0) -> Any:
        self.daemon.request_stop("test")
        return self.join(timeout_s)

    def join(self, timeout_s: float = 15.0) -> Any:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "run() did not return"
        return self.result[0]


def launch(config: Config, specs: tuple[PartSpec, ...] = PARTS, max_frames: int | None = None) -> Running:
    """Daemon.run() on a thread of this process, every part instrumented."""
    lifecycle = Lifecycle()
    reloader = Reloader(config)
    daemon = Daemon(config, max_frames=max_frames, reload_config=reloader, parts=lifecycle.instrument(specs))
    result: list[Any] = []

    def body() -> None:
        try:
            result.append(daemon.run())
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=body, name="test-daemon-run")
    thread.start()
    return Running(daemon, thread, result, lifecycle, reloader)


def wait_until(condition: Callable[[], object], timeout_s: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or condition}")


class Reloader:
    """The daemon's reload_config: returns whatever the test set last."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def __call__(self) -> Config:
        return self.config

    def reload(self, daemon: Daemon, config: Config) -> None:
        before = daemon.reloads
        self.config = config
        daemon.request_reload()
        wait_until(lambda: daemon.reloads > before, what="the reload")


def keypoints(collector: Collector) -> list[dict[str, Any]]:
    return [json.loads(p) for p in collector.on(f"{DEVICE}/keypoints")]


def last_health(collector: Collector) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(collector.on(f"{DEVICE}/health")[-1])
    return payload


def keypoints_keep_flowing(collector: Collector, count: int = 5) -> list[dict[str, Any]]:
    already = len(keypoints(collector))
    wait_until(lambda: len(keypoints(collector)) >= already + count, what=f"{count} more keypoints messages")
    return keypoints(collector)[already:]


# -- leak accounting: only what this test process created -------------------------------------------


@dataclass
class Resources:
    threads: set[int]
    fds: set[str]
    children: set[int]


def own_children() -> set[int]:
    """Child processes, but not Python's resource tracker (one per interpreter, for its lifetime)."""
    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" in " ".join(child.cmdline()):
                continue
        except psutil.ZombieProcess:
            pass  # an unreaped child is a leak too
        except psutil.NoSuchProcess:
            continue
        found.add(child.pid)
    return found


def resources() -> Resources:
    # Python's resource tracker (a process and a pipe) lives as long as this interpreter: start it first.
    resource_tracker.ensure_running()
    return Resources({t.ident or 0 for t in threading.enumerate()}, set(os.listdir("/proc/self/fd")), own_children())


@pytest.fixture
def created_segments(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the shared-memory blocks edgepose creates during the test."""
    names: list[str] = []

    class Recording(shared_memory.SharedMemory):
        def __init__(self, name: str | None = None, create: bool = False, size: int = 0) -> None:
            super().__init__(name=name, create=create, size=size)
            if create:
                names.append(self.name)

    monkeypatch.setattr(fallback, "SharedMemory", Recording)
    return names


def assert_nothing_left(before: Resources, segments: list[str]) -> None:
    def leftovers() -> tuple[set[str], set[str], set[int], list[str]]:
        now = resources()
        threads = {t.name for t in threading.enumerate() if (t.ident or 0) not in before.threads}
        fds = {fd for fd in now.fds - before.fds if os.path.exists(f"/proc/self/fd/{fd}")}
        shm = [name for name in segments if os.path.exists(f"/dev/shm/{name.lstrip('/')}")]
        return threads, fds, now.children - before.children, shm

    # Threads and children get a moment to be reaped; nothing should need more.
    deadline = time.monotonic() + 3.0
    while any(leftovers()) and time.monotonic() < deadline:
        time.sleep(0.05)
    threads, fds, children, shm = leftovers()
    described = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in fds if os.path.exists(f"/proc/self/fd/{fd}")}
    assert (threads, described, children, shm) == (set(), {}, set(), [])


# -- a model part on the EdgeTPU stand-in ------------------------------------------------------------


def fallback_model_part(flag: Path) -> PartSpec:
    """The model part on a FallbackBackend whose "EdgeTPU" is the fault-injecting worker of
    test_fallback: a real child process and real shared memory, with a flag file to break it."""

    def build(config: Config, parts: Mapping[str, object], host: Host) -> Inference:
        manifest = load_manifest()
        assert config.model.dir is not None
        model = resolve_model(config.model.name, config.model.dir, manifest)
        runtime = load_runtime()
        cpu = open_cpu_backend(model.path, runtime, 1)
        backend = FallbackBackend(faulty_spec(model.path, flag), cpu, 2.0, 60.0, warmup_timeout_s=5.0)
        label = model_label(cpu_build(model, manifest, config.model.dir))
        stage = build_stage(backend, label, config.model, stage_mode(config))
        return Inference(backend, stage, model, 1, "test: EdgeTPU stand-in")

    return replace(PARTS[0], build=build)


@pytest.fixture
def flag(tmp_path: Path) -> Path:
    path = tmp_path / "tpu-mode"
    path.write_text("ok")
    return path


# -- tests ------------------------------------------------------------------------------------------


def test_start_reload_stop_in_process(broker: Broker, subscribe: Any, model_dir: Path) -> None:
    collector = subscribe(broker)
    config = make_config(broker, model_dir)
    running = launch(config)
    daemon, lifecycle, reloader = running.daemon, running.lifecycle, running.reloader
    first = keypoints_keep_flowing(collector)
    assert first[0]["seq"] == 0 and first[0]["backend"] == "cpu"
    model, source, publisher = daemon.bundle.inference, daemon.bundle.source, daemon.bundle.publisher

    # Only the model section changes: a new model part, the same source and publisher.
    reloader.reload(daemon, make_config(broker, model_dir, model={"score_threshold": 0.3}))
    assert daemon.bundle.inference is not model
    assert daemon.bundle.source is source and daemon.bundle.publisher is publisher
    assert lifecycle.closes[id(model)] == 1 and lifecycle.closes[id(source)] == 0
    after = keypoints_keep_flowing(collector)
    assert after[0]["seq"] > first[-1]["seq"]  # seq keeps counting across the swap

    assert running.stop() == EXIT_OK
    lifecycle.assert_each_closed_once()
    assert [name for name, _ in lifecycle.built] == ["model", "source", "publisher", "web", "control", "model"]
    wait_until(lambda: collector.on(f"{DEVICE}/status")[-1:] == [b"offline"], what="status offline")


def test_reload_model_ok_camera_fails_keeps_old_parts(broker: Broker, subscribe: Any, model_dir: Path) -> None:
    collector = subscribe(broker)
    config = make_config(broker, model_dir)
    running = launch(config)
    daemon, lifecycle, reloader = running.daemon, running.lifecycle, running.reloader
    keypoints_keep_flowing(collector)
    old = daemon.bundle

    broken = make_config(
        broker, model_dir, model={"score_threshold": 0.3}, camera={"source": "file:/nonexistent/clip.mp4"}
    )
    reloader.reload(daemon, broken)
    new_model = lifecycle.of("model")[-1]
    assert new_model is not old.inference and lifecycle.closes[id(new_model)] == 1  # built, then closed
    assert daemon.bundle is old and daemon.config is config
    flowing = keypoints_keep_flowing(collector)
    assert all(message["model"] == flowing[0]["model"] for message in flowing)
    wait_until(lambda: "reload failed" in (last_health(collector)["state_reason"] or ""), what="health")
    health = last_health(collector)
    assert health["state"] == "degraded"
    assert "source: camera.source: video file not found: /nonexistent/clip.mp4" in health["state_reason"]

    # A valid reload afterwards applies, and clears the reason.
    reloader.reload(daemon, make_config(broker, model_dir, model={"score_threshold": 0.3}))
    assert daemon.bundle is not old and daemon.bundle.source is old.source
    wait_until(lambda: last_health(collector)["state"] == "running", what="health back to running")
    keypoints_keep_flowing(collector)
    assert running.stop() == EXIT_OK
    lifecycle.assert_each_closed_once()


def test_reload_model_fails_keeps_old_parts(broker: Broker, subscribe: Any, model_dir: Path) -> None:
    collector = subscribe(broker)
    config = make_config(broker, model_dir)
    running = launch(config)
    daemon, lifecycle, reloader = running.daemon, running.lifecycle, running.reloader
    keypoints_keep_flowing(collector)
    old = daemon.bundle

    reloader.reload(
        daemon, make_config(broker, model_dir, model={"name": "/nonexistent/m.tflite"}, camera={"width": 320})
    )
    assert daemon.bundle is old
    assert lifecycle.of("source") == [old.source]  # the camera was not even tried
    flowing = keypoints_keep_flowing(collector)
    assert {m["frame"]["width"] for m in flowing} == {640}
    wait_until(lambda: "reload failed" in (last_health(collector)["state_reason"] or ""), what="health")
    assert "model: " in last_health(collector)["state_reason"]
    assert "/nonexistent/m.tflite" in last_health(collector)["state_reason"]

    reloader.reload(daemon, make_config(broker, model_dir, camera={"width": 320}))
    assert daemon.bundle.inference is old.inference and daemon.bundle.source is not old.source
    wait_until(lambda: keypoints(collector)[-1]["frame"]["width"] == 320, what="the new camera size")
    assert running.stop() == EXIT_OK
    lifecycle.assert_each_closed_once()


def test_reload_model_fails_and_old_device_cannot_be_taken_back(
    broker: Broker, subscribe: Any, model_dir: Path, flag: Path, created_segments: list[str]
) -> None:
    """The running model holds a (stand-in) EdgeTPU; it lends it to the new model, the new model fails,
    and the device cannot be reopened: the old model keeps running on its CPU interpreter."""
    collector = subscribe(broker)
    before = resources()
    config = make_config(broker, model_dir)
    running = launch(config, (fallback_model_part(flag), *PARTS[1:]))
    daemon, lifecycle, reloader = running.daemon, running.lifecycle, running.reloader
    assert keypoints_keep_flowing(collector)[0]["backend"] == "edgetpu"
    old = daemon.bundle

    flag.write_text("noload")  # the device is gone: neither a new model nor the old one can open it
    reloader.reload(daemon, make_config(broker, model_dir, model={"name": "/nonexistent/m.tflite"}))
    assert daemon.bundle is old
    assert lifecycle.of(MODEL) == [old.inference]
    flowing = keypoints_keep_flowing(collector)
    assert flowing[-1]["backend"] == "cpu"
    wait_until(lambda: "re-probe failed" in (last_health(collector)["backend_reason"] or ""), what="health")
    health = last_health(collector)
    assert "reload failed" in health["state_reason"] and "/nonexistent/m.tflite" in health["state_reason"]
    assert "injected fault: cannot open the EdgeTPU" in health["backend_reason"]

    flag.write_text("ok")
    reloader.reload(daemon, make_config(broker, model_dir, model={"score_threshold": 0.3}))
    assert daemon.bundle.inference is not old.inference
    wait_until(lambda: keypoints(collector)[-1]["backend"] == "edgetpu", what="the new model on the EdgeTPU")
    assert running.stop() == EXIT_OK
    lifecycle.assert_each_closed_once()
    assert_nothing_left(before, created_segments)


def test_failure_while_building_closes_what_was_built(
    broker: Broker, model_dir: Path, flag: Path, created_segments: list[str]
) -> None:
    before = resources()
    config = make_config(broker, model_dir, camera={"source": "file:/nonexistent/clip.mp4"})
    running = launch(config, (fallback_model_part(flag), *PARTS[1:]))
    lifecycle = running.lifecycle
    assert isinstance(running.join(), InputFileError)
    assert [name for name, _ in lifecycle.built] == ["model"]
    lifecycle.assert_each_closed_once()
    assert created_segments, "the EdgeTPU stand-in should have created its shared memory"
    assert_nothing_left(before, created_segments)


@pytest.fixture
def short_video(tmp_path: Path) -> Path:
    frames = [np.full((240, 320, 3), 40 + 10 * i, np.uint8) for i in range(6)]
    return write_video(tmp_path / "short.avi", frames)


@pytest.mark.parametrize("ending", ["max_frames", "end_of_file", "stop_request"])
def test_nothing_outlives_run(
    broker: Broker, model_dir: Path, flag: Path, created_segments: list[str], short_video: Path, ending: str
) -> None:
    before = resources()
    camera = {"source": f"file:{short_video}", "loop": ending != "end_of_file"}
    config = make_config(broker, model_dir, camera=camera)
    running = launch(config, (fallback_model_part(flag), *PARTS[1:]), max_frames=4 if ending == "max_frames" else None)
    daemon, lifecycle = running.daemon, running.lifecycle
    if ending == "stop_request":
        wait_until(lambda: daemon.stats.counters.frames_inferred >= 3, what="frames inferred")
        assert running.stop() == EXIT_OK
    else:
        assert running.join(30.0) == EXIT_OK
    if ending == "max_frames":
        assert daemon.stats.counters.frames_inferred == 4
    lifecycle.assert_each_closed_once()
    assert_nothing_left(before, created_segments)


def test_sigterm_through_the_cli_in_process(
    broker: Broker, subscribe: Any, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`edgepose run` in this process: SIGTERM goes through the real handler to the one stop path."""
    collector = subscribe(broker)
    before = resources()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))  # cli.main installs its own stderr handler
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)

    def terminate_when_flowing() -> None:
        collector.wait_for(f"{DEVICE}/keypoints", 3, timeout_s=30)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate_when_flowing)
    killer.start()
    try:
        sets = [
            "camera.source=synthetic:30",
            f"model.dir={model_dir}",
            "model.num_threads=1",
            f"mqtt.host={broker.host}",
            f"mqtt.port={broker.port}",
            f"device_id={DEVICE}",
        ]
        code = cli.main(["run", "-c", "/dev/null", *[arg for s in sets for arg in ("--set", s)]])
    finally:
        killer.join()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert code == EXIT_OK
    assert len(collector.on(f"{DEVICE}/keypoints")) >= 3
    assert_nothing_left(before, [])


def test_reload_hands_the_camera_device_over_and_back(
    broker: Broker, subscribe: Any, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A camera opens once: the running one is closed while its replacement opens, and reopened when
    the replacement fails (model ok + camera fails, on the picamera2 stand-in)."""
    system = FakeCameraSystem()
    install(monkeypatch, system)
    open_at_construction: list[int] = []
    real_init = Picamera2.__init__

    def init(self: Picamera2, *args: Any, **kwargs: Any) -> None:
        open_at_construction.append(len(system.open_cameras))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(Picamera2, "__init__", init)
    collector = subscribe(broker)
    camera = {"source": "picamera2", "width": 64, "height": 48, "fps": 30.0}
    config = make_config(broker, model_dir, camera=camera)
    running = launch(config)
    daemon, lifecycle, reloader = running.daemon, running.lifecycle, running.reloader
    keypoints_keep_flowing(collector)
    old = daemon.bundle

    system.open_errors.append(RuntimeError("Camera __init__ sequence did not complete."))
    reloader.reload(
        daemon, make_config(broker, model_dir, model={"score_threshold": 0.3}, camera={**camera, "width": 96})
    )
    assert daemon.bundle is old
    flowing = keypoints_keep_flowing(collector)
    assert {m["frame"]["width"] for m in flowing} == {64}  # the old camera, reopened
    wait_until(lambda: "reload failed" in (last_health(collector)["state_reason"] or ""), what="health")
    assert "Camera __init__ sequence did not complete" in last_health(collector)["state_reason"]

    reloader.reload(daemon, make_config(broker, model_dir, camera={**camera, "width": 96}))
    assert daemon.bundle.source is not old.source
    wait_until(lambda: keypoints(collector)[-1]["frame"]["width"] == 96, what="the new camera size")
    assert running.stop() == EXIT_OK
    lifecycle.assert_each_closed_once()
    # Opened at start, tried once, reopened, replaced: never while another instance held the camera.
    assert open_at_construction == [0, 0, 0, 0], open_at_construction
    assert system.open_cameras == []


def test_reload_of_the_mqtt_section_ends_online(broker: Broker, subscribe: Any, model_dir: Path) -> None:
    """The same client id reconnects with new settings: the old session says `offline` first, the new
    one `online` after it, so the retained status a newcomer reads is `online`."""
    collector = subscribe(broker)
    config = make_config(broker, model_dir)
    running = launch(config)
    keypoints_keep_flowing(collector)
    old_publisher = running.daemon.bundle.publisher
    running.reload(make_config(broker, model_dir, mqtt={"keepalive_s": 20}))
    assert running.daemon.bundle.publisher is not old_publisher
    keypoints_keep_flowing(collector)
    time.sleep(0.5)  # any late `offline` of the old session would have arrived by now
    assert collector.on(f"{DEVICE}/status")[-1] == b"online"
    newcomer = subscribe(broker, f"edgepose/{DEVICE}/status")
    assert newcomer.wait_for(f"{DEVICE}/status", 1, timeout_s=5) == [b"online"]
    assert running.daemon.bundle.publisher.stats.connects == 1  # connected once, never kicked out
    assert running.stop() == EXIT_OK
    running.lifecycle.assert_each_closed_once()


def test_failed_reload_gives_the_broker_session_back(broker: Broker, subscribe: Any, model_dir: Path) -> None:
    """A part after the publisher (as a command handler will be) fails: the new publisher closes and
    the old one, which had said `offline` to make way, connects again and says `online`."""
    failing = {"on": False}

    def build_commands(config: Config, parts: Mapping[str, object], host: Host) -> contextlib.nullcontext[object]:
        if failing["on"]:
            raise SourceError("commands: cannot subscribe")
        return contextlib.nullcontext(object())  # a distinct part per build

    commands = PartSpec("commands", key=lambda c: c.device_id, needs=("publisher",), build=build_commands)
    collector = subscribe(broker)
    running = launch(make_config(broker, model_dir), (*PARTS, commands))
    keypoints_keep_flowing(collector)
    old = running.daemon.bundle

    failing["on"] = True
    running.reload(make_config(broker, model_dir, mqtt={"keepalive_s": 20}))
    assert running.daemon.bundle is old
    assert [name for name, _ in running.lifecycle.built].count("publisher") == 2  # the new one, closed again
    wait_until(lambda: collector.on(f"{DEVICE}/status")[-1:] == [b"online"], what="the old session back online")
    keypoints_keep_flowing(collector)
    wait_until(lambda: "reload failed" in (last_health(collector)["state_reason"] or ""), what="health")
    assert "commands: cannot subscribe" in last_health(collector)["state_reason"]

    failing["on"] = False
    running.reload(make_config(broker, model_dir, mqtt={"keepalive_s": 20}))
    assert running.daemon.bundle.publisher is not old.publisher
    keypoints_keep_flowing(collector)
    assert running.stop() == EXIT_OK
    running.lifecycle.assert_each_closed_once()
