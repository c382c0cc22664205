"""The configuration schema (pydantic v2) and loading from YAML with `file:line: key: message` errors.

Config is data: `load_config()` returns a frozen `Config` that the daemon passes down, slice by
slice, to the components that need it. Nothing reads configuration from a global.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import ssl
import stat
import uuid
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgepose.errors import ConfigError

DEFAULT_CONFIG_PATHS = (Path("/etc/edgepose/edgepose.yaml"), Path("config/edgepose.yaml"))
# Images over this many pixels are refused before decoding (50 MP = 150 MB of RGB; a Pi 4 may have 1 GB).
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
# A config is a few kB; anything near this is not a config (and must not be read into memory whole).
MAX_CONFIG_BYTES = 1 << 20
# Where a machine keeps its unique id (systemd, then D-Bus's older location).
MACHINE_ID_PATHS = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
# Hostnames that ship on stock images: thousands of devices share them, so they cannot name one.
STOCK_HOSTNAMES = frozenset({"raspberrypi", "raspberry", "pi", "localhost", "ubuntu", "debian", "dietpi", "edgepose"})
# Keys whose values must never be printed back (`--set mqtt.password=X` included).
_SECRET_KEY = re.compile(r"pass|secret|token|credential|key_data", re.IGNORECASE)


class _Section(BaseModel):
    # allow_inf_nan=False: `.inf` or `.nan` as a time or a rate is always a mistake (busy loops, int(inf)).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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
    # What the rest of the program needs to know about a source, so that only the factory looks at `kind`:
    stills: ClassVar[bool] = False  # unrelated photos: every frame stands alone (no crop tracking, smoothing)
    uses_sample_photos: ClassVar[bool] = False  # reads the demo photos fetched into the model directory
    may_use_picamera2: ClassVar[bool] = False  # picamera2 is (or may be) the camera: `edgepose doctor` checks it
    needs_picamera2: ClassVar[bool] = False  # nothing else will do

    @property
    def is_device(self) -> bool:
        """A physical camera: only one holder may open the device at a time."""
        return self.kind in DEVICE_KINDS

    @property
    def v4l2_node(self) -> str | None:
        """The V4L2 device node this source must open, when it is one (`edgepose doctor` checks it)."""
        return None


class AutoSpec(_SourceSpec):
    """picamera2 with a camera attached, else the first V4L2 device."""

    kind: Literal[SourceKind.AUTO] = SourceKind.AUTO
    may_use_picamera2: ClassVar[bool] = True

    def __str__(self) -> str:
        return "auto"


class Picamera2Spec(_SourceSpec):
    kind: Literal[SourceKind.PICAMERA2] = SourceKind.PICAMERA2
    may_use_picamera2: ClassVar[bool] = True
    needs_picamera2: ClassVar[bool] = True

    def __str__(self) -> str:
        return "picamera2"


class V4l2Spec(_SourceSpec):
    kind: Literal[SourceKind.V4L2] = SourceKind.V4L2
    device: str = Field(min_length=1, description="a device node such as /dev/video0")

    @property
    def v4l2_node(self) -> str | None:
        return self.device

    def __str__(self) -> str:
        return f"v4l2:{self.device}"


class UsbSpec(_SourceSpec):
    kind: Literal[SourceKind.USB] = SourceKind.USB
    index: int = Field(ge=0, description="OpenCV's camera index")

    @property
    def v4l2_node(self) -> str | None:
        return f"/dev/video{self.index}"  # OpenCV's V4L2 backend opens index N as /dev/videoN

    def __str__(self) -> str:
        return f"usb:{self.index}"


class FileSpec(_SourceSpec):
    kind: Literal[SourceKind.FILE] = SourceKind.FILE
    path: Path

    def __str__(self) -> str:
        return f"file:{self.path}"


class ImagesSpec(_SourceSpec):
    kind: Literal[SourceKind.IMAGES] = SourceKind.IMAGES
    stills: ClassVar[bool] = True
    pattern: str = Field(min_length=1, description="a glob or a directory of photos")

    def __str__(self) -> str:
        return f"images:{self.pattern}"


class DemoSpec(_SourceSpec):
    kind: Literal[SourceKind.DEMO] = SourceKind.DEMO
    uses_sample_photos: ClassVar[bool] = True

    def __str__(self) -> str:
        return "demo"


class SyntheticSpec(_SourceSpec):
    kind: Literal[SourceKind.SYNTHETIC] = SourceKind.SYNTHETIC
    fps: float | None = Field(
        None, gt=0, le=240, description="paced like a camera at this rate; none: as fast as asked"
    )

    def __str__(self) -> str:
        return "synthetic" if self.fps is None else f"synthetic:{self.fps:g}"


_SOURCE_FORMS = "auto, picamera2, demo, synthetic[:FPS], file:PATH, images:GLOB_OR_DIR, v4l2:/dev/videoN or usb:N"


def parse_source(value: object) -> object:
    """The string forms of `camera.source` -> the fields of one variant. The only place they are parsed."""
    if isinstance(value, dict) and "kind" not in value:
        if len(value) == 1 and next(iter(value)) in {k.value for k in SourceKind}:
            # YAML read `images:` (or `--set camera.source=usb: 0`) as a one-key mapping: the string was meant.
            ((kind_text, arg),) = value.items()
            value = f"{kind_text}:{'' if arg is None else arg}"
        else:
            raise ValueError(f"expected one of {_SOURCE_FORMS}, or a mapping with a 'kind' key")
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
    max_image_pixels: int = Field(
        DEFAULT_MAX_IMAGE_PIXELS,
        ge=1,
        description="images larger than this are refused before decoding (images:, infer)",
    )
    isp_scale: bool = Field(
        False,
        description="picamera2: the ISP also scales each frame to the model input (the lores stream), "
        "used whenever the model looks at the whole frame, so the CPU does not resize",
    )


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
    num_threads: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        4, description="interpreter threads, or auto: the count with the highest pipeline rate, measured once"
    )
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

    @model_validator(mode="after")
    def _certificates_parse(self) -> TlsConfig:
        """What paho would fail on at the first connect, found at `config check` instead."""
        if not self.enabled:
            return self
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, key)
            if path is not None:
                _check_readable(key, path)
        if self.ca_file is not None:
            try:
                ssl.create_default_context(cafile=str(self.ca_file))
            except ssl.SSLError as exc:
                raise ValueError(f"ca_file {self.ca_file}: not a PEM certificate ({_ssl_reason(exc)})") from None
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file is set without cert_file: a client key needs its certificate")
        if self.cert_file is not None:
            check_client_pair(self.cert_file, self.key_file)
        return self


def check_client_pair(cert_file: Path, key_file: Path | None) -> None:
    """The client certificate and key load, and belong together (ValueError naming the file otherwise)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)

    def no_passphrase() -> str:
        # An encrypted key would make OpenSSL prompt on a terminal no daemon has.
        raise ValueError(f"key_file {key_file or cert_file}: the key is encrypted; edgepose needs an unencrypted key")

    try:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None, password=no_passphrase)
    except ssl.SSLError as exc:
        reason = _ssl_reason(exc)
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise ValueError(f"key_file {key_file} does not match cert_file {cert_file}") from None
        if key_file is None:
            raise ValueError(
                f"cert_file {cert_file}: no private key in it and no key_file set, or not a PEM certificate ({reason})"
            ) from None
        raise ValueError(
            f"cert_file {cert_file} / key_file {key_file}: not a PEM certificate and key ({reason})"
        ) from None


def _ssl_reason(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc.strerror or exc).lower().replace("_", " ")


def _check_readable(key: str, path: Path) -> None:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ValueError(f"{key} {path}: file not found") from None
    except OSError as exc:
        raise ValueError(f"{key} {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{key} {path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{key} {path}: not readable by this user (uid {os.getuid()})")


def topic_prefix(value: str) -> str:
    """A topic prefix edgepose publishes under: no wildcards, no empty first or last level."""
    if any(c in value for c in "+#") or value.startswith("/") or value.endswith("/"):
        raise ValueError("must not contain + or # or start/end with /")
    return value


class MqttConfig(_Section):
    host: str = Field("localhost", min_length=1, pattern=r"^\S+$", description="broker name or address")
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
    # A low cap: an edge device should be back within a few seconds of its broker, not 30 s later.
    reconnect_min_s: float = Field(0.5, gt=0, le=3600)
    reconnect_max_s: float = Field(2.0, gt=0, le=3600)
    max_queued_messages: int = Field(1000, ge=1)
    protocol: Literal["5", "3.1.1"] = Field(
        "5", description="MQTT version; 5 falls back to 3.1.1 by itself when the broker refuses 5"
    )
    session_expiry_s: int = Field(
        300, ge=0, le=4294967295, description="MQTT 5: the broker keeps our session this long across an outage"
    )
    status_expiry_s: float = Field(
        60.0, ge=3, le=86400, description="MQTT 5: the retained `online` expires unless refreshed (every third)"
    )

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_text(cls, value: object) -> object:
        # YAML reads `protocol: 5` as an int and `protocol: 3.1.1` as a string.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _reconnect_order(self) -> MqttConfig:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(
                f"reconnect_min_s ({self.reconnect_min_s:g}) must not exceed reconnect_max_s ({self.reconnect_max_s:g})"
            )
        return self

    @field_validator("base_topic")
    @classmethod
    def _no_wildcards(cls, value: str) -> str:
        return topic_prefix(value)


class PublishConfig(_Section):
    keypoints: bool = True
    max_fps: float = Field(0.0, ge=0, description="0 = every inferred frame")
    include_empty: bool = Field(True, description="publish frames with no pose above the threshold")
    format: Literal["json", "compact"] = Field(
        "json", description="keypoints payload: json (edgepose.keypoints/1) or compact (edgepose.kpc/1)"
    )
    keypoints_expiry_s: float = Field(
        2.0,
        ge=0,
        le=86400,
        description="MQTT 5 message expiry on keypoints, so a consumer that reconnects is not flooded with "
        "stale frames (whole seconds, at least 1; 0: never expire; ignored on MQTT 3.1.1)",
    )


class HealthConfig(_Section):
    interval_s: float = Field(10.0, gt=0, le=3600)


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    status_interval_s: float = Field(5.0, ge=0, description="one-line status log; 0 = off")


class WebConfig(_Section):
    """The live view: a small HTTP server with the annotated camera picture (see docs/web.md)."""

    enabled: bool = True
    listen: str = Field("127.0.0.1:8080", description="HOST:PORT or [IPv6]:PORT")
    max_clients: int = Field(4, ge=1, le=64, description="concurrent /stream.mjpg viewers")
    max_fps: float = Field(15.0, gt=0, le=60, description="stream frame rate cap (encoding costs CPU)")
    jpeg_quality: int = Field(80, ge=10, le=100)
    username: str = Field("edgepose", min_length=1, pattern=r"^[^:]+$")
    password_file: Path | None = None
    password_credential: str | None = Field(
        None, description="name of a systemd credential (LoadCredential=) holding the password"
    )
    allow_anonymous: bool = Field(False, description="serve a non-loopback listen address without a password")

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        listen_address(value)
        return value

    @model_validator(mode="after")
    def _private_by_default(self) -> WebConfig:
        host, _ = listen_address(self.listen)
        has_password = self.password_file is not None or self.password_credential is not None
        if self.enabled and not is_loopback(host) and not has_password and not self.allow_anonymous:
            raise ValueError(
                f"listen {self.listen} is reachable from the network and camera images are private: "
                "set web.password_file or web.password_credential, or web.allow_anonymous: true"
            )
        return self


def listen_address(value: str) -> tuple[str, int]:
    """'HOST:PORT' or '[V6]:PORT' as (host, port); ValueError naming the problem."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"'{value}' is not HOST:PORT (e.g. 127.0.0.1:8080 or 0.0.0.0:8080)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"'{value}': write an IPv6 address in brackets, e.g. [::1]:8080")
    # Port 0 lets the kernel pick a free one (tests; the log says which).
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"'{value}': port must be 0..65535")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


class PresenceConfig(_Section):
    enter_frames: int = Field(3, ge=1, le=1000, description="consecutive frames with a pose before present")
    leave_s: float = Field(5.0, gt=0, le=86400, description="seconds without a pose before absent")


class FallConfig(_Section):
    enabled: bool = False
    down_s: float = Field(3.0, gt=0, le=600, description="seconds the person must stay down before the alert")


class EventsConfig(_Section):
    fall: FallConfig = FallConfig()


class HomeAssistantConfig(_Section):
    discovery: bool = Field(True, description="publish MQTT discovery configs; false removes them")
    prefix: str = Field("homeassistant", min_length=1, description="Home Assistant's discovery prefix")

    @field_validator("prefix")
    @classmethod
    def _plain_topic(cls, value: str) -> str:
        return topic_prefix(value)


class CommandsConfig(_Section):
    enabled: bool = Field(True, description="subscribe to <base>/<id>/set")
    rate_per_s: float = Field(5.0, gt=0, le=1000, description="commands handled per second, sustained")
    burst: int = Field(20, ge=1, le=10000, description="commands handled at once before the rate applies")


def default_device_id(hostname: str | None = None, machine_id_paths: Sequence[Path] = MACHINE_ID_PATHS) -> str:
    """The hostname, unless it is one every stock image shares: then made unique by the machine id."""
    name = socket.gethostname() if hostname is None else hostname
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", name.split(".")[0]) or "edgepose"
    if host.lower() not in STOCK_HOSTNAMES:
        return host
    return f"{host}-{machine_suffix(machine_id_paths)}"


def machine_suffix(machine_id_paths: Sequence[Path] = MACHINE_ID_PATHS) -> str:
    """8 hex digits unique to this machine: /etc/machine-id, else the MAC address."""
    for path in machine_id_paths:
        try:
            machine_id = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if re.fullmatch(r"[0-9a-fA-F]{32}", machine_id):
            return machine_id[:8].lower()
    return f"{uuid.getnode():012x}"[-8:]


class Config(_Section):
    device_id: str = Field(default_factory=default_device_id, pattern=r"^[A-Za-z0-9_.-]+$")
    camera: CameraConfig = CameraConfig()
    model: ModelConfig = ModelConfig()
    mqtt: MqttConfig = MqttConfig()
    publish: PublishConfig = PublishConfig()
    health: HealthConfig = HealthConfig()
    logging: LoggingConfig = LoggingConfig()
    web: WebConfig = WebConfig()
    presence: PresenceConfig = PresenceConfig()
    events: EventsConfig = EventsConfig()
    homeassistant: HomeAssistantConfig = HomeAssistantConfig()
    commands: CommandsConfig = CommandsConfig()


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
        raise ConfigError([f"--set {redact_override(text)}: expected KEY=VALUE, e.g. --set mqtt.port=1884"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def redact_override(text: str) -> str:
    """`--set` as it may be printed: the value of anything secret-looking is replaced by ***."""
    key, sep, _ = text.partition("=")
    if _SECRET_KEY.search(key) or (not sep and _SECRET_KEY.search(text)):
        return f"{key}=***" if sep else "***"
    return text


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error, not a silent override."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: PyYAML reports it below
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (first given on line {first})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _read_config_text(path: Path) -> str:
    """The file's text; ConfigError (not a hang, not MemoryError) for FIFOs, devices and huge files."""
    try:
        # stat, not open: opening a FIFO blocks until a writer comes, and /dev/urandom never ends.
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError([f"{path}:0: (file): config file not found"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}:0: (file): cannot read: {exc.strerror or exc}"]) from None
    if stat.S_ISDIR(info.st_mode):
        raise ConfigError([f"{path}:0: (file): is a directory, expected a YAML file"])
    if stat.S_ISCHR(info.st_mode) and os.path.samefile(path, os.devnull):
        return ""  # `-c /dev/null`: the built-in defaults, a common idiom
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError([f"{path}:0: (file): not a regular file (a FIFO, socket or device); expected a YAML file"])
    if info.st_size > MAX_CONFIG_BYTES:
        raise ConfigError([f"{path}:0: (file): {info.st_size} bytes; a config is at most {MAX_CONFIG_BYTES} bytes"])
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)  # the file may have grown since stat
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError([f"{path}:0: (file): larger than {MAX_CONFIG_BYTES} bytes"])
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([f"{path}:0: (file): cannot read: {reason}"]) from None


def _parse_yaml(path: Path, text: str) -> tuple[dict[str, Any], yaml.Node | None]:
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        loaded = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        if mark is not None and mark.index >= len(text) and exc.context_mark is not None:
            # Found only at the end of the file (an unclosed quote or bracket): the line that opened it.
            mark = exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        problem = exc.problem or str(exc)
        raise ConfigError([f"{path}:{line}: (yaml): {problem}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}:0: (yaml): {exc}"]) from None
    finally:
        loader.dispose()
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError([f"{path}:1: (top level): expected a mapping of sections, got {type(loaded).__name__}"])
    return loaded, node


def load_config(path: Path | None, overrides: Sequence[str] = ()) -> tuple[Config, Path | None]:
    """Load, merge `--set` overrides and validate. Raises ConfigError listing every problem."""
    try:
        return _load_config(path, overrides)
    except (RecursionError, MemoryError) as exc:
        # Nesting thousands deep, or an alias bomb: not a config, and never a traceback.
        what = "nested too deeply" if isinstance(exc, RecursionError) else "too large to load"
        raise ConfigError([f"{path or '<defaults>'}:0: (yaml): {what}"]) from None


def _load_config(path: Path | None, overrides: Sequence[str]) -> tuple[Config, Path | None]:
    data: dict[str, Any] = {}
    lines = _LineIndex(None)
    label = "<defaults>"
    if path is not None:
        label = str(path)
        data, node = _parse_yaml(path, _read_config_text(path))
        lines = _LineIndex(node)

    override_keys: dict[str, str] = {}
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
        override_keys[key] = redact_override(text)

    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            dotted = _dotted(loc)
            message = error["msg"]
            if error["type"] == "value_error" and "error" in error.get("ctx", {}):
                # Our own validators' words, without pydantic's "Value error, " in front.
                message = str(error["ctx"]["error"])
            if error["type"] == "extra_forbidden":
                message = "unknown key"
                parent = _dotted(loc[:-1]) if len(loc) > 1 else None
                allowed = _allowed_keys(loc[:-1])
                if allowed:
                    message += f" (allowed{' in ' + parent if parent else ''}: {', '.join(allowed)})"
            origin = next((override_keys[k] for k in override_keys if dotted == k or dotted.startswith(k + ".")), None)
            # A check across a section's keys (web.listen without a password) fails on the section:
            # a --set inside it is the likelier cause, and the file's line alone would mislead.
            inside = next((override_keys[k] for k in override_keys if dotted and k.startswith(dotted + ".")), None)
            where = lines.line_of(loc) if path is not None else None
            place = f"{label}:{where if where is not None else 0}"
            if origin is not None:
                problems.append(f"--set {origin}: {dotted}: {message}")
            elif inside is not None:
                problems.append(f"--set {inside} (with {place}): {dotted}: {message}")
            else:
                problems.append(f"{place}: {dotted}: {message}")
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
    return read_password(mqtt.password_credential, mqtt.password_file, "mqtt")


def read_web_password(web: WebConfig) -> str | None:
    """The live view's HTTP Basic password, from a systemd credential or a file."""
    return read_password(web.password_credential, web.password_file, "web")


def read_password(credential: str | None, file: Path | None, section: str) -> str | None:
    if credential:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ConfigError(
                [
                    f"(env):0: {section}.password_credential: CREDENTIALS_DIRECTORY is not set; "
                    f"run under systemd with LoadCredential={credential}:/path"
                ]
            )
        return _read_secret(Path(directory) / credential, f"{section}.password_credential")
    if file:
        return _read_secret(file, f"{section}.password_file")
    return None


def _read_secret(path: Path, key: str) -> str | None:
    """The secret, or None when the file is empty (the unit's SetCredential= fallback is a newline)."""
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n") or None
    except OSError as exc:
        raise ConfigError([f"{path}:0: {key}: cannot read password: {exc.strerror or exc}"]) from None
