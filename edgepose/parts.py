"""The composition root: the parts a Config needs, built, swapped and closed as one bundle.

Every part is a context manager: entering it makes it ready (a source is opened, the publisher
starts connecting), leaving it closes it. `build_bundle` enters the parts in `PARTS` order under
one `contextlib.ExitStack`, so a failure half-way closes what was built and `Bundle.close()`
closes everything in reverse order, each part exactly once.

`rebuild` is the reload: it builds new parts only for what changed (a part is rebuilt when its
`key` of the config changed or a part it `needs` was rebuilt), reuses the others, and returns a
new bundle; the caller swaps it in with one assignment and then closes the replaced parts with
`Bundle.close_replaced`. If anything fails while building, what was built is closed, the old
bundle is left whole and running, and `ReloadFailed` lists one line per problem.

Adding a part (e.g. a web server or an MQTT command handler): write a builder
`build_x(config, parts, host) -> AbstractContextManager[X]`, append
`PartSpec("x", key=lambda c: c.x, needs=("publisher",), build=build_x)` to `PARTS`, and read it
with `bundle.part("x", X)`. `parts` holds the parts built before it (new or reused); `host`
is the daemon's narrow face (`Host`): health, reload and stop requests.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, TypeVar

from edgepose import __version__
from edgepose.commands import RuntimeSettings
from edgepose.config import (
    Config,
    is_loopback,
    listen_address,
    read_mqtt_password,
    read_web_password,
)
from edgepose.control import Control, build_control
from edgepose.errors import ConfigError, EdgeposeError, WebError
from edgepose.inference.backends import cpu_build, model_label, select_backend
from edgepose.inference.runtime import InferenceBackend, load_runtime
from edgepose.inference.stage import Mode, PoseStage, build_stage
from edgepose.models import ResolvedModel, default_model_dir, load_manifest, resolve_model, sample_paths
from edgepose.mqtt.homeassistant import DeviceInfo
from edgepose.mqtt.payloads import HealthReport, health_payload
from edgepose.mqtt.publisher import MqttPublisher
from edgepose.mqtt.topics import Topics
from edgepose.sources.base import FrameSource
from edgepose.sources.factory import open_source
from edgepose.threadtune import pick_threads
from edgepose.web.live import LiveFeed

if TYPE_CHECKING:
    from edgepose.web.server import WebServer

log = logging.getLogger(__name__)

T = TypeVar("T")


class Host(Protocol):
    """What a part may ask of the running daemon. Parts get this, never the Daemon itself."""

    def health_report(self) -> HealthReport: ...

    def request_reload(self) -> None: ...

    def request_stop(self, reason: str) -> None: ...

    def apply_settings(self, settings: RuntimeSettings) -> None:
        """A remote command changed the runtime settings (pause/resume, publish, model)."""
        ...


Builder = Callable[[Config, Mapping[str, object], Host], AbstractContextManager[object]]
Handover = Callable[[object, Config, Config], AbstractContextManager[None]]
Carry = Callable[[object, object], None]


@dataclass(frozen=True)
class PartSpec:
    """One part of the bundle.

    name     how other parts and the daemon find it
    key      the slice of the config it is built from: when it differs, reload rebuilds the part
    needs    parts it is built from: when one of them is rebuilt, so is this one
    build    (config, parts built so far, host) -> a context manager whose value is the part
    handover optional: (old part, old config, new config) -> a context manager around the whole
             reload, for a device only one holder may open (a USB Coral, a camera): it lends the
             device to the replacement and, when the reload fails, gives it back to the old part
    carry    optional: (old part, new part) -> None, right after the new part is built and before
             it is swapped in: state the replacement continues rather than starts afresh (who is
             in the room)
    """

    name: str
    key: Callable[[Config], object]
    needs: tuple[str, ...]
    build: Builder
    handover: Handover | None = None
    carry: Carry | None = None


# -- the model ------------------------------------------------------------------------------------


@dataclass
class Inference:
    """The model side: the backend and the stage running on it. Closing it closes the backend."""

    backend: InferenceBackend
    stage: PoseStage
    model: ResolvedModel
    num_threads: int
    backend_reason: str | None

    def __enter__(self) -> Inference:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.backend.close()


def stage_mode(config: Config) -> Mode:
    # A folder of unrelated photos: every frame stands alone (no crop tracking, no smoothing).
    return "stills" if config.camera.source.stills else "video"


def build_inference(config: Config) -> Inference:
    manifest = load_manifest()
    model_dir = default_model_dir(config.model.dir)
    model = resolve_model(config.model.name, model_dir, manifest)
    runtime = load_runtime(config.model.runtime)
    model_config = config.model
    if model_config.num_threads == "auto" and model_config.backend != "edgetpu":
        frame_size_px = (config.camera.width, config.camera.height)
        threads = pick_threads(cpu_build(model, manifest, model_dir).path, runtime, model_dir, frame_size_px)
        model_config = model_config.model_copy(update={"num_threads": threads})
    choice = select_backend(model_config, model, manifest, model_dir, runtime)
    try:
        # The payload names the network the user chose; `backend` says where it runs right now.
        label = model_label(cpu_build(model, manifest, model_dir))
        stage = build_stage(choice.backend, label, config.model, stage_mode(config))
    except BaseException:
        choice.backend.close()
        raise
    return Inference(choice.backend, stage, choice.model, choice.num_threads, choice.reason)


def _model_key(config: Config) -> object:
    return (config.model, stage_mode(config))


def _build_inference_part(config: Config, parts: Mapping[str, object], host: Host) -> Inference:
    return build_inference(config)


@contextlib.contextmanager
def _lend_edgetpu(old: object, old_config: Config, new_config: Config) -> Iterator[None]:
    """A USB Coral can be held by one process (one interpreter) at a time: the running backend
    moves to its CPU interpreter while the new model is built, and takes the device back if the
    reload fails. If it cannot take it back, it keeps running on the CPU and health says why."""
    assert isinstance(old, Inference)
    lend = getattr(old.backend, "lend_device", None)
    if lend is None or not lend("lent to the new model during a reload"):
        yield
        return
    try:
        yield
    except BaseException:
        old.backend.reclaim_device()  # type: ignore[attr-defined]
        raise


# -- the source -----------------------------------------------------------------------------------


def build_source(config: Config) -> FrameSource:
    """The configured source, not yet opened."""
    photos = None
    if config.camera.source.uses_sample_photos:
        photos = sample_paths(default_model_dir(config.model.dir), load_manifest())
    return open_source(config.camera, photos, _manifest_input_px(config) if config.camera.isp_scale else None)


def _manifest_input_px(config: Config) -> int | None:
    """The model's square input size from the manifest, for camera.isp_scale (None: a .tflite path)."""
    spec = load_manifest().models.get(config.model.name)
    return spec.input_size if spec is not None else None


@contextlib.contextmanager
def opened(source: FrameSource) -> Iterator[FrameSource]:
    source.open()
    try:
        yield source
    finally:
        source.close()


def _build_source_part(config: Config, parts: Mapping[str, object], host: Host) -> AbstractContextManager[FrameSource]:
    return opened(build_source(config))


def _source_key(config: Config) -> object:
    # The demo source reads its photos from the model directory; the ISP scales to the model's input.
    demo_dir = config.model.dir if config.camera.source.uses_sample_photos else None
    return (config.camera, demo_dir, config.model.name if config.camera.isp_scale else None)


@contextlib.contextmanager
def _lend_camera(old: object, old_config: Config, new_config: Config) -> Iterator[None]:
    """A camera device opens once: close the running one while the new one opens, reopen it on failure."""
    source: FrameSource = old  # type: ignore[assignment]
    if not (old_config.camera.source.is_device and new_config.camera.source.is_device):
        yield
        return
    source.close()
    try:
        yield
    except BaseException:
        try:
            source.open()
        except EdgeposeError as exc:
            # The capture loop keeps reopening it with back-off; health shows the camera problem.
            log.error("reopening %s after the failed reload: %s", source.description, exc)
        raise


# -- the publisher --------------------------------------------------------------------------------


def build_publisher(config: Config) -> MqttPublisher:
    password = read_mqtt_password(config.mqtt)
    client_id = config.mqtt.client_id or f"edgepose-{config.device_id}"
    return MqttPublisher(config.mqtt, Topics(config.mqtt.base_topic, config.device_id), client_id, password)


@contextlib.contextmanager
def started(publisher: MqttPublisher) -> Iterator[MqttPublisher]:
    """Connect in the background; on leaving, publish `offline`, flush and disconnect (bounded)."""
    publisher.start()
    try:
        yield publisher
    finally:
        publisher.stop(timeout_s=1.0)  # within systemd's and the README's 2 s from SIGTERM to exit


@contextlib.contextmanager
def _hand_over_session(old: object, old_config: Config, new_config: Config) -> Iterator[None]:
    """One broker session at a time: with the same client id the broker would throw one of the two
    out (and their `online`/`offline` could land in either order). The old one says `offline` and
    disconnects before the new one connects; if the reload fails, it connects again."""
    assert isinstance(old, MqttPublisher)
    old.stop(timeout_s=1.0)
    try:
        yield
    except BaseException:
        old.start()
        raise


def _build_publisher_part(
    config: Config, parts: Mapping[str, object], host: Host
) -> AbstractContextManager[MqttPublisher]:
    return started(build_publisher(config))


# -- the live view --------------------------------------------------------------------------------


def _build_web_part(config: Config, parts: Mapping[str, object], host: Host) -> AbstractContextManager[object]:
    """The web server, started; None when `web.enabled` is false or its address cannot be bound.

    A taken port does not stop the daemon: publishing poses is its job, the live view a help to
    aim the camera. The error is logged; a reload with another `web.listen` tries again.
    """
    if not config.web.enabled:
        return contextlib.nullcontext(None)
    from edgepose.web.server import WebServer  # aiohttp is imported only when the live view is on

    password = read_web_password(config.web)
    if password is None and not is_loopback(listen_address(config.web.listen)[0]) and not config.web.allow_anonymous:
        # The validator saw a password source; it turned out empty. Never serve the LAN without one.
        raise ConfigError([f"web: the password for {config.web.listen} is empty; put one in the file or credential"])
    server = WebServer(
        config.web,
        LiveFeed(),
        lambda: health_payload(host.health_report()),
        config.device_id,
        password,
    )
    try:
        server.start()
    except WebError as exc:
        log.error("live view off: %s", exc)
        return contextlib.nullcontext(None)
    return contextlib.closing(server)


@contextlib.contextmanager
def _lend_web_port(old: object, old_config: Config, new_config: Config) -> Iterator[None]:
    """The new server may listen on the old one's address: stop the old one first, restart it if the reload fails."""
    server: WebServer | None = old  # type: ignore[assignment]
    if server is None:
        yield
        return
    server.close()
    try:
        yield
    except BaseException:
        try:
            server.start()
        except WebError as exc:
            log.error("live view off after the failed reload: %s", exc)
        raise


# -- presence, events, commands and Home Assistant discovery ------------------------------------


def _build_control_part(config: Config, parts: Mapping[str, object], host: Host) -> Control:
    publisher = parts[PUBLISHER]
    assert isinstance(publisher, MqttPublisher)
    info = DeviceInfo(
        device_id=config.device_id,
        model=config.model.name,
        sw_version=__version__,
        configuration_url=live_view_url(config),
        max_fps=config.camera.fps,
    )
    return build_control(config, publisher, host, info)


def _carry_presence(old: object, new: object) -> None:
    assert isinstance(old, Control) and isinstance(new, Control)
    new.monitor.take_over(old.monitor)


def _control_key(config: Config) -> object:
    # Rebuilt (and its subscriptions handed over) when one of these changes, or the publisher does.
    return (
        config.presence,
        config.events,
        config.homeassistant,
        config.commands,
        config.model.name,
        config.camera.fps,
        live_view_url(config),
    )


def live_view_url(config: Config) -> str | None:
    """The live view's address for Home Assistant's "visit device" link: None when it is off,
    listens on loopback only (another machine cannot open it) or on a port the kernel picks."""
    if not config.web.enabled:
        return None
    host, port = listen_address(config.web.listen)
    if is_loopback(host) or port == 0:
        return None
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


# -- the bundle -----------------------------------------------------------------------------------

MODEL = "model"
SOURCE = "source"
PUBLISHER = "publisher"
WEB = "web"
CONTROL = "control"

# Build order; closing runs in reverse (extra parts first, the model last).
PARTS: tuple[PartSpec, ...] = (
    PartSpec(
        MODEL, key=lambda c: (c.model, stage_mode(c)), needs=(), build=_build_inference_part, handover=_lend_edgetpu
    ),
    PartSpec(SOURCE, key=_source_key, needs=(), build=_build_source_part, handover=_lend_camera),
    PartSpec(
        PUBLISHER,
        key=lambda c: (c.mqtt, c.device_id),
        needs=(),
        build=_build_publisher_part,
        handover=_hand_over_session,
    ),
    PartSpec(
        WEB,
        key=lambda c: (c.web, c.device_id),
        needs=(),
        build=_build_web_part,
        handover=_lend_web_port,
    ),
    PartSpec(CONTROL, key=_control_key, needs=(PUBLISHER,), build=_build_control_part, carry=_carry_presence),
    # Later parts (a web server, an MQTT command handler) go here; see the module docstring.
)


class ReloadFailed(EdgeposeError):
    """Building the new parts failed; the old bundle is untouched. One line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


class Bundle:
    """The parts of one configuration, each owned by its own ExitStack, closed in reverse build order."""

    def __init__(
        self, config: Config, specs: Sequence[PartSpec], parts: dict[str, object], stacks: dict[str, ExitStack]
    ):
        self.config = config
        self.specs = tuple(specs)
        self._parts = parts
        self._stacks = stacks
        self._closed = False

    # Typed views of the core parts.
    @property
    def inference(self) -> Inference:
        return self.part(MODEL, Inference)

    @property
    def source(self) -> FrameSource:
        return self._parts[SOURCE]  # type: ignore[return-value]

    @property
    def publisher(self) -> MqttPublisher:
        return self.part(PUBLISHER, MqttPublisher)

    @property
    def live_feed(self) -> LiveFeed | None:
        """Where the pipeline offers finished frames for the live view; None without one."""
        web = self._parts.get(WEB)
        feed = getattr(web, "feed", None)
        return feed if isinstance(feed, LiveFeed) else None

    def part(self, name: str, kind: type[T]) -> T:
        value = self._parts[name]
        if not isinstance(value, kind):
            raise TypeError(f"part {name} is a {type(value).__name__}, not a {kind.__name__}")
        return value

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.specs)

    def close(self) -> None:
        """Close every part, last built first. Idempotent: a part's stack closes it only once."""
        if self._closed:
            return
        self._closed = True
        with ExitStack() as stack:
            for spec in self.specs:
                stack.push(self._stacks[spec.name])

    def close_replaced(self, successor: Bundle) -> None:
        """After a swap: close the parts `successor` replaced; the ones it reuses now belong to it."""
        self._closed = True
        with ExitStack() as stack:
            for spec in self.specs:
                if successor._stacks.get(spec.name) is not self._stacks[spec.name]:
                    stack.push(self._stacks[spec.name])

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _enter(
    spec: PartSpec, config: Config, parts: Mapping[str, object], host: Host, predecessor: object | None = None
) -> tuple[object, ExitStack]:
    with ExitStack() as stack:
        value = stack.enter_context(spec.build(config, parts, host))
        if predecessor is not None and spec.carry is not None:
            spec.carry(predecessor, value)
        return value, stack.pop_all()


class StoppedWhileBuilding(Exception):
    """A stop request came while the bundle was being built; what was built has been closed."""


def build_bundle(
    config: Config, host: Host, specs: Sequence[PartSpec] = PARTS, stop: threading.Event | None = None
) -> Bundle:
    """Build every part; on a failure close what was built and re-raise the failure.

    `stop` is looked at between parts: a SIGTERM during a slow model load or camera open is
    honoured as soon as that part is built (StoppedWhileBuilding), not after the whole start."""
    parts: dict[str, object] = {}
    stacks: dict[str, ExitStack] = {}
    with ExitStack() as building:
        for spec in specs:
            if stop is not None and stop.is_set():
                raise StoppedWhileBuilding(spec.name)
            parts[spec.name], stacks[spec.name] = _enter(spec, config, parts, host)
            building.push(stacks[spec.name])
        building.pop_all()
    return Bundle(config, specs, parts, stacks)


def changed_parts(old: Bundle, new_config: Config) -> list[str]:
    """Names of the parts a reload to new_config rebuilds, in build order."""
    rebuilt: list[str] = []
    for spec in old.specs:
        if spec.key(new_config) != spec.key(old.config) or any(need in rebuilt for need in spec.needs):
            rebuilt.append(spec.name)
    return rebuilt


def rebuild(old: Bundle, new_config: Config, host: Host) -> Bundle:
    """A new bundle for new_config that reuses old's unchanged parts. Raises ReloadFailed, leaving old whole.

    The caller swaps the result in and then calls `old.close_replaced(new)`.
    """
    rebuilt = set(changed_parts(old, new_config))
    parts: dict[str, object] = {}
    stacks: dict[str, ExitStack] = {}
    try:
        with ExitStack() as handovers, ExitStack() as building:
            for spec in old.specs:
                if spec.name not in rebuilt:
                    parts[spec.name], stacks[spec.name] = old._parts[spec.name], old._stacks[spec.name]
                    continue
                if spec.handover is not None:
                    handovers.enter_context(spec.handover(old._parts[spec.name], old.config, new_config))
                try:
                    parts[spec.name], stacks[spec.name] = _enter(spec, new_config, parts, host, old._parts[spec.name])
                except EdgeposeError as exc:
                    raise ReloadFailed([f"{spec.name}: {exc}"]) from exc
                except Exception as exc:  # a bug in a part must not take the running daemon down
                    log.exception("building the %s part for the reload", spec.name)
                    raise ReloadFailed([f"{spec.name}: internal error: {type(exc).__name__}: {exc}"]) from exc
                building.push(stacks[spec.name])
            building.pop_all()
    except ReloadFailed:
        raise
    except Exception as exc:  # a handover failed to lend or give back a device
        log.exception("handing a device over for the reload")
        raise ReloadFailed([f"handover: {type(exc).__name__}: {exc}"]) from exc
    return Bundle(new_config, old.specs, parts, stacks)
