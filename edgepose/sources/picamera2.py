"""The Raspberry Pi camera through picamera2 (from apt on Raspberry Pi OS; never pip-installed)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from edgepose.config import CameraConfig
from edgepose.errors import SourceError
from edgepose.sources.base import Delivery, Frame

PICAMERA2_HINT = (
    "picamera2 not importable: on Raspberry Pi OS run `sudo apt install python3-picamera2` and create "
    "the venv with --system-site-packages"
)


def load_picamera2() -> tuple[ModuleType, Any]:
    try:
        import picamera2
        from libcamera import Transform
    except ImportError as exc:
        raise SourceError(f"{PICAMERA2_HINT} ({exc})") from None
    return picamera2, Transform


def attached_cameras(picamera2_module: ModuleType) -> list[dict[str, Any]]:
    cameras: list[dict[str, Any]] = picamera2_module.Picamera2.global_camera_info()
    return cameras


class Picamera2Source:
    delivery: Delivery = "live"

    def __init__(self, camera: CameraConfig, picamera2_module: ModuleType, transform_class: Any) -> None:
        self.camera = camera
        self._module = picamera2_module
        self._transform_class = transform_class

    frames_skipped = 0

    @property
    def description(self) -> str:
        return f"picamera2 camera {self.camera.index}"

    def open(self) -> None:
        raise SourceError("picamera2 source: not implemented yet")

    def read(self) -> Frame | None:
        raise SourceError("picamera2 source: not implemented yet")

    def close(self) -> None:
        pass
