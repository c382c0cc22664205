"""A stand-in for picamera2 and libcamera's Python bindings, installable as `picamera2` and `libcamera`.

It mirrors picamera2 0.3.x (picamera2/picamera2.py, picamera2/request.py, picamera2/job.py) and
libcamera's src/py/libcamera/py_transform.cpp with src/libcamera/transform.cpp: the same names and
signatures, the same configuration dict, the same metadata names and units, and the behaviour an
adapter depends on:

* Format names are little-endian DRM fourccs: "BGR888" stores a pixel as R,G,B, "RGB888" as B,G,R,
  "XBGR8888" as R,G,B,255 and "XRGB8888" as B,G,R,255. Rows are padded to `stride_align_bytes`.
* The sensor runs on its own clock from start(): frame k begins read-out at start + k * frame
  duration (SensorTimestamp, CLOCK_MONOTONIC ns) and completes `latency_ms` later.
* Between captures picamera2 recycles completed requests, keeping the newest one when the
  configuration says `queue=True` (and buffer_count > 1), none otherwise. `backlog` models an event
  loop that fell behind: that many completed requests are still waiting when the next capture runs.
* A capture is a job on picamera2's job list (dispatch_functions); the event loop runs the jobs in
  order, each taking the next completed request. A job whose wait timed out stays on the list and
  takes a later frame that nobody releases, and stop() (a job run after it) waits behind it, until
  cancel_all_and_flush() empties the list.
* capture_request(flush=ts) drops requests whose exposure began (SensorTimestamp - ExposureTime)
  before ts, as wait_for_timestamp_ does; flush=True means time.monotonic_ns().
* Each request holds one of `buffer_count` buffers until released; with all of them held, no frame
  can complete.
* make_buffer/make_array copy out of the buffer (the buffer is reused for a later frame) and strip
  the row padding.
* What changed between releases (`RELEASES`, read at each tag of github.com/raspberrypi/picamera2):
  `flush` arrived in 0.3.15; `Picamera2.wait(job, timeout)` and `Job.get_result(timeout)` in 0.3.17;
  a numeric `wait` as a timeout and `cancel_all_and_flush()` in 0.3.20 (commit ddd2ca3, "Improve
  handling of timeouts and cameras that stop responding"). Before 0.3.20 `dispatch_functions` does
  `job.get_result() if wait else job`: a number is only truthy, and the call blocks until a frame.

Time is not simulated for a stall: a wait that the fake knows can never be met raises at once,
a timed wait as the job future's TimeoutError, and an unbounded one (which would hang the real
picamera2 forever) as AssertionError, so that a test shows the hang instead of hanging. Tests steer
the camera through a `FakeCameraSystem`.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar

import cv2
import numpy as np

_HFLIP, _VFLIP, _TRANSPOSE = 1, 2, 4
_ROTATIONS = {0: 0, 90: _VFLIP | _TRANSPOSE, 180: _HFLIP | _VFLIP, 270: _HFLIP | _TRANSPOSE}
_NAMES = ("identity", "hflip", "vflip", "hvflip", "transpose", "rot270", "rot90", "rot180transpose")


class Transform:
    """libcamera.Transform: rotation, then hflip/vflip/transpose XOR-ed in, as the pybind11 constructor does."""

    def __init__(
        self, rotation: int | Transform = 0, hflip: bool = False, vflip: bool = False, transpose: bool = False
    ) -> None:
        if isinstance(rotation, Transform):  # the copy constructor
            self._bits = rotation._bits
            return
        angle = rotation % 360
        if angle not in _ROTATIONS:
            raise ValueError("Invalid rotation")  # pybind11 maps std::invalid_argument to ValueError
        bits = _ROTATIONS[angle]
        if hflip:
            bits ^= _HFLIP
        if vflip:
            bits ^= _VFLIP
        if transpose:
            bits ^= _TRANSPOSE
        self._bits = bits

    def _get(self, bit: int) -> bool:
        return bool(self._bits & bit)

    def _set(self, bit: int, on: bool) -> None:
        self._bits = self._bits | bit if on else self._bits & ~bit

    @property
    def hflip(self) -> bool:
        return self._get(_HFLIP)

    @hflip.setter
    def hflip(self, on: bool) -> None:
        self._set(_HFLIP, on)

    @property
    def vflip(self) -> bool:
        return self._get(_VFLIP)

    @vflip.setter
    def vflip(self, on: bool) -> None:
        self._set(_VFLIP, on)

    @property
    def transpose(self) -> bool:
        return self._get(_TRANSPOSE)

    @transpose.setter
    def transpose(self, on: bool) -> None:
        self._set(_TRANSPOSE, on)

    def __str__(self) -> str:
        return f"<libcamera.Transform '{_NAMES[self._bits]}'>"


class ColorSpace:
    """libcamera.ColorSpace, reduced to the named presets picamera2 uses."""

    def __init__(self, name: str) -> None:
        self.name = name

    @staticmethod
    def Sycc() -> ColorSpace:  # libcamera's CamelCase names
        return ColorSpace("sYCC")

    @staticmethod
    def Smpte170m() -> ColorSpace:
        return ColorSpace("SMPTE170M")

    @staticmethod
    def Rec709() -> ColorSpace:
        return ColorSpace("Rec709")

    @staticmethod
    def Raw() -> ColorSpace:
        return ColorSpace("RAW")

    def __repr__(self) -> str:
        return f"<libcamera.ColorSpace '{self.name}'>"


# Channel order in memory, and bytes per pixel, of the RGB formats picamera2 supports.
PIXEL_LAYOUTS: dict[str, tuple[str, int]] = {
    "BGR888": ("RGB", 3),
    "RGB888": ("BGR", 3),
    "XBGR8888": ("RGBX", 4),
    "XRGB8888": ("BGRX", 4),
}
_PADDING_BYTE = 0xAB  # stride padding, so a consumer that forgets the stride sees garbage


@dataclass(frozen=True)
class Release:
    """A picamera2 release, by what its capture_request path offers an adapter."""

    version: tuple[int, int, int]

    @property
    def name(self) -> str:
        return ".".join(str(part) for part in self.version)

    @property
    def has_flush(self) -> bool:
        return self.version >= (0, 3, 15)

    @property
    def has_job_timeout(self) -> bool:
        return self.version >= (0, 3, 17)

    @property
    def wait_number_is_timeout(self) -> bool:
        return self.version >= (0, 3, 20)

    @property
    def has_cancel_all_and_flush(self) -> bool:
        return self.version >= (0, 3, 20)


# One release from each span of the same behaviour, and the newest tag read.
_READ = ((0, 3, 14), (0, 3, 16), (0, 3, 19), (0, 3, 20), (0, 3, 36))
RELEASES = {release.name: release for release in (Release(version) for version in _READ)}
NEWEST = "0.3.36"


def imx708_info() -> dict[str, Any]:
    return {"Model": "imx708", "Location": 2, "Rotation": 180, "Id": "/base/soc/i2c0mux/i2c@1/imx708@1a"}


@dataclass
class FakeCameraSystem:
    """The world the fake camera sees, and the faults it suffers; shared by every Picamera2 instance."""

    cameras: list[dict[str, Any]] = field(default_factory=lambda: [imx708_info()])
    scene_rgb: tuple[int, int, int] | np.ndarray = (128, 128, 128)  # what the lens sees, R,G,B
    exposure_us: int = 5000
    latency_ms: float = 0.0  # from the start of read-out (SensorTimestamp) until the request completes
    stride_align_bytes: int = 64
    sensor_min_frame_duration_us: int = 8333  # the sensor mode's fastest frame rate: 120 fps
    backlog: int = 0  # completed requests still waiting when the next capture is dispatched
    stalled: bool = False  # frames stop arriving: cable pulled, sensor hung
    capture_errors: list[BaseException] = field(default_factory=list)  # raised by the next captures
    open_errors: list[BaseException] = field(default_factory=list)  # raised by the next Picamera2()
    instances: list[Picamera2] = field(default_factory=list)
    frames_recycled: int = 0  # completed frames returned to the camera without the application seeing them
    captures: list[CaptureCall] = field(default_factory=list)
    handed_out: list[CompletedRequest] = field(default_factory=list)  # every request capture_request returned

    def detach(self) -> None:
        """The camera vanishes: it is no longer listed and open cameras stop delivering."""
        self.cameras = []
        self.stalled = True

    def reattach(self) -> None:
        self.cameras = [imx708_info()]
        self.stalled = False

    @property
    def open_cameras(self) -> list[Picamera2]:
        return [camera for camera in self.instances if camera.is_open]

    def scene_for(self, width_px: int, height_px: int) -> np.ndarray:
        if isinstance(self.scene_rgb, np.ndarray):
            if self.scene_rgb.shape != (height_px, width_px, 3):
                raise AssertionError(f"scene {self.scene_rgb.shape} does not match the stream {width_px}x{height_px}")
            return self.scene_rgb
        return np.broadcast_to(np.array(self.scene_rgb, dtype=np.uint8), (height_px, width_px, 3))


@dataclass(frozen=True)
class CaptureCall:
    wait: Any
    flush: Any


class CompletedRequest:
    """picamera2.request.CompletedRequest: one frame's buffers and metadata, held until released."""

    def __init__(self, picam2: Picamera2, sequence: int, buffer_index: int, metadata: dict[str, Any]) -> None:
        self.picam2 = picam2
        self.request: Any = object()  # the libcamera request; None once recycled
        self.ref_count = 1
        self.config = dict(picam2.camera_config or {})
        self.stream_map = {
            "main": "main-stream",
            "lores": "lores-stream" if self.config.get("lores") else None,
            "raw": None,
        }
        self.sequence = sequence
        self._buffer_index = buffer_index
        self._metadata = metadata

    def acquire(self) -> None:
        if self.ref_count == 0:
            raise RuntimeError("CompletedRequest: acquiring lock with ref_count 0")
        self.ref_count += 1

    def release(self) -> None:
        self.ref_count -= 1
        if self.ref_count < 0:
            raise RuntimeError("CompletedRequest: lock now has negative ref_count")
        if self.ref_count == 0:
            self.picam2._return_buffer(self._buffer_index)
            self.request = None
            self.config = {}
            self.stream_map = {}

    def _check_live(self) -> None:
        if self.request is None:
            raise AssertionError("CompletedRequest used after release (its buffer may hold another frame)")

    def get_metadata(self) -> dict[str, Any]:
        self._check_live()
        return dict(self._metadata)

    def make_buffer(self, name: str) -> np.ndarray:
        self._check_live()
        if self.stream_map.get(name) is None:
            raise RuntimeError(f"Stream {name!r} is not defined")
        # np.array copies, as the real make_buffer does from the mmapped dma-buf.
        buffers = self.picam2._lores_buffers if name == "lores" else self.picam2._buffers
        return np.array(buffers[self._buffer_index], dtype=np.uint8)

    def make_array(self, name: str) -> np.ndarray:
        """Helpers.make_array for the RGB formats: reshape, dropping the padding at the end of each row.
        YUV420 comes back as picamera2 gives it: (height * 3/2, stride) rows, the planes one after another."""
        array = self.make_buffer(name)
        config = self.config[name]
        if config["format"] == "YUV420":
            width_px, height_px = config["size"]
            return array.reshape((height_px * 3 // 2, config["stride"]))
        width_px, height_px = config["size"]
        stride = config["stride"]
        bytes_per_px = PIXEL_LAYOUTS[config["format"]][1]
        if stride != width_px * bytes_per_px:
            array = array.reshape((height_px, stride))
            array = np.asarray(array[:, : width_px * bytes_per_px], order="C")
        return array.reshape((height_px, width_px, bytes_per_px))


class CaptureJob:
    """picamera2.job.Job for capture_request: [wait_for_timestamp_(flush), capture_request_]."""

    def __init__(self, flush: int | None) -> None:
        self.flush = flush
        self._future: concurrent.futures.Future[CompletedRequest] = concurrent.futures.Future()
        self._future.set_running_or_notify_cancel()

    def done(self) -> bool:
        return self._future.done()

    def get_result(self, timeout: float | None = None) -> CompletedRequest:
        return self._future.result(timeout=timeout)

    def cancel(self) -> None:
        """As Job.cancel (0.3.20): asking for the result now raises CancelledError."""
        self._future.set_exception(concurrent.futures.CancelledError())


class Picamera2:
    """picamera2.Picamera2 with a simulated sensor; `system` and `release` are bound by make_modules()."""

    system: ClassVar[FakeCameraSystem]
    release: ClassVar[Release] = RELEASES[NEWEST]

    @classmethod
    def global_camera_info(cls) -> list[dict[str, Any]]:
        # A staticmethod in picamera2; called the same way.
        return [dict(info, Num=number) for number, info in enumerate(cls.system.cameras)]

    def __init__(
        self, camera_num: int = 0, verbose_console: Any = None, tuning: Any = None, allocator: Any = None
    ) -> None:
        self.is_open = False
        self.started = False
        self.camera_config: dict[str, Any] | None = None
        system = self.system
        if system.open_errors:
            raise system.open_errors.pop(0)
        info = self.global_camera_info()[camera_num]  # IndexError for a camera not attached, as picamera2
        self.camera_idx = info["Num"]
        self.camera_properties = {"Model": info["Model"], "Location": info["Location"], "Rotation": info["Rotation"]}
        self.sensor_resolution = (4608, 2592)
        self.sensor_format = "SRGGB10_CSI2P"
        self.configure_count = 0
        self.stop_count = 0
        self.configured_with: dict[str, Any] | None = None  # what the application passed to configure()
        self._lock = threading.Lock()
        self._buffers: list[np.ndarray] = []
        self._free_buffers: list[int] = []
        self._completed: list[CompletedRequest] = []
        self._job_list: list[CaptureJob] = []
        self._start_ns = 0
        self._next_sequence = 0
        self._frame_ns = 0
        self.is_open = True
        system.instances.append(self)

    # -- configuration -------------------------------------------------------------------------

    @staticmethod
    def _stream(defaults: dict[str, Any], updates: dict[str, Any] | None) -> dict[str, Any] | None:
        if updates is None:
            return None
        valid = ("format", "size", "stride", "preserve_ar")
        stream = dict(defaults)
        for key, value in updates.items():
            if key not in valid:
                raise ValueError(f"Bad key {key!r}: valid stream configuration keys are {valid}")
            stream[key] = value
        return stream

    @staticmethod
    def align_stream(stream_config: dict[str, Any], optimal: bool = True) -> None:
        align = 32 if optimal else 2
        width, height = stream_config["size"]
        stream_config["size"] = (width - width % align, height - height % 2)

    def create_video_configuration(
        self,
        main: dict[str, Any] = {},  # noqa: B006 - picamera2's own signature
        lores: dict[str, Any] | None = None,
        raw: dict[str, Any] | None = {},  # noqa: B006
        transform: Transform = Transform(),  # noqa: B008
        colour_space: ColorSpace | None = None,
        buffer_count: int = 6,
        controls: dict[str, Any] = {},  # noqa: B006
        display: str | None = "main",
        encode: str | None = "main",
        queue: bool = True,
        sensor: dict[str, Any] = {},  # noqa: B006
        use_case: str = "video",
    ) -> dict[str, Any]:
        if not self.is_open:
            raise RuntimeError("Camera not opened")
        main_stream = self._stream({"format": "XBGR8888", "size": (1280, 720), "preserve_ar": True}, main)
        assert main_stream is not None
        self.align_stream(main_stream, optimal=False)
        lores_stream = self._stream({"format": "YUV420", "size": main_stream["size"], "preserve_ar": False}, lores)
        raw_stream = self._stream({"format": self.sensor_format, "size": main_stream["size"]}, raw)
        if colour_space is None:
            width, height = main_stream["size"]
            colour_space = ColorSpace.Smpte170m() if width < 1280 or height < 720 else ColorSpace.Rec709()
        return {
            "use_case": use_case,
            "transform": transform,
            "colour_space": colour_space,
            "buffer_count": buffer_count,
            "queue": queue,
            "main": main_stream,
            "lores": lores_stream,
            "raw": raw_stream,
            "controls": {"NoiseReductionMode": 1, "FrameDurationLimits": (33333, 33333)} | controls,
            "sensor": sensor,
            "display": display,
            "encode": encode,
        }

    def configure(self, camera_config: dict[str, Any] | None = None) -> None:
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        if camera_config is None:
            raise AssertionError("the fake only models explicit configurations")
        self.configured_with = camera_config
        config = {key: (dict(value) if isinstance(value, dict) else value) for key, value in camera_config.items()}
        if not isinstance(config["transform"], Transform):
            raise RuntimeError("Transform has incorrect type")
        main = config["main"]
        fmt = main["format"]
        if fmt not in PIXEL_LAYOUTS:
            raise RuntimeError(f"Bad format {fmt} in stream main (the fake models RGB formats only)")
        size = main["size"]
        if not isinstance(size, tuple) or len(size) != 2:
            raise RuntimeError("size in main stream should be (width, height)")
        if size[0] % 2 or size[1] % 2:
            raise RuntimeError("width and height should be even")
        align = self.system.stride_align_bytes
        row_bytes = size[0] * PIXEL_LAYOUTS[fmt][1]
        main["stride"] = -(-row_bytes // align) * align
        main["framesize"] = main["stride"] * size[1]
        limits = config["controls"].get("FrameDurationLimits", (33333, 33333))
        # libcamera clips the requested frame duration to what the sensor mode can do.
        self._frame_ns = max(int(limits[0]), self.system.sensor_min_frame_duration_us) * 1000
        count = int(config["buffer_count"])
        self._buffers = [np.full(main["framesize"], _PADDING_BYTE, dtype=np.uint8) for _ in range(count)]
        lores = config.get("lores")
        if lores is not None:
            # The Pi 4 ISP: lores is YUV420 only, no larger than main; rows aligned to 64 bytes.
            if lores["format"] != "YUV420":
                raise RuntimeError(f"lores stream must be YUV420 on this platform, not {lores['format']}")
            width, height = lores["size"]
            if width > size[0] or height > size[1] or width % 2 or height % 2:
                raise RuntimeError(f"lores size {lores['size']} must be even and no larger than main {size}")
            lores["stride"] = -(-width // 64) * 64
            lores["framesize"] = lores["stride"] * height * 3 // 2
        self._lores_buffers = [np.zeros(lores["framesize"] if lores else 0, np.uint8) for _ in range(count)]
        self._free_buffers = list(range(count))
        self.camera_config = config
        self.configure_count += 1

    def camera_configuration(self) -> dict[str, Any] | None:
        return self.camera_config

    # -- running -------------------------------------------------------------------------------

    def start(self, config: dict[str, Any] | None = None, show_preview: bool | None = False) -> None:
        if config is not None:
            self.configure(config)
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        if self.started:
            return
        self._start_ns = time.monotonic_ns()
        self._next_sequence = 0
        self.started = True

    def stop(self) -> None:
        if not self.started:
            return
        with self._lock:
            # The event loop runs stop_ as a job after the ones already queued (dispatch_functions with
            # wait=True): a capture job that never gets a frame holds it up for ever.
            self._run_jobs_until(lambda: not self._job_list, None, "stop()")
            self.started = False
            self.stop_count += 1
            while self._completed:
                self._completed.pop(0).release()
                self.system.frames_recycled += 1

    def close(self) -> None:
        if not self.is_open:
            return
        self.stop()
        self.is_open = False
        self.camera_config = None

    def cancel_all_and_flush(self) -> None:
        """0.3.20: cancel every queued job and empty the job list."""
        with self._lock:
            for job in self._job_list:
                job.cancel()
            self._job_list = []

    def capture_request(self, wait: Any = None, signal_function: Any = None, flush: Any = None) -> Any:
        """The next completed request (or, with wait=False, the job that will get it).

        With `flush`, the first request whose exposure began at or after it.
        """
        self.system.captures.append(CaptureCall(wait, flush))
        if signal_function is not None:
            raise AssertionError("the fake does not model signal functions")
        if flush is True:
            flush = time.monotonic_ns()
        if not self.is_open:
            raise RuntimeError("Camera is not open")
        if self.system.capture_errors:
            raise self.system.capture_errors.pop(0)
        job = CaptureJob(flush)
        with self._lock:
            self._collect(keep=self._max_queue_len() + self.system.backlog)
            self.system.backlog = 0
            self._job_list.append(job)
        if wait is None:
            wait = True
        if not wait:
            return job
        if wait is True or not self.release.wait_number_is_timeout:
            # Before 0.3.20: `job.get_result() if wait else job`; a number of seconds is just truthy.
            return self._wait(job, None, f"capture_request(wait={wait!r})")
        return self._wait(job, float(wait), "capture_request")

    def wait(self, job: CaptureJob, timeout: float | None = None) -> CompletedRequest:
        """0.3.17: the job's result, waiting at most `timeout` seconds (None: as long as it takes)."""
        return self._wait(job, timeout, f"wait(job, timeout={timeout!r})")

    def _wait(self, job: CaptureJob, timeout_s: float | None, what: str) -> CompletedRequest:
        deadline_ns = None if timeout_s is None else time.monotonic_ns() + round(timeout_s * 1e9)
        with self._lock:
            self._run_jobs_until(job.done, deadline_ns, what)
        return job.get_result(timeout=0)

    def _run_jobs_until(self, finished: Callable[[], bool], deadline_ns: int | None, what: str) -> None:
        """The event loop: hand completed requests to the queued jobs, in order, until `finished()`."""
        while True:
            self._run_jobs()
            if finished():
                return
            self._wait_for_next_frame(deadline_ns, what)

    def _run_jobs(self) -> None:
        while self._job_list and self._completed:
            job = self._job_list[0]
            request = self._completed.pop(0)
            if job.flush and _exposure_start_ns(request) < job.flush:
                request.release()
                self.system.frames_recycled += 1
                continue
            self._job_list.pop(0)
            self._trim(self._max_queue_len())
            self.system.handed_out.append(request)
            job._future.set_result(request)

    # -- the simulated sensor ------------------------------------------------------------------

    def _max_queue_len(self) -> int:
        config = self.camera_config or {}
        return 1 if config.get("queue") and config.get("buffer_count", 0) > 1 else 0

    def _completion_ns(self, sequence: int) -> int:
        return self._start_ns + sequence * self._frame_ns + round(self.system.latency_ms * 1e6)

    def _collect(self, keep: int) -> None:
        """Frames that completed while nobody asked: picamera2 recycles all but the newest `keep`."""
        if not self.started or self.system.stalled:
            return
        now_ns = time.monotonic_ns()
        while self._completion_ns(self._next_sequence) <= now_ns:
            self._complete_next()
            self._trim(keep)

    def _trim(self, keep: int) -> None:
        while len(self._completed) > keep:
            self._completed.pop(0).release()
            self.system.frames_recycled += 1

    def _wait_for_next_frame(self, deadline_ns: int | None, what: str) -> None:
        if not self.started or self.system.stalled or not self._free_buffers:
            if deadline_ns is None:
                raise AssertionError(
                    f"picamera2 {self.release.name}: {what} would block for ever: no frame can complete"
                )
            raise concurrent.futures.TimeoutError()  # what the job's Future.result(timeout) raises
        completion_ns = self._completion_ns(self._next_sequence)
        if deadline_ns is not None and completion_ns > deadline_ns:
            raise concurrent.futures.TimeoutError()
        delay_s = (completion_ns - time.monotonic_ns()) / 1e9
        if delay_s > 0:
            time.sleep(delay_s)
        self._complete_next()

    def _complete_next(self) -> None:
        sequence = self._next_sequence
        self._next_sequence += 1
        if not self._free_buffers:
            return  # the camera had nowhere to put this frame: it is lost
        buffer_index = self._free_buffers.pop(0)
        self._render(self._buffers[buffer_index])
        self._render_lores(self._lores_buffers[buffer_index])
        sensor_ns = self._start_ns + sequence * self._frame_ns
        metadata = {
            "SensorTimestamp": sensor_ns,
            "ExposureTime": self.system.exposure_us,
            "FrameDuration": self._frame_ns // 1000,
            "AnalogueGain": 1.0,
            "DigitalGain": 1.0,
            "ColourGains": (1.9, 1.6),
            "ColourTemperature": 5000,
            "Lux": 400.0,
            "AeLocked": True,
            "SensorBlackLevels": (4096, 4096, 4096, 4096),
            "ScalerCrop": (0, 0, 4608, 2592),
        }
        self._completed.append(CompletedRequest(self, sequence, buffer_index, metadata))

    def _render(self, buffer: np.ndarray) -> None:
        """Lay the scene into a buffer as the ISP would for the configured format and transform."""
        assert self.camera_config is not None
        main = self.camera_config["main"]
        width_px, height_px = main["size"]
        order, bytes_per_px = PIXEL_LAYOUTS[main["format"]]
        rgb = self.system.scene_for(width_px, height_px)
        transform: Transform = self.camera_config["transform"]
        if transform.hflip:
            rgb = rgb[:, ::-1]
        if transform.vflip:
            rgb = rgb[::-1]
        channels = {"R": rgb[..., 0], "G": rgb[..., 1], "B": rgb[..., 2]}
        rows = buffer.reshape((height_px, main["stride"]))
        rows[:] = _PADDING_BYTE
        pixels = rows[:, : width_px * bytes_per_px].reshape((height_px, width_px, bytes_per_px))
        for position, channel in enumerate(order):
            pixels[..., position] = 255 if channel == "X" else channels[channel]

    def _render_lores(self, buffer: np.ndarray) -> None:
        """The ISP's second output: the same scene scaled to the lores size, as I420 planes."""
        assert self.camera_config is not None
        lores = self.camera_config.get("lores")
        if lores is None:
            return
        width_px, height_px = lores["size"]
        # The ISP scales the sensor image the main stream shows; INTER_AREA stands in for its filter.
        scene = np.ascontiguousarray(self.system.scene_for(*self.camera_config["main"]["size"]))
        rgb = cv2.resize(scene, (width_px, height_px), interpolation=cv2.INTER_AREA)
        transform: Transform = self.camera_config["transform"]
        if transform.hflip:
            rgb = np.ascontiguousarray(rgb[:, ::-1])
        if transform.vflip:
            rgb = np.ascontiguousarray(rgb[::-1])
        planes = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).reshape(-1)
        stride = lores["stride"]
        if stride == width_px:
            buffer[:] = planes
        else:  # not needed by edgepose's sizes; the layout would interleave padded rows per plane
            raise AssertionError("the fake models lores rows without padding only")

    def _return_buffer(self, buffer_index: int) -> None:
        # The camera reuses the buffer for a later frame; scribble on it so stale views would show.
        self._buffers[buffer_index][:] = _PADDING_BYTE
        self._free_buffers.append(buffer_index)


class _Absent:
    """A method this release does not have: reading it raises AttributeError, as on the real class."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        raise AttributeError(f"'Picamera2' object has no attribute '{self._name}'")


def _capture_request_before_0_3_15(self: Picamera2, wait: Any = None, signal_function: Any = None) -> Any:
    return Picamera2.capture_request(self, wait=wait, signal_function=signal_function)


def _wait_before_0_3_17(self: Picamera2, job: CaptureJob) -> CompletedRequest:
    return self._wait(job, None, "wait(job)")


def picamera2_class(system: FakeCameraSystem, release: Release) -> type[Picamera2]:
    """Picamera2 as `release` has it: its methods and their signatures, bound to `system`."""
    namespace: dict[str, Any] = {"system": system, "release": release}
    if not release.has_flush:
        namespace["capture_request"] = _capture_request_before_0_3_15
    if not release.has_job_timeout:
        namespace["wait"] = _wait_before_0_3_17
    if not release.has_cancel_all_and_flush:
        absent = _Absent()
        absent.__set_name__(Picamera2, "cancel_all_and_flush")
        namespace["cancel_all_and_flush"] = absent
    return type("Picamera2", (Picamera2,), namespace)


def _exposure_start_ns(request: CompletedRequest) -> int:
    metadata = request._metadata
    return int(metadata["SensorTimestamp"]) - 1000 * int(metadata["ExposureTime"])


def make_modules(system: FakeCameraSystem, release: str = NEWEST) -> tuple[ModuleType, ModuleType]:
    """(picamera2, libcamera) modules whose Picamera2 is picamera2 `release`, living in `system`."""
    picamera2 = ModuleType("picamera2")
    picamera2.Picamera2 = picamera2_class(system, RELEASES[release])  # type: ignore[attr-defined]
    picamera2.CompletedRequest = CompletedRequest  # type: ignore[attr-defined]
    libcamera = ModuleType("libcamera")
    libcamera.Transform = Transform  # type: ignore[attr-defined]
    libcamera.ColorSpace = ColorSpace  # type: ignore[attr-defined]
    return picamera2, libcamera


def frame_index(sensor_timestamp_ns: int, camera: Picamera2) -> int:
    """Which sensor frame a SensorTimestamp belongs to (exact: the fake's frames are evenly spaced)."""
    return round((sensor_timestamp_ns - camera._start_ns) / camera._frame_ns)


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()
