"""The configuration schema (pydantic v2) and loading from YAML with `file:line: key: message` errors.

Config is data: `load_config()` returns a frozen `Config` that the daemon passes down, slice by
slice, to the components that need it. Nothing reads configuration from a global.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from edgepose.errors import ConfigError

DEFAULT_CONFIG_PATHS = (Path("/etc/edgepose/edgepose.yaml"), Path("config/edgepose.yaml"))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceKind(StrEnum):
    """What `camera.source` names; the string forms are `kind` or `kind:value`."""

    AUTO = "auto"
    PICAMERA2 = "picamera2"
    V4L2 = "v4l2"
    USB = "usb"
    FILE = "file"
    IMAGES = "images"
    DEMO = "demo"
    SYNTHETIC = "synthetic"


# Sources that are a physical camera: only one holder may open the device at a time.
DEVICE_KINDS = frozenset({SourceKind.AUTO, SourceKind.PICAMERA2, SourceKind.V4L2, SourceKind.USB})


class _SourceSpec(_Section):
    kind: SourceKind

    @property
    def is_device(self) -> bool:
        return self.kind in DEVICE_KINDS


class AutoSpec(_SourceSpec):
    """picamera2 with a camera attached, else the first V4L2 device."""

    kind: Literal[SourceKind.AUTO] = SourceKind.AUTO

    def __str__(self) -> str:
        return "auto"


class Picamera2Spec(_SourceSpec):
    kind: Literal[SourceKind.PICAMERA2] = SourceKind.PICAMERA2

    def __str__(self) -> str:
        return "picamera2"


class V4l2Spec(_SourceSpec):
    kind: Literal[SourceKind.V4L2] = SourceKind.V4L2
    device: str = Field(min_length=1, description="a device node such as /dev/video0")

    def __str__(self) -> str:
        return f"v4l2:{self.device}"


class UsbSpec(_SourceSpec):
    kind: Literal[SourceKind.USB] = SourceKind.USB
    index: int = Field(ge=0, description="OpenCV's camera index")

    def __str__(self) -> str:
        return f"usb:{self.index}"


class FileSpec(_SourceSpec):
    kind: Literal[SourceKind.FILE] = SourceKind.FILE
    path: Path

    def __str__(self) -> str:
        return f"file:{self.path}"


class ImagesSpec(_SourceSpec):
    kind: Literal[SourceKind.IMAGES] = SourceKind.IMAGES
    pattern: str = Field(min_length=1, description="a glob or a directory of photos")

    def __str__(self) -> str:
        return f"images:{self.pattern}"


class DemoSpec(_SourceSpec):
    kind: Literal[SourceKind.DEMO] = SourceKind.DEMO

    def __str__(self) -> str:
        return "demo"


class SyntheticSpec(_SourceSpec):
    kind: Literal[SourceKind.SYNTHETIC] = SourceKind.SYNTHETIC
    fps: float | None = Field(None, gt=0, description="paced like a camera at this rate; none: as fast as asked")

    def __str__(self) -> str:
        return "synthetic" if self.fps is None else f"synthetic:{self.fps:g}"


_SOURCE_FORMS = "auto, picamera2, demo, synthetic[:FPS], file:PATH, images:GLOB_OR_DIR, v4l2:/dev/videoN or usb:N"


def parse_source(value: object) -> object:
    """The string forms of `camera.source` -> the fields of one variant. The only place they are parsed."""
    if not isinstance(value, str):
        return value  # a mapping (`{kind: file, path: ...}`) or an already typed value
    text = value.strip()
    kind_text, colon, arg = text.partition(":")
    try:
        kind = SourceKind(kind_text)
    except ValueError:
        raise ValueError(f"unknown source '{value}': use {_SOURCE_FORMS}") from None
    if colon and not arg:
        raise ValueError(f"'{value}' needs a value after the colon")
    bare = {SourceKind.AUTO, SourceKind.PICAMERA2, SourceKind.DEMO}
    if kind in bare:
        if colon:
            raise ValueError(f"'{value}': {kind.value} takes no value after a colon")
        return {"kind": kind}
    if kind == SourceKind.SYNTHETIC:
        if not colon:
            return {"kind": kind}
        try:
            return {"kind": kind, "fps": float(arg)}
        except ValueError:
            raise ValueError(f"'{value}': expected frames per second, e.g. synthetic:30") from None
    if not colon:
        raise ValueError(f"'{value}' needs a value after a colon, e.g. {kind.value}:{_EXAMPLE_ARGS[kind]}")
    if kind == SourceKind.USB:
        if not arg.isdigit():
            raise ValueError(f"usb:{arg}: expected a camera index such as usb:0")
        return {"kind": kind, "index": int(arg)}
    field_name = {SourceKind.FILE: "path", SourceKind.IMAGES: "pattern", SourceKind.V4L2: "device"}[kind]
    return {"kind": kind, field_name: arg}


_EXAMPLE_ARGS = {
    SourceKind.FILE: "/path/to/video.mp4",
    SourceKind.IMAGES: "/path/to/photos",
    SourceKind.V4L2: "/dev/video0",
    SourceKind.USB: "0",
}

SourceSpec = Annotated[
    AutoSpec | Picamera2Spec | V4l2Spec | UsbSpec | FileSpec | ImagesSpec | DemoSpec | SyntheticSpec,
    Field(discriminator="kind"),
    BeforeValidator(parse_source),
]


class CameraConfig(_Section):
    source: SourceSpec = Field(
        AutoSpec(),
        description=f"one of {_SOURCE_FORMS}; or a mapping such as {{kind: file, path: /x.mp4}}",
    )
    width: int = Field(640, ge=16, le=4096)
    height: int = Field(480, ge=16, le=4096)
    fps: float = Field(30.0, gt=0, le=240)
    loop: bool = True
    index: int = Field(0, ge=0, description="which camera on multi-camera boards (picamera2)")
    hflip: bool = False
    vflip: bool = False
    rotation: Literal[0, 180] = 0
    buffer_count: int = Field(3, ge=2, le=8)
    reopen_backoff_max_s: float = Field(10.0, gt=0)


class SmoothingConfig(_Section):
    enabled: bool = True
    min_cutoff_hz: float = Field(2.5, gt=0)
    beta: float = Field(300.0, ge=0)
    derivative_cutoff_hz: float = Field(2.5, gt=0)


class ModelConfig(_Section):
    name: str = Field("movenet_lightning_int8", description="a name from the manifest, or a .tflite path")
    dir: Path | None = Field(None, description="where fetched models live; default: see README")
    runtime: Literal["auto", "litert", "tflite"] = "auto"
    backend: Literal["auto", "cpu", "edgetpu"] = "auto"
    edgetpu_device: str = Field("usb", pattern=r"^(usb|pci)?(:\d+)?$")
    hang_timeout_s: float = Field(1.0, gt=0, le=60)
    edgetpu_reprobe_s: float = Field(30.0, gt=0)
    num_threads: int = Field(4, ge=1, le=64)
    score_threshold: float = Field(0.2, ge=0.0, le=1.0)
    smart_crop: bool = True
    smoothing: SmoothingConfig = SmoothingConfig()


class QosConfig(_Section):
    keypoints: Literal[0, 1, 2] = 0
    health: Literal[0, 1, 2] = 1
    status: Literal[0, 1, 2] = 1


class TlsConfig(_Section):
    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


class MqttConfig(_Section):
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str | None = Field(None, description="default: edgepose-<device_id>")
    base_topic: str = Field("edgepose", min_length=1)
    keepalive_s: int = Field(30, ge=5, le=65535)
    username: str | None = None
    password_file: Path | None = None
    password_credential: str | None = Field(
        None, description="name of a systemd credential (LoadCredential=) holding the password"
    )
    tls: TlsConfig = TlsConfig()
    qos: QosConfig = QosConfig()
    reconnect_min_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    max_queued_messages: int = Field(1000, ge=1)

    @field_validator("base_topic")
    @classmethod
    def _no_wildcards(cls, value: str) -> str:
        if any(c in value for c in "+#") or value.startswith("/") or value.endswith("/"):
            raise ValueError("must not contain + or # or start/end with /")
        return value


class PublishConfig(_Section):
    keypoints: bool = True
    max_fps: float = Field(0.0, ge=0, description="0 = every inferred frame")
    include_empty: bool = Field(True, description="publish frames with no pose above the threshold")
    format: Literal["json", "compact"] = Field(
        "json", description="keypoints payload: json (edgepose.keypoints/1) or compact (edgepose.kpc/1)"
    )


class HealthConfig(_Section):
    interval_s: float = Field(10.0, gt=0, le=3600)


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    status_interval_s: float = Field(5.0, ge=0, description="one-line status log; 0 = off")


def _default_device_id() -> str:
    return socket.gethostname().split(".")[0] or "edgepose"


class Config(_Section):
    device_id: str = Field(default_factory=_default_device_id, pattern=r"^[A-Za-z0-9_.-]+$")
    camera: CameraConfig = CameraConfig()
    model: ModelConfig = ModelConfig()
    mqtt: MqttConfig = MqttConfig()
    publish: PublishConfig = PublishConfig()
    health: HealthConfig = HealthConfig()
    logging: LoggingConfig = LoggingConfig()


# ---------------------------------------------------------------------------------------------
# Loading


def default_config_path() -> Path:
    for path in DEFAULT_CONFIG_PATHS:
        if path.exists():
            return path
    return DEFAULT_CONFIG_PATHS[-1]


class _LineIndex:
    """Maps a dotted key path to the line in the YAML document where it stands."""

    def __init__(self, node: yaml.Node | None) -> None:
        self._root = node

    def line_of(self, path: Sequence[str | int]) -> int | None:
        node = self._root
        line = node.start_mark.line + 1 if node is not None else None
        for part in path:
            if isinstance(node, yaml.MappingNode):
                for key_node, value_node in node.value:
                    if key_node.value == str(part):
                        line = key_node.start_mark.line + 1
                        node = value_node
                        break
                else:
                    return line
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line


def _dotted(loc: Sequence[str | int]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _set_dotted(data: dict[str, Any], dotted_key: str, value: Any) -> None:
    parts = dotted_key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`key.path=value` -> (key path, YAML-typed value); `--set mqtt.port=1884` gives an int."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError([f"--set {text}: expected KEY=VALUE, e.g. --set mqtt.port=1884"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_config(path: Path | None, overrides: Sequence[str] = ()) -> tuple[Config, Path | None]:
    """Load, merge `--set` overrides and validate. Raises ConfigError listing every problem."""
    data: dict[str, Any] = {}
    lines = _LineIndex(None)
    label = "<defaults>"
    if path is not None:
        label = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError([f"{path}:0: (file): config file not found"]) from None
        except IsADirectoryError:
            raise ConfigError([f"{path}:0: (file): is a directory, expected a YAML file"]) from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError([f"{path}:0: (file): cannot read: {reason}"]) from None
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            loaded = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            line = mark.line + 1 if mark is not None else 0
            problem = exc.problem or str(exc)
            raise ConfigError([f"{path}:{line}: (yaml): {problem}"]) from None
        except yaml.YAMLError as exc:
            raise ConfigError([f"{path}:0: (yaml): {exc}"]) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError([f"{path}:1: (top level): expected a mapping of sections, got {type(loaded).__name__}"])
        data = loaded
        lines = _LineIndex(node)

    override_keys: dict[str, str] = {}
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
        override_keys[key] = text

    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            dotted = _dotted(loc)
            message = error["msg"]
            if error["type"] == "extra_forbidden":
                message = "unknown key"
                parent = _dotted(loc[:-1]) if len(loc) > 1 else None
                allowed = _allowed_keys(loc[:-1])
                if allowed:
                    message += f" (allowed{' in ' + parent if parent else ''}: {', '.join(allowed)})"
            origin = next((override_keys[k] for k in override_keys if dotted == k or dotted.startswith(k + ".")), None)
            if origin is not None:
                problems.append(f"--set {origin}: {dotted}: {message}")
            else:
                where = lines.line_of(loc) if path is not None else None
                problems.append(f"{label}:{where if where is not None else 0}: {dotted}: {message}")
        raise ConfigError(problems) from None
    return config, path


def _allowed_keys(loc: Sequence[str | int]) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return []
    return sorted(model.model_fields)


def read_mqtt_password(mqtt: MqttConfig) -> str | None:
    """The broker password from a systemd credential or a file, never from the YAML itself."""
    if mqtt.password_credential:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ConfigError(
                [
                    f"(env):0: mqtt.password_credential: CREDENTIALS_DIRECTORY is not set; "
                    f"run under systemd with LoadCredential={mqtt.password_credential}:/path"
                ]
            )
        return _read_secret(Path(directory) / mqtt.password_credential, "mqtt.password_credential")
    if mqtt.password_file:
        return _read_secret(mqtt.password_file, "mqtt.password_file")
    return None


def _read_secret(path: Path, key: str) -> str | None:
    """The secret, or None when the file is empty (the unit's SetCredential= fallback is a newline)."""
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n") or None
    except OSError as exc:
        raise ConfigError([f"{path}:0: {key}: cannot read password: {exc.strerror or exc}"]) from None
