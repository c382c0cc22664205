"""The Raspberry Pi camera through picamera2 (from apt on Raspberry Pi OS; never pip-installed).

One read hands on one RGB frame that the sensor started reading out after the read was called,
stamped with the sensor's own timestamp. Frames that were already waiting are released unused and
counted in `frames_skipped`, so a slow consumer never works through a backlog.
"""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import logging
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import cv2
import numpy as np

from edgepose.config import CameraConfig
from edgepose.errors import SourceError
from edgepose.sources.base import Delivery, Frame

log = logging.getLogger(__name__)

PICAMERA2_HINT = (
    "picamera2 not importable: on Raspberry Pi OS run `sudo apt install python3-picamera2` and create "
    "the venv with --system-site-packages"
)

# picamera2 names formats after little-endian DRM fourccs: "BGR888" is R,G,B in memory, which is
# what the model takes, so frames need no channel swap ("RGB888" would be B,G,R).
MAIN_FORMAT = "BGR888"
# The Pi 4's ISP gives the lores stream in YUV420 only (the Pi 5 could do RGB); I420 -> RGB at the
# model's input size costs a few tens of microseconds, a resize of the main frame several hundred.
LORES_FORMAT = "YUV420"

# libcamera documents SensorTimestamp as CLOCK_BOOTTIME, but on the Pi it is the V4L2 buffer time,
# CLOCK_MONOTONIC (libcamera bug 254), and picamera2's own `flush=True` compares it with
# time.monotonic_ns(). The two clocks differ only by time spent suspended, which a Pi never is.
SENSOR_CLOCK_ID = time.CLOCK_MONOTONIC

# Long enough for the first frame after start() (sensor power-up, first statistics), short enough
# that a vanished camera shows as degraded within seconds.
CAPTURE_TIMEOUT_MIN_S = 2.0
CAPTURE_TIMEOUT_FRAMES = 4

# What picamera2 raises when the camera is missing, busy or stops delivering: RuntimeError from
# libcamera, IndexError for a camera number not attached, the job future's TimeoutError/CancelledError.
CAMERA_ERRORS: tuple[type[BaseException], ...] = (
    RuntimeError,
    OSError,
    IndexError,
    ValueError,
    TimeoutError,
    concurrent.futures.TimeoutError,
    concurrent.futures.CancelledError,
)


# The oldest picamera2 a stalled camera cannot hang: 0.3.20 made a numeric capture_request(wait=...) a
# timeout and added cancel_all_and_flush() (one commit, "Improve handling of timeouts and cameras that
# stop responding"). Before it a number is only truthy and the capture blocks until a frame comes; and
# even with 0.3.17's wait(job, timeout) the timed-out job stays queued, so stop() and close(), which
# picamera2 runs as jobs after it, block for ever on a camera that stopped delivering.
MIN_PICAMERA2 = "0.3.20"


def load_picamera2() -> tuple[ModuleType, Any]:
    try:
        import picamera2
        from libcamera import Transform
    except ImportError as exc:
        raise SourceError(f"{PICAMERA2_HINT} ({exc})") from None
    except ValueError as exc:
        # "numpy.dtype size changed": a pip numpy in the venv shadows the one apt's picamera2 was built for.
        raise SourceError(
            f"picamera2 failed to import ({exc}); remove numpy from the venv so the system python3-numpy is used"
        ) from None
    if not hasattr(picamera2.Picamera2, "cancel_all_and_flush"):
        raise SourceError(
            f"picamera2 {_installed_version()} is too old: edgepose needs picamera2 {MIN_PICAMERA2} or newer "
            "(capture timeouts); run `sudo apt update && sudo apt install --only-upgrade python3-picamera2`"
        )
    return picamera2, Transform


def _installed_version() -> str:
    try:
        return importlib.metadata.version("picamera2")
    except importlib.metadata.PackageNotFoundError:
        return f"(older than {MIN_PICAMERA2}: no Picamera2.cancel_all_and_flush)"


def attached_cameras(picamera2_module: ModuleType) -> list[dict[str, Any]]:
    try:
        cameras: list[dict[str, Any]] = picamera2_module.Picamera2.global_camera_info()
    except CAMERA_ERRORS as exc:
        raise SourceError(f"picamera2: listing cameras failed ({exc})") from None
    return cameras


# time.monotonic() reads CLOCK_MONOTONIC on Linux: then a frame's monotonic time is its SensorTimestamp.
_SENSOR_CLOCK_IS_MONOTONIC = time.get_clock_info("monotonic").implementation == "clock_gettime(CLOCK_MONOTONIC)"
NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class ClockSample:
    """The sensor's clock, the wall clock and time.monotonic() read at (nearly) one instant, in ns."""

    sensor_ns: int
    wall_ns: int
    monotonic_ns: int

    @classmethod
    def now(cls) -> ClockSample:
        # Bracketing the wall-clock read halves the error of pairing it with the sensor clock.
        before_ns = time.clock_gettime_ns(SENSOR_CLOCK_ID)
        wall_ns = time.time_ns()
        after_ns = time.clock_gettime_ns(SENSOR_CLOCK_ID)
        sensor_ns = (before_ns + after_ns) // 2
        return cls(sensor_ns, wall_ns, sensor_ns if _SENSOR_CLOCK_IS_MONOTONIC else time.monotonic_ns())


def sensor_stamps(sensor_timestamp_ns: int, clocks: ClockSample) -> tuple[float, float]:
    """(UNIX seconds, time.monotonic() seconds) of a SensorTimestamp, shifted by its age on the sensor clock.

    Taking the age at conversion time, not a boot-time offset fixed once, follows NTP steps of the wall clock.
    """
    age_ns = clocks.sensor_ns - sensor_timestamp_ns
    # int / int rounds once, exactly; converting the ns count to float first would not.
    return (clocks.wall_ns - age_ns) / NS_PER_S, (clocks.monotonic_ns - age_ns) / NS_PER_S


def frames_between(previous_ns: int, current_ns: int, frame_duration_ns: int) -> int:
    """Sensor frames that started after `previous_ns` and before `current_ns` (never negative)."""
    if frame_duration_ns <= 0:
        return 0
    return max(0, round((current_ns - previous_ns) / frame_duration_ns) - 1)


def orientation_flips(camera: CameraConfig) -> tuple[bool, bool]:
    """(hflip, vflip) for libcamera: a 180° rotation is both flips, so it toggles each configured flip."""
    rotated = camera.rotation == 180
    return camera.hflip != rotated, camera.vflip != rotated


def frame_duration_us(fps: float) -> int:
    return max(1, round(1e6 / fps))


class Picamera2Source:
    """A live camera: picamera2's Picamera2 object, opened in open(), read from the capture thread."""

    delivery: Delivery = "live"

    def __init__(
        self,
        camera: CameraConfig,
        picamera2_module: ModuleType,
        transform_class: Any,
        lores_size_px: tuple[int, int] | None = None,
    ) -> None:
        self.camera = camera
        # (width, height) for the ISP to scale every frame to as well (Frame.scaled): the model's input.
        self.lores_size_px = lores_size_px
        self._warned_lores = False
        self._module = picamera2_module
        self._transform_class = transform_class
        self._picam2: Any = None
        self._model: str | None = None
        self._index = 0
        self._frames_skipped = 0
        self._last_seen_ns: int | None = None
        self._configured_frame_ns = frame_duration_us(camera.fps) * 1000
        self._frame_ns = self._configured_frame_ns
        self._timeout_s = max(CAPTURE_TIMEOUT_MIN_S, CAPTURE_TIMEOUT_FRAMES / camera.fps)
        self._warned_no_timestamp = False

    @property
    def description(self) -> str:
        model = f" ({self._model})" if self._model else ""
        return f"picamera2 camera {self.camera.index}{model}"

    @property
    def frames_skipped(self) -> int:
        return self._frames_skipped

    def _configuration(self, picam2: Any) -> dict[str, Any]:
        """The video configuration asked of picamera2 (which fills in stride, colour space, raw stream)."""
        camera = self.camera
        hflip, vflip = orientation_flips(camera)
        duration_us = frame_duration_us(camera.fps)
        config: dict[str, Any] = picam2.create_video_configuration(
            main={"size": (camera.width, camera.height), "format": MAIN_FORMAT},
            # The ISP scales the same frame a second time for free; lores is YUV420 on every Pi.
            lores={"size": self.lores_size_px, "format": LORES_FORMAT} if self.lores_size_px else None,
            buffer_count=camera.buffer_count,
            controls={"FrameDurationLimits": (duration_us, duration_us)},
            transform=self._transform_class(hflip=int(hflip), vflip=int(vflip)),
            # Never keep a completed frame around for the next capture: it would be older than the call.
            queue=False,
        )
        return config

    def open(self) -> None:
        if self._picam2 is not None:
            self.close()
        index = self.camera.index
        try:
            picam2 = self._module.Picamera2(camera_num=index)
        except CAMERA_ERRORS as exc:
            raise SourceError(
                f"picamera2 camera {index}: cannot open ({type(exc).__name__}: {exc}); check the ribbon cable "
                "and `rpicam-hello --list-cameras`, and that no other process (rpicam-*, another edgepose) "
                "holds the camera"
            ) from None
        try:
            picam2.configure(self._configuration(picam2))
            picam2.start()
        except CAMERA_ERRORS as exc:
            self._shut(picam2)
            raise SourceError(
                f"picamera2 camera {index}: configure/start failed ({type(exc).__name__}: {exc})"
            ) from None
        self._picam2 = picam2
        self._model = _camera_model(picam2)
        self._index = 0
        self._last_seen_ns = None
        self._frame_ns = self._configured_frame_ns

    def read(self) -> Frame:
        picam2 = self._picam2
        if picam2 is None:
            raise SourceError(f"{self.description}: read before open")
        called_ns = time.clock_gettime_ns(SENSOR_CLOCK_ID)
        deadline_s = time.monotonic() + self._timeout_s
        while True:
            request = self._capture(picam2, called_ns, deadline_s - time.monotonic())
            try:
                metadata = request.get_metadata()
                sensor_ns = self._sensor_timestamp(metadata)
                self._account(sensor_ns, metadata)
                if sensor_ns < called_ns:
                    # Read out before this call: a newer frame is on its way, so this one would only add latency.
                    self._frames_skipped += 1
                    continue
                image = request.make_array("main")
                scaled = self._scaled(request) if self.lores_size_px else None
            except CAMERA_ERRORS as exc:
                raise SourceError(f"{self.description}: reading a frame failed ({type(exc).__name__}: {exc})") from None
            finally:
                # An unreleased request keeps its buffer from the camera; a few of them stall it.
                request.release()
            return self._frame(image, sensor_ns, scaled)

    def close(self) -> None:
        picam2, self._picam2 = self._picam2, None
        if picam2 is not None:
            self._shut(picam2)

    def _capture(self, picam2: Any, called_ns: int, timeout_s: float) -> Any:
        if timeout_s <= 0:
            raise SourceError(f"{self.description}: no fresh frame within {self._timeout_s:.1f}s")
        try:
            # picamera2 drops frames whose *exposure* began before `flush`; exposure never exceeds a frame
            # duration, so this flush discards only frames the SensorTimestamp check would discard too.
            return picam2.capture_request(wait=timeout_s, flush=called_ns - self._frame_ns)
        except CAMERA_ERRORS as exc:
            # A timed-out job stays queued: it would take a later frame that nobody releases, and stop(),
            # which picamera2 queues behind it, would wait for ever on a camera that stopped delivering.
            try:
                picam2.cancel_all_and_flush()
            except CAMERA_ERRORS as cancel_exc:
                log.debug("%s: cancelling capture jobs: %s", self.description, cancel_exc)
            reason = f"no frame within {timeout_s:.1f}s" if _is_timeout(exc) else f"{type(exc).__name__}: {exc}"
            raise SourceError(f"{self.description}: capture failed ({reason})") from None

    def _sensor_timestamp(self, metadata: dict[str, Any]) -> int:
        value = metadata.get("SensorTimestamp")
        if value is None:
            if not self._warned_no_timestamp:
                log.warning("%s: no SensorTimestamp in metadata; stamping frames on arrival", self.description)
                self._warned_no_timestamp = True
            return time.clock_gettime_ns(SENSOR_CLOCK_ID)
        return int(value)

    def _account(self, sensor_ns: int, metadata: dict[str, Any]) -> None:
        """Count frames dropped before this one reached us (by flush, by picamera2 or for want of a buffer)."""
        duration_us = metadata.get("FrameDuration")
        if duration_us:
            self._frame_ns = max(self._configured_frame_ns, int(duration_us) * 1000)
        if self._last_seen_ns is not None:
            self._frames_skipped += frames_between(self._last_seen_ns, sensor_ns, self._frame_ns)
        self._last_seen_ns = sensor_ns

    def _scaled(self, request: Any) -> np.ndarray | None:
        """The lores stream as RGB, or None (and one warning) when its layout is not plain I420."""
        assert self.lores_size_px is not None
        width_px, height_px = self.lores_size_px
        yuv = request.make_array("lores")
        # make_array gives I420 as (height * 3/2, stride) rows; with stride == width it is plain I420.
        if yuv.shape != (height_px * 3 // 2, width_px):
            if not self._warned_lores:
                log.warning(
                    "%s: lores stream is %s, not %dx%d I420; resizing on the CPU instead",
                    self.description,
                    yuv.shape,
                    width_px,
                    height_px,
                )
                self._warned_lores = True
            return None
        return np.asarray(cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB_I420))

    def _frame(self, array: np.ndarray, sensor_ns: int, scaled: np.ndarray | None = None) -> Frame:
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise SourceError(
                f"{self.description}: expected an HxWx3 uint8 {MAIN_FORMAT} frame, got {array.dtype} {array.shape}"
            )
        # make_array copies out of the camera's buffer and strips row padding; this only guards contiguity.
        image = np.ascontiguousarray(array)
        wall_s, monotonic_s = sensor_stamps(sensor_ns, ClockSample.now())
        frame = Frame(image, wall_s, monotonic_s, self._index, scaled)
        self._index += 1
        return frame

    def _shut(self, picam2: Any) -> None:
        for step in (picam2.stop, picam2.close):
            try:
                step()
            except CAMERA_ERRORS as exc:
                log.warning("%s: %s failed while closing: %s", self.description, step.__name__, exc)


def _camera_model(picam2: Any) -> str | None:
    properties = getattr(picam2, "camera_properties", None)
    model = properties.get("Model") if isinstance(properties, dict) else None
    return str(model) if model else None


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, (TimeoutError, concurrent.futures.TimeoutError))
