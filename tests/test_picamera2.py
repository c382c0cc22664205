"""The picamera2 adapter against a stand-in that mirrors picamera2 and libcamera (tests/fakes/picamera2_fake.py)."""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from edgepose.config import CameraConfig
from edgepose.errors import SourceError
from edgepose.health import PipelineStats
from edgepose.inference.movenet import SinglePoseEstimator
from edgepose.inference.runtime import TensorSpec
from edgepose.inference.stage import SinglePoseStage
from edgepose.pipeline import END_OF_STREAM, CaptureLoop, EndOfStream, Invoked, LatestFrameSlot, PublishLoop
from edgepose.pose import CropBox
from edgepose.sources import factory
from edgepose.sources import picamera2 as picamera2_adapter
from edgepose.sources.base import Frame
from edgepose.sources.opencv import CaptureDeviceSource
from edgepose.sources.picamera2 import (
    MAIN_FORMAT,
    MIN_PICAMERA2,
    PICAMERA2_HINT,
    ClockSample,
    Picamera2Source,
    frames_between,
    load_picamera2,
    sensor_stamps,
)
from tests.fakes.picamera2_fake import (
    NEWEST,
    RELEASES,
    FakeCameraSystem,
    Picamera2,
    frame_index,
    imx708_info,
    make_modules,
    wait_until,
)

RED = (255, 0, 0)
BLUE = (0, 0, 255)


@pytest.fixture
def system() -> FakeCameraSystem:
    return FakeCameraSystem()


def install(monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem, release: str = NEWEST) -> None:
    picamera2_module, libcamera_module = make_modules(system, release)
    monkeypatch.setitem(sys.modules, "picamera2", picamera2_module)
    monkeypatch.setitem(sys.modules, "libcamera", libcamera_module)


def make_source(
    monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem, release: str = NEWEST, **camera: Any
) -> Picamera2Source:
    """Built through the factory, as the daemon builds it for `camera.source: picamera2`."""
    install(monkeypatch, system, release)
    fields: dict[str, Any] = {"width": 64, "height": 48, "fps": 50.0} | camera
    source = factory.open_source(CameraConfig(source="picamera2", **fields))
    assert isinstance(source, Picamera2Source)
    return source


def opened(source: Picamera2Source, system: FakeCameraSystem) -> Picamera2:
    source.open()
    return system.instances[-1]


def split_scene(width_px: int, height_px: int, left: tuple[int, int, int], right: tuple[int, int, int]) -> np.ndarray:
    scene = np.empty((height_px, width_px, 3), np.uint8)
    scene[:, : width_px // 2] = left
    scene[:, width_px // 2 :] = right
    return scene


def all_released(system: FakeCameraSystem) -> bool:
    return all(request.ref_count == 0 for request in system.handed_out)


def sleep_into_frame(camera: Picamera2, frames: float) -> None:
    """Sleep until `frames` frame durations after the camera started: mid-frame, away from completions."""
    target_ns = camera._start_ns + round(frames * camera._frame_ns)
    time.sleep(max(0.0, (target_ns - time.monotonic_ns()) / 1e9))


def sleep_to_next_mid_frame(camera: Picamera2) -> None:
    elapsed_frames = (time.monotonic_ns() - camera._start_ns) // camera._frame_ns
    sleep_into_frame(camera, elapsed_frames + 1.5)


def index_of(frame: Frame, camera: Picamera2) -> int:
    return frame_index(round(frame.monotonic_s * 1e9), camera)


class RecordingBackend:
    """A MoveNet-shaped InferenceBackend that keeps every input tensor it is given."""

    kind = "cpu"

    def __init__(self) -> None:
        self.input_spec = TensorSpec(0, "input", (1, 192, 192, 3), np.dtype(np.uint8), 0.0, 0)
        self.output_specs = [TensorSpec(1, "keypoints", (1, 1, 17, 3), np.dtype(np.float32), 0.0, 0)]
        self.inputs: list[np.ndarray] = []

    def invoke(self, input_tensor: np.ndarray) -> list[np.ndarray]:
        self.inputs.append(input_tensor.copy())
        return [np.zeros((1, 1, 17, 3), np.float32)]

    def resize_input(self, shape: tuple[int, ...]) -> None:
        pass

    def close(self) -> None:
        pass


class RecordingPublisher:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, float]] = []

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool = False,
        expiry_s: float | None = None,
        on_delivery: Callable[[bool], None] | None = None,
    ) -> bool:
        self.messages.append((topic, payload, time.monotonic()))
        if on_delivery is not None:
            on_delivery(True)
        return True


# -- 1. channel order -------------------------------------------------------------------------


def test_red_scene_arrives_with_red_in_channel_0(monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem) -> None:
    system.scene_rgb = RED
    source = make_source(monkeypatch, system)
    camera = opened(source, system)
    frame = source.read()
    assert camera.configured_with is not None and camera.configured_with["main"]["format"] == MAIN_FORMAT == "BGR888"
    assert frame.image.dtype == np.uint8 and frame.image.shape == (48, 64, 3)
    assert frame.image.flags.c_contiguous
    assert (frame.image[..., 0] == 255).all() and (frame.image[..., 1:] == 0).all()
    source.close()


@pytest.mark.parametrize(
    ("fmt", "outcome"),
    [("BGR888", [255, 0, 0]), ("RGB888", [0, 0, 255]), ("XBGR8888", "expected an HxWx3"), ("XRGB8888", "HxWx3")],
)
def test_a_wrong_format_choice_would_show(
    monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem, fmt: str, outcome: list[int] | str
) -> None:
    """The adapter with each picamera2 RGB format: only its own "BGR888" hands on red as R,G,B.

    picamera2 names formats little-endian, so "RGB888" would swap red and blue, and the 4-byte formats are
    refused by the adapter's shape check rather than passed on with an alpha channel.
    """
    monkeypatch.setattr(picamera2_adapter, "MAIN_FORMAT", fmt)
    system.scene_rgb = RED
    source = make_source(monkeypatch, system)
    source.open()
    try:
        if isinstance(outcome, str):
            with pytest.raises(SourceError, match=outcome):
                source.read()
        else:
            assert source.read().image[0, 0].tolist() == outcome
    finally:
        source.close()
    assert all_released(system)


def test_rgb_reaches_the_model_input(monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem) -> None:
    """Through the real estimator preprocessing: red on the left of the scene is red on the left of the input."""
    system.scene_rgb = split_scene(64, 48, RED, BLUE)
    source = make_source(monkeypatch, system)
    source.open()
    backend = RecordingBackend()
    stage = SinglePoseStage(SinglePoseEstimator(backend), "movenet_lightning_int8", 0.2)
    stage.process(source.read())
    source.close()
    (model_input,) = backend.inputs
    # 64x48 letterboxes to 192x144 at rows 24..168 of the 192x192 input.
    assert model_input[0, 96, 30].tolist() == [255, 0, 0]
    assert model_input[0, 96, 160].tolist() == [0, 0, 255]
    assert model_input[0, 5, 96].tolist() == [0, 0, 0]


# -- 2. freshness -----------------------------------------------------------------------------


def test_a_queued_frame_that_flush_lets_through_is_released_and_counted(
    monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem
) -> None:
    """flush goes by exposure start, a frame early: the adapter itself drops a frame read out before the call."""
    source = make_source(monkeypatch, system, fps=20.0, buffer_count=6)  # 50 ms frames, 5 ms exposure
    camera = opened(source, system)
    sleep_into_frame(camera, 4.2)  # frame 4 began read-out 10 ms ago, its exposure 15 ms ago
    system.backlog = 3  # the event loop fell behind: three completed frames are still waiting
    called_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    frame = source.read()
    first_seen = system.handed_out[0]._metadata["SensorTimestamp"]
    assert first_seen < called_ns  # flush let a frame read out before the call through...
    assert frame.monotonic_s * 1e9 >= called_ns - 1000  # ...and the adapter handed on a later one (float: 1 µs)
    assert source.frames_skipped == index_of(frame, camera) - frame_index(first_seen, camera) >= 1
    assert all_released(system)
    assert all(isinstance(call.flush, int) and call.flush < called_ns for call in system.captures)
    source.close()


def test_flush_discards_stale_frames_and_every_skipped_frame_is_counted(
    monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem
) -> None:
    source = make_source(monkeypatch, system)
    camera = opened(source, system)
    first = source.read()
    skipped_before = source.frames_skipped
    sleep_into_frame(camera, index_of(first, camera) + 6.5)
    system.backlog = 3
    recycled_before = system.frames_recycled
    called_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    second = source.read()
    never_handed_on = index_of(second, camera) - index_of(first, camera) - 1
    assert never_handed_on >= 5
    assert source.frames_skipped - skipped_before == never_handed_on
    assert system.frames_recycled > recycled_before  # picamera2's flush dropped them on its own thread
    assert system.handed_out[-1]._metadata["SensorTimestamp"] >= called_ns
    assert second.monotonic_s * 1e9 >= called_ns - 1000
    last_call = system.captures[-1]
    assert isinstance(last_call.flush, int) and last_call.flush <= called_ns
    assert isinstance(last_call.wait, float) and last_call.wait > 0
    assert all_released(system)
    source.close()


def test_a_frame_read_out_before_the_call_is_never_handed_on(
    monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem
) -> None:
    """With read-out plus ISP longer than a frame, the frame completing after the call still began before it."""
    system.latency_ms = 30.0  # frames every 20 ms complete 30 ms after their SensorTimestamp
    source = make_source(monkeypatch, system)
    camera = opened(source, system)
    for _ in range(5):
        sleep_to_next_mid_frame(camera)
        called_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        source.read()
        assert system.handed_out[-1]._metadata["SensorTimestamp"] >= called_ns
    assert source.frames_skipped >= 5
    assert all_released(system)
    source.close()


def test_many_reads_leak_no_request_and_frames_do_not_alias_camera_buffers(
    monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem
) -> None:
    system.scene_rgb = RED
    source = make_source(monkeypatch, system, buffer_count=2)
    source.open()
    first = source.read()
    system.scene_rgb = (0, 255, 0)
    frames = [source.read() for _ in range(10)]  # two buffers: each is reused (and overwritten) many times
    assert (first.image == RED).all()
    assert (frames[-1].image == (0, 255, 0)).all()
    assert [f.index for f in [first, *frames]] == list(range(11))
    assert all_released(system)
    source.close()


def test_row_padding_is_removed(monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem) -> None:
    system.scene_rgb = RED
    source = make_source(monkeypatch, system, width=100, height=20)  # 300-byte rows padded to 320
    camera = opened(source, system)
    frame = source.read()
    assert camera.camera_config is not None and camera.camera_config["main"]["stride"] == 320
    assert frame.image.shape == (20, 100, 3) and frame.image.flags.c_contiguous
    assert (frame.image == RED).all()
    source.close()


# -- 3. sensor timestamps ---------------------------------------------------------------------


def test_sensor_stamps_shift_both_clocks_by_the_frame_age() -> None:
    clocks = ClockSample(
        sensor_ns=86_400_000_000_000, wall_ns=1_700_000_000_000_000_000, monotonic_ns=86_400_000_500_000
    )
    wall_s, monotonic_s = sensor_stamps(86_400_000_000_000 - 25_000_000, clocks)
    assert wall_s == 1_699_999_999.975
    assert monotonic_s == 86_399.9755


def test_frames_between() -> None:
    assert frames_between(1_000, 1_010, 10) == 0  # the next frame
    assert frames_between(1_000, 1_040, 10) == 3
    assert frames_between(1_000, 1_042, 10) == 3  # jitter rounds away
    assert frames_between(1_000, 1_000, 10) == 0
    assert frames_between(1_040, 1_000, 10) == 0


def test_frame_stamps_come_from_sensor_timestamp(monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem) -> None:
    system.latency_ms = 15.0
    source = make_source(monkeypatch, system, fps=20.0)
    source.open()
    frame = source.read()
    returned_mono_s, returned_wall_s = time.monotonic(), time.time()
    sensor_ns = system.handed_out[-1]._metadata["SensorTimestamp"]
    # The fake's sensor clock is CLOCK_MONOTONIC, which is also time.monotonic()'s clock.
    assert frame.monotonic_s == sensor_ns / 1_000_000_000
    assert returned_mono_s - frame.monotonic_s >= 0.015
    assert frame.timestamp_s == pytest.approx(returned_wall_s - (returned_mono_s - frame.monotonic_s), abs=2e-3)
    source.close()


def test_capture_to_publish_is_measured_from_the_sensor(
    monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem
) -> None:
    """Through the real stage and publish loop: latency counts read-out and ISP time before read() returned."""
    system.latency_ms = 30.0
    source = make_source(monkeypatch, system, fps=20.0)
    source.open()
    frame = source.read()
    source.close()
    stats = PipelineStats()
    stage = SinglePoseStage(SinglePoseEstimator(RecordingBackend()), "movenet_lightning_int8", 0.2)
    prepared = stage.prepare(frame, stage.new_input())
    invoked: queue.Queue[Invoked | EndOfStream] = queue.Queue()
    invoked.put(Invoked(prepared, stage.invoke(prepared), 1.0))
    invoked.put(END_OF_STREAM)
    publisher = RecordingPublisher()
    PublishLoop(invoked, stage, publisher, "edgepose/pi/keypoints", 0, "pi", stats).run(threading.Event())
    ((_, payload_bytes, published_mono_s),) = publisher.messages
    payload = json.loads(payload_bytes)
    latency_ms = payload["latency_ms"]["capture_to_publish"]
    assert latency_ms >= 30.0
    assert latency_ms == pytest.approx((published_mono_s - frame.monotonic_s) * 1e3, abs=2.0)
    assert payload["timestamp"] == round(frame.timestamp_s, 3)


# -- 4. configuration -------------------------------------------------------------------------


# libcamera's name for each configured (hflip, vflip, rotation): a 180° rotation is both flips, so it
# cancels a configured flip (libcamera's transform.cpp: Rot180 == HFlip | VFlip).
EXPECTED_TRANSFORM = {
    (False, False, 0): "identity",
    (True, False, 0): "hflip",
    (False, True, 0): "vflip",
    (True, True, 0): "hvflip",
    (False, False, 180): "hvflip",
    (True, False, 180): "vflip",
    (False, True, 180): "hflip",
    (True, True, 180): "identity",
}


@pytest.mark.parametrize(("hflip", "vflip", "rotation"), list(EXPECTED_TRANSFORM))
def test_transform_combines_flips_and_rotation(
    monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem, hflip: bool, vflip: bool, rotation: int
) -> None:
    source = make_source(monkeypatch, system, hflip=hflip, vflip=vflip, rotation=rotation)
    camera = opened(source, system)
    source.close()
    assert camera.configured_with is not None
    configured = camera.configured_with["transform"]
    assert str(configured) == f"<libcamera.Transform '{EXPECTED_TRANSFORM[hflip, vflip, rotation]}'>"
    assert not configured.transpose


def test_configuration_carries_size_format_buffers_rate_and_camera_number(
    monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem
) -> None:
    system.cameras = [imx708_info(), dict(imx708_info(), Model="imx477", Id="/base/i2c@2/imx477@1a")]
    source = make_source(monkeypatch, system, width=320, height=240, fps=25.0, buffer_count=4, index=1)
    camera = opened(source, system)
    source.close()
    config = camera.configured_with
    assert config is not None
    assert camera.camera_idx == 1 and source.description == "picamera2 camera 1 (imx477)"
    assert config["main"]["size"] == (320, 240) and config["main"]["format"] == "BGR888"
    assert config["buffer_count"] == 4
    assert config["controls"]["FrameDurationLimits"] == (40000, 40000)
    assert config["queue"] is False
    assert config["use_case"] == "video"


@pytest.mark.parametrize(("hflip", "vflip", "rotation"), list(EXPECTED_TRANSFORM))
def test_flips_and_rotation_reach_the_image(
    monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem, hflip: bool, vflip: bool, rotation: int
) -> None:
    """A scene with a green top-left quadrant: where the green lands, worked out per configuration."""
    scene = split_scene(64, 48, RED, BLUE)
    scene[:24, :32] = (0, 255, 0)
    system.scene_rgb = scene
    source = make_source(monkeypatch, system, hflip=hflip, vflip=vflip, rotation=rotation)
    source.open()
    image = source.read().image
    source.close()
    mirrored_lr = hflip != (rotation == 180)
    mirrored_tb = vflip != (rotation == 180)
    green_row = -1 if mirrored_tb else 0
    green_col = -1 if mirrored_lr else 0
    assert image[green_row, green_col].tolist() == [0, 255, 0]
    # Below (or above) the green corner: the scene's bottom-left, red; across from it: the right half, blue.
    assert image[-1 - green_row, green_col].tolist() == list(RED)
    assert image[green_row, -1 - green_col].tolist() == list(BLUE)


def test_odd_sizes_are_evened_by_picamera2(monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem) -> None:
    source = make_source(monkeypatch, system, width=65, height=49)
    source.open()
    frame = source.read()
    source.close()
    assert (frame.width_px, frame.height_px) == (64, 48)


# -- 5. failures and reopening ----------------------------------------------------------------


def test_camera_error_during_capture_is_a_source_error(
    monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem
) -> None:
    source = make_source(monkeypatch, system)
    source.open()
    system.capture_errors.append(RuntimeError("Camera frontend has timed out!"))
    with pytest.raises(SourceError, match="Camera frontend has timed out"):
        source.read()
    source.close()


SUPPORTED = [name for name, release in RELEASES.items() if release.has_cancel_all_and_flush]
TOO_OLD = [name for name in RELEASES if name not in SUPPORTED]


@pytest.mark.parametrize("release", list(RELEASES))
def test_stalled_camera_times_out_as_a_source_error(
    monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem, release: str
) -> None:
    """On every picamera2 release: refused at open, or read() fails within its timeout and leaves no job queued.

    The fake blocks (raises AssertionError) where that release would block for ever, so an adapter that
    calls capture_request(wait=2.0) on 0.3.15-0.3.19, or does not cancel the timed-out job, fails here.
    """
    try:
        source = make_source(monkeypatch, system, release)
    except SourceError as refused:
        assert release in TOO_OLD and f"too old: edgepose needs picamera2 {MIN_PICAMERA2}" in str(refused)
        return
    camera = opened(source, system)
    source.read()
    system.stalled = True
    started_s = time.monotonic()
    with pytest.raises(SourceError, match=r"no frame within 2\.0s"):
        source.read()
    assert time.monotonic() - started_s < 2.5  # the adapter's timeout is 2 s at 50 fps
    # A job left on picamera2's list would take a later frame nobody releases, and hold up stop().
    assert camera._job_list == []
    system.stalled = False
    source.close()  # the fake's stop() fails the test if it would wait behind a queued job
    assert all_released(system) and system.open_cameras == []
    source.open()
    assert source.read().index == 0
    source.close()
    assert all_released(system)


@pytest.mark.parametrize("release", TOO_OLD)
def test_picamera2_older_than_0_3_20_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem, release: str
) -> None:
    """Before 0.3.20 a stalled camera hangs capture_request (a numeric wait only counts as True) or stop()."""
    with pytest.raises(SourceError) as caught:
        make_source(monkeypatch, system, release)
    message = str(caught.value)
    assert "\n" not in message
    assert "too old: edgepose needs picamera2 0.3.20 or newer" in message and MIN_PICAMERA2 == "0.3.20"
    assert "sudo apt install --only-upgrade python3-picamera2" in message
    assert system.instances == []  # refused before a camera was opened


@pytest.mark.parametrize("release", TOO_OLD)
def test_the_fake_hangs_where_the_old_release_hangs(system: FakeCameraSystem, release: str) -> None:
    """Why those releases are refused: the capture call the adapter makes never returns on a stalled camera.

    0.3.15-0.3.19 treat wait=2.0 as True and block; 0.3.14 has no `flush` at all.
    """
    picamera2_module, _ = make_modules(system, release)
    camera = picamera2_module.Picamera2()
    camera.configure(camera.create_video_configuration(main={"size": (64, 48), "format": "BGR888"}))
    camera.start()
    system.stalled = True
    if not RELEASES[release].has_flush:
        with pytest.raises(TypeError, match="flush"):
            camera.capture_request(wait=2.0, flush=1)
        return
    hang = rf"picamera2 {release}: capture_request\(wait=2\.0\) would block for ever"
    with pytest.raises(AssertionError, match=hang):
        camera.capture_request(wait=2.0, flush=1)
    if RELEASES[release].has_job_timeout:
        # 0.3.17's wait(job, timeout) does return, but leaves the job queued, and stop() waits behind it.
        job = camera.capture_request(wait=False)
        with pytest.raises(TimeoutError):
            camera.wait(job, timeout=0.1)
        with pytest.raises(AssertionError, match=r"stop\(\) would block for ever"):
            camera.stop()


def test_read_before_open_is_a_source_error(monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem) -> None:
    source = make_source(monkeypatch, system)
    with pytest.raises(SourceError, match="read before open"):
        source.read()


@pytest.mark.parametrize("index", [0, 1])
def test_missing_camera_fails_to_open_with_advice(
    monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem, index: int
) -> None:
    system.cameras = [] if index == 0 else [imx708_info()]
    source = make_source(monkeypatch, system, index=index)
    with pytest.raises(SourceError, match=f"picamera2 camera {index}: cannot open .*rpicam-hello --list-cameras"):
        source.open()


def test_close_stops_and_closes_and_tolerates_errors(monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem) -> None:
    source = make_source(monkeypatch, system)
    camera = opened(source, system)
    source.read()
    source.close()
    assert not camera.started and not camera.is_open
    source.close()  # a second close is harmless

    camera = opened(source, system)
    real_stop = camera.stop
    stop_calls: list[int] = []

    def stop_failing_once() -> None:
        stop_calls.append(1)
        if len(stop_calls) == 1:
            raise RuntimeError("stop failed")
        real_stop()

    monkeypatch.setattr(camera, "stop", stop_failing_once)
    source.close()
    assert not camera.is_open  # close() still ran after stop() failed
    assert system.open_cameras == []


def test_open_again_after_close(monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem) -> None:
    source = make_source(monkeypatch, system)
    source.open()
    assert source.read().index == 0
    source.close()
    source.open()
    frame = source.read()
    assert frame.index == 0
    assert len(system.instances) == 2 and len(system.open_cameras) == 1
    source.close()


def run_capture_loop(
    source: Picamera2Source, until: Any, timeout_s: float = 10.0
) -> tuple[PipelineStats, LatestFrameSlot, list[str | None]]:
    stats = PipelineStats()
    slot = LatestFrameSlot(stats)
    states: list[str | None] = []
    loop = CaptureLoop(source, slot, stats, reopen_backoff_max_s=2.0, on_state=states.append)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: until(stats, states), timeout_s), (states, stats.counters)
    finally:
        stop.set()
        thread.join(5.0)
    assert not thread.is_alive()
    return stats, slot, states


def test_capture_loop_reopens_after_a_capture_failure(
    monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem
) -> None:
    source = make_source(monkeypatch, system)
    source.open()
    system.capture_errors.append(RuntimeError("camera vanished"))
    captured_after: list[int] = []

    def recovered(stats: PipelineStats, states: list[str | None]) -> bool:
        if states[-1:] == [None] and not captured_after:
            captured_after.append(stats.counters.frames_captured)
        return bool(captured_after) and stats.counters.frames_captured >= captured_after[0] + 3

    stats, slot, states = run_capture_loop(source, recovered)
    assert states[0] is not None and "camera vanished" in states[0]
    assert states[-1] is None
    assert stats.counters.source_reopens >= 1 and stats.counters.frames_failed == 1
    assert isinstance(slot.get(0.1), Frame)
    assert len(system.open_cameras) == 1  # the failed camera was closed before reopening
    source.close()
    assert system.open_cameras == [] and all_released(system)


def test_capture_loop_stays_degraded_while_the_camera_is_gone(
    monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem
) -> None:
    source = make_source(monkeypatch, system)
    source.open()
    system.detach()

    def back(stats: PipelineStats, states: list[str | None]) -> bool:
        if stats.counters.frames_failed >= 2 and not system.cameras:
            system.reattach()  # a reopen has failed meanwhile; now the camera returns
        return states[-1:] == [None] and stats.counters.frames_captured >= 2

    stats, _, states = run_capture_loop(source, back)
    reasons = [state for state in states if state is not None]
    assert "no frame within" in reasons[0] and any("read before open" in reason for reason in reasons[1:])
    assert stats.counters.source_reopens >= 1
    source.close()


# -- 6. import errors and source selection ----------------------------------------------------


@pytest.mark.parametrize("missing", ["picamera2", "libcamera"])
def test_missing_picamera2_gives_the_fix(
    monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem, missing: str
) -> None:
    install(monkeypatch, system)
    monkeypatch.setitem(sys.modules, missing, None)  # import raises ImportError
    with pytest.raises(SourceError) as caught:
        load_picamera2()
    assert str(caught.value).startswith(PICAMERA2_HINT)
    assert "sudo apt install python3-picamera2" in str(caught.value) and "--system-site-packages" in str(caught.value)


def test_source_picamera2_without_picamera2_gives_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)
    with pytest.raises(SourceError) as caught:
        factory.open_source(CameraConfig(source="picamera2"))
    assert str(caught.value).startswith(PICAMERA2_HINT)


def test_auto_lists_what_was_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)
    monkeypatch.setattr(factory, "v4l2_devices", lambda: [])
    with pytest.raises(SourceError) as caught:
        factory.open_source(CameraConfig(source="auto"))
    message = str(caught.value)
    assert message.startswith("camera.source: auto found no camera; tried: ")
    assert PICAMERA2_HINT in message and "v4l2: no /dev/video* device" in message


def test_auto_picks_picamera2_when_a_camera_is_attached(
    monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem
) -> None:
    install(monkeypatch, system)
    assert isinstance(factory.open_source(CameraConfig(source="auto")), Picamera2Source)


def test_auto_skips_picamera2_without_a_camera(monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem) -> None:
    system.cameras = []
    install(monkeypatch, system)
    monkeypatch.setattr(factory, "v4l2_devices", lambda: ["/dev/video0"])
    assert isinstance(factory.open_source(CameraConfig(source="auto")), CaptureDeviceSource)
    monkeypatch.setattr(factory, "v4l2_devices", lambda: [])
    with pytest.raises(SourceError, match="picamera2: importable but no camera attached"):
        factory.open_source(CameraConfig(source="auto"))


# -- camera.isp_scale: the ISP's lores stream feeds the model when it sees the whole frame -------


def test_isp_scaled_lores_reaches_the_model_without_a_cpu_resize(
    monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem
) -> None:
    system.scene_rgb = split_scene(640, 480, RED, BLUE)
    install(monkeypatch, system)
    config = CameraConfig(source="picamera2", width=640, height=480, fps=50.0, isp_scale=True)
    source = factory.open_source(config, model_input_px=192)
    assert isinstance(source, Picamera2Source) and source.lores_size_px == (192, 144)
    camera = opened(source, system)
    assert camera.camera_config is not None
    lores = camera.camera_config["lores"]
    assert lores["size"] == (192, 144) and lores["format"] == "YUV420"
    frame = source.read()
    source.close()
    assert frame.image.shape == (480, 640, 3)
    assert frame.scaled is not None and frame.scaled.shape == (144, 192, 3)
    # I420 round trip: colours within a few levels of the scene.
    assert np.abs(frame.scaled[72, 40].astype(int) - RED).max() <= 8
    assert np.abs(frame.scaled[72, 150].astype(int) - BLUE).max() <= 8

    # The letterbox comes from the lores pixels as they are (no resize), with the box a resize would give.
    backend = RecordingBackend()
    estimator = SinglePoseEstimator(backend)
    tensor = estimator.new_input()
    box = estimator.prepare_into(frame.image, None, tensor, frame.scaled)
    assert box == estimator.prepare_into(frame.image, None, estimator.new_input())
    np.testing.assert_array_equal(tensor[0, 24:168], frame.scaled)
    assert not tensor[0, :24].any() and not tensor[0, 168:].any()
    # A smart-crop box is cut from the full-resolution frame instead.
    crop = CropBox(0.2, 0.2, 0.6, 0.5)
    assert estimator.prepare_into(frame.image, crop, tensor, frame.scaled) == estimator.prepare_into(
        frame.image, crop, estimator.new_input()
    )


def test_without_isp_scale_there_is_no_lores_stream(monkeypatch: pytest.MonkeyPatch, system: FakeCameraSystem) -> None:
    source = make_source(monkeypatch, system)
    camera = opened(source, system)
    assert camera.camera_config is not None and camera.camera_config["lores"] is None
    assert source.read().scaled is None
    source.close()
