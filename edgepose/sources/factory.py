"""`camera.source` string -> a FrameSource. The only place that knows every kind of source."""

from __future__ import annotations

import glob
from pathlib import Path

from edgepose.config import CameraConfig
from edgepose.errors import SourceError
from edgepose.sources.base import FrameSource
from edgepose.sources.demo import DemoSource
from edgepose.sources.images import ImagesSource
from edgepose.sources.opencv import CaptureDeviceSource, VideoFileSource
from edgepose.sources.synthetic import SyntheticSource


def v4l2_devices() -> list[str]:
    """Capture-capable /dev/video* nodes, lowest first (the Pi's codec nodes are video10+)."""
    return sorted(glob.glob("/dev/video[0-9]*"), key=lambda p: int(p.removeprefix("/dev/video") or 0))


def picamera2_source(camera: CameraConfig) -> FrameSource:
    # Imported lazily: picamera2 exists only on a Pi (from apt), and its import is slow.
    from edgepose.sources.picamera2 import Picamera2Source, load_picamera2

    picamera2_module, transform_class = load_picamera2()
    return Picamera2Source(camera, picamera2_module, transform_class)


def auto_source(camera: CameraConfig) -> FrameSource:
    """picamera2 when importable with a camera attached, else the first V4L2 device, else a clear error."""
    tried = []
    try:
        from edgepose.sources.picamera2 import attached_cameras, load_picamera2

        picamera2_module, _ = load_picamera2()
        cameras = attached_cameras(picamera2_module)
        if cameras:
            return picamera2_source(camera)
        tried.append("picamera2: importable but no camera attached")
    except SourceError as exc:
        tried.append(str(exc))
    devices = v4l2_devices()
    if devices:
        return CaptureDeviceSource(devices[0], camera.width, camera.height, camera.fps)
    tried.append("v4l2: no /dev/video* device")
    raise SourceError(
        "camera.source: auto found no camera; tried: "
        + "; ".join(tried)
        + ". Set camera.source to demo, file:PATH or images:DIR to run without one"
    )


def open_source(camera: CameraConfig, demo_photos: list[Path] | None = None) -> FrameSource:
    """Build (not open) the source named by camera.source; `demo_photos` are needed for `demo`."""
    spec = camera.source
    kind, _, value = spec.partition(":")
    if spec == "auto":
        return auto_source(camera)
    if spec == "picamera2":
        return picamera2_source(camera)
    if spec == "demo":
        if not demo_photos:
            raise SourceError("camera.source demo: no demo photos (run `edgepose models fetch samples`)")
        return DemoSource(demo_photos, camera.width, camera.height, camera.fps)
    if kind == "synthetic":
        fps = float(value) if value else None
        return SyntheticSource(camera.width, camera.height, fps)
    if kind == "file":
        return VideoFileSource(Path(value).expanduser(), camera.loop)
    if kind == "images":
        return ImagesSource(value, camera.loop)
    if kind == "v4l2":
        return CaptureDeviceSource(value, camera.width, camera.height, camera.fps)
    if kind == "usb":
        try:
            index = int(value)
        except ValueError:
            raise SourceError(f"camera.source: usb:{value}: expected a camera index such as usb:0") from None
        return CaptureDeviceSource(index, camera.width, camera.height, camera.fps)
    raise SourceError(f"camera.source: unknown source '{spec}'")
