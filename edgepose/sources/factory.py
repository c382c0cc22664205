"""`camera.source` (typed by the config) -> a FrameSource. The only place that dispatches on its kind."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import assert_never

from edgepose.config import (
    AutoSpec,
    CameraConfig,
    DemoSpec,
    FileSpec,
    ImagesSpec,
    Picamera2Spec,
    SyntheticSpec,
    UsbSpec,
    V4l2Spec,
)
from edgepose.errors import SourceError
from edgepose.geometry import letterbox_content_size
from edgepose.sources.base import FrameSource
from edgepose.sources.demo import DemoSource
from edgepose.sources.images import ImagesSource
from edgepose.sources.opencv import CaptureDeviceSource, VideoFileSource
from edgepose.sources.synthetic import SyntheticSource


def v4l2_devices() -> list[str]:
    """Capture-capable /dev/video* nodes, lowest first (the Pi's codec nodes are video10+)."""
    return sorted(glob.glob("/dev/video[0-9]*"), key=lambda p: int(p.removeprefix("/dev/video") or 0))


def picamera2_source(camera: CameraConfig, model_input_px: int | None = None) -> FrameSource:
    # Imported lazily: picamera2 exists only on a Pi (from apt), and its import is slow.
    from edgepose.sources.picamera2 import Picamera2Source, load_picamera2

    picamera2_module, transform_class = load_picamera2()
    lores = None
    if camera.isp_scale and model_input_px:
        lores = letterbox_content_size(camera.height, camera.width, model_input_px)
    return Picamera2Source(camera, picamera2_module, transform_class, lores)


def auto_source(camera: CameraConfig, model_input_px: int | None = None) -> FrameSource:
    """picamera2 when importable with a camera attached, else the first V4L2 device, else a clear error."""
    tried = []
    try:
        from edgepose.sources.picamera2 import attached_cameras, load_picamera2

        picamera2_module, _ = load_picamera2()
        cameras = attached_cameras(picamera2_module)
        if cameras:
            return picamera2_source(camera, model_input_px)
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


def open_source(
    camera: CameraConfig, demo_photos: list[Path] | None = None, model_input_px: int | None = None
) -> FrameSource:
    """Build (not open) the source `camera.source` names; `demo_photos` are needed for `demo`;
    `model_input_px` (the square model input) for picamera2's camera.isp_scale."""
    spec = camera.source
    match spec:
        case AutoSpec():
            return auto_source(camera, model_input_px)
        case Picamera2Spec():
            return picamera2_source(camera, model_input_px)
        case DemoSpec():
            if not demo_photos:
                raise SourceError("camera.source demo: no demo photos (run `edgepose models fetch samples`)")
            return DemoSource(demo_photos, camera.width, camera.height, camera.fps)
        case SyntheticSpec(fps=fps):
            return SyntheticSource(camera.width, camera.height, fps)
        case FileSpec(path=path):
            return VideoFileSource(path.expanduser(), camera.loop)
        case ImagesSpec(pattern=pattern):
            return ImagesSource(pattern, camera.loop, camera.max_image_pixels)
        case V4l2Spec(device=device):
            return CaptureDeviceSource(device, camera.width, camera.height, camera.fps)
        case UsbSpec(index=index):
            return CaptureDeviceSource(index, camera.width, camera.height, camera.fps)
    assert_never(spec)
