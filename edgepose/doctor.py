"""`edgepose doctor`: what works and what does not on this machine, one line per check, with the fix.

Each check answers from files, imports and one short network probe, never from a running daemon:
it must also work when the daemon will not start. Pi-only files (/proc/device-tree/model, the
firmware's get_throttled, /sys/class/thermal, /dev/apex_*, USB ids) are read under `Host.root`,
so tests give it a directory of stand-ins. The whole run stays under 10 s: the broker probe has a
deadline, and nothing else waits on a device.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import platform
import re
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import ModuleType
from typing import Any

from edgepose.config import Config, default_config_path, load_config, read_mqtt_password
from edgepose.errors import ConfigError, EdgeposeError

BROKER_TIMEOUT_S = 4.0
MIN_FREE_DISK_MB = 200  # two model builds plus room for an update
LOW_FREE_DISK_MB = 50
TEMP_WARN_C = 70.0  # the Pi starts soft-throttling at 80 °C (60 °C on some firmware settings)
TEMP_FAIL_C = 80.0
SYSTEMD_UNIT = "edgepose.service"
EDGETPU_LIBRARY = "libedgetpu.so.1"

# get_throttled bits (Raspberry Pi firmware, `vcgencmd get_throttled`): now (0-3), since boot (16-19).
THROTTLE_BITS = {
    0: "under-voltage now",
    1: "ARM frequency capped now",
    2: "throttled now",
    3: "soft temperature limit now",
    16: "under-voltage has occurred",
    17: "ARM frequency capping has occurred",
    18: "throttling has occurred",
    19: "soft temperature limit has occurred",
}


class Status(str, Enum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None

    def as_json(self) -> dict[str, str | None]:
        return {"name": self.name, "status": self.status.value, "detail": self.detail, "fix": self.fix}


def _import(name: str) -> ModuleType:
    return importlib.import_module(name)


def _run(argv: Sequence[str], timeout_s: float = 2.0) -> str | None:
    """A command's stdout, or None when it is missing, fails or hangs."""
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


@dataclass(frozen=True)
class Host:
    """Where the doctor looks. Tests point `root` at a directory of stand-ins and swap the helpers."""

    root: Path = Path("/")
    import_module: Callable[[str], ModuleType] = _import
    run: Callable[[Sequence[str]], str | None] = _run
    load_library: Callable[[str], object] = ctypes.CDLL
    machine: str = field(default_factory=platform.machine)

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def read(self, absolute: str) -> str | None:
        try:
            return self.path(absolute).read_text(encoding="utf-8", errors="replace").replace("\x00", "").strip()
        except OSError:
            return None


def pi_model(host: Host) -> str | None:
    return host.read("/proc/device-tree/model") or None


# -- the checks, in the order a person debugging a Pi would go ----------------------------------


def check_platform(host: Host) -> Check:
    os_release = host.read("/etc/os-release") or ""
    pretty = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', os_release, re.M)
    os_name = pretty.group(1) if pretty else platform.system()
    model = pi_model(host)
    detail = f"{host.machine}, {os_name}, {model or 'not a Raspberry Pi (no /proc/device-tree/model)'}"
    if host.machine in ("armv7l", "armv6l"):
        return Check(
            "platform",
            Status.FAIL,
            detail + ": a 32-bit OS; LiteRT has no 32-bit ARM wheels",
            "install Raspberry Pi OS (64-bit), Bookworm or later",
        )
    if model and host.machine != "aarch64":
        return Check("platform", Status.WARN, detail, "use the 64-bit Raspberry Pi OS")
    return Check("platform", Status.PASS, detail)


def check_python() -> Check:
    version = platform.python_version()
    # Older Pythons cannot import this module at all (pip refuses to install it there).
    return Check("python", Status.PASS, f"Python {version} ({sys.executable})")


def check_runtime(config: Config | None) -> Check:
    from edgepose.inference.runtime import load_runtime

    choice = config.model.runtime if config is not None else "auto"
    try:
        runtime = load_runtime(choice)
    except EdgeposeError as exc:
        return Check("tflite runtime", Status.FAIL, str(exc), "pip install ai-edge-litert (in edgepose's venv)")
    return Check("tflite runtime", Status.PASS, f"{runtime.name} {runtime.version}")


def _system_numpy(host: Host) -> str | None:
    """Debian's numpy (what python3-picamera2's compiled helpers were built against), if installed."""
    for info in sorted(host.path("/usr/lib/python3/dist-packages").glob("numpy-*.*-info")):
        return info.name.split("-")[1].removesuffix(".egg").removesuffix(".dist")
    return None


def _picamera2_installed(host: Host) -> bool:
    return host.path("/usr/lib/python3/dist-packages/picamera2").is_dir()


def check_numpy(host: Host) -> Check:
    try:
        numpy = host.import_module("numpy")
    except ImportError as exc:
        return Check("numpy", Status.FAIL, f"numpy does not import: {exc}", "pip install 'numpy<2' in edgepose's venv")
    version = str(numpy.__version__)
    where = str(Path(str(numpy.__file__)).parent)
    system = _system_numpy(host)
    if not _picamera2_installed(host):
        return Check("numpy", Status.PASS, f"numpy {version} ({where}); no apt picamera2 to match")
    if version.split(".")[0] != "1" and (system is None or system.split(".")[0] == "1"):
        return Check(
            "numpy",
            Status.FAIL,
            f"numpy {version} from {where} shadows Debian's numpy {system or '1.x'}, which picamera2's "
            "compiled helpers (simplejpeg, python3-libcamera) are built against",
            "pip install 'numpy<2' in edgepose's venv (scripts/install_pi.sh does: pip install 'edgepose[pi]')",
        )
    return Check("numpy", Status.PASS, f"numpy {version} ({where}); Debian's is {system or 'not installed'}")


def check_picamera2(host: Host, config: Config | None) -> Check:
    source = config.camera.source if config is not None else None
    wanted = source is None or source.may_use_picamera2
    required = source is not None and source.needs_picamera2
    try:
        module = host.import_module("picamera2")
    except Exception as exc:  # a broken build raises anything from ImportError to numpy's ValueError
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if pi_model(host) is None:
            return Check("picamera2", Status.SKIP, f"not a Raspberry Pi; picamera2 not importable ({reason})")
        fix = "sudo apt install python3-picamera2; the venv needs --system-site-packages (scripts/install_pi.sh)"
        if "numpy" in reason.lower() or "dtype size changed" in reason:
            fix = "pip install 'numpy<2' in edgepose's venv: picamera2's helpers need Debian's numpy 1.x"
        return Check("picamera2", Status.FAIL if wanted else Status.WARN, f"does not import: {reason}", fix)
    try:
        cameras = module.Picamera2.global_camera_info()
    except Exception as exc:  # libcamera errors surface as RuntimeError or its own types
        return Check("picamera2", Status.FAIL, f"listing cameras failed: {exc}", "check the camera cable; reboot")
    if not cameras:
        status = Status.FAIL if required else Status.WARN
        return Check(
            "picamera2",
            status,
            "imports, but no camera is attached",
            "check the ribbon cable (contacts towards the board on a Pi 4) and `rpicam-hello --list-cameras`",
        )
    names = ", ".join(
        f"{c.get('Num', i)}: {c.get('Model', '?')} ({c.get('Location', '?')})" for i, c in enumerate(cameras)
    )
    return Check("picamera2", Status.PASS, f"{len(cameras)} camera(s): {names}")


def check_v4l2(host: Host, config: Config | None) -> Check:
    nodes = sorted(host.path("/dev").glob("video*"), key=lambda p: (len(p.name), p.name))
    named = []
    for found in nodes:
        name = host.read(f"/sys/class/video4linux/{found.name}/name")
        named.append(f"{found.name} ({name})" if name else found.name)
    source = config.camera.source if config is not None else None
    node = source.v4l2_node if source is not None else None
    if not nodes:
        if node is not None:
            return Check(
                "v4l2", Status.FAIL, f"camera.source is {source} but there is no /dev/video*", "plug in the camera"
            )
        return Check("v4l2", Status.PASS, "no V4L2 devices (not needed by camera.source)")
    if node is not None and not host.path(node).exists():
        return Check("v4l2", Status.FAIL, f"{node} does not exist; present: {', '.join(named)}", "set camera.source")
    return Check("v4l2", Status.PASS, ", ".join(named[:6]) + (f" and {len(named) - 6} more" if len(named) > 6 else ""))


def check_coral(host: Host, config: Config | None) -> Check:
    from edgepose.inference.edgetpu import probe_edgetpu

    device = config.model.edgetpu_device if config is not None else ""
    probe = probe_edgetpu(device, host.path("/sys"), host.path("/dev"))
    backend = config.model.backend if config is not None else "auto"
    if probe.present:
        return Check("coral", Status.PASS, probe.description)
    if backend == "edgetpu":
        return Check("coral", Status.FAIL, probe.description, "plug the Coral in (USB 3 port) or set model.backend")
    return Check("coral", Status.SKIP, probe.description + f" (model.backend {backend}: runs on the CPU)")


def check_libedgetpu(host: Host, config: Config | None, coral: Check, runtime: Check) -> Check:
    try:
        host.load_library(EDGETPU_LIBRARY)
    except OSError as exc:
        if coral.status is Status.PASS:
            return Check(
                "libedgetpu",
                Status.FAIL,
                f"a Coral is attached but {EDGETPU_LIBRARY} does not load: {exc}",
                "sudo apt install libedgetpu1-std (scripts/install_pi.sh --coral)",
            )
        return Check("libedgetpu", Status.SKIP, f"{EDGETPU_LIBRARY} not installed (no Coral)")
    if coral.status is not Status.PASS or config is None:
        return Check("libedgetpu", Status.PASS, f"{EDGETPU_LIBRARY} loads; no Coral to test it with")
    if runtime.status is not Status.PASS:
        return Check("libedgetpu", Status.SKIP, "loads, but no TFLite runtime to pair it with")
    return _edgetpu_invoke(config)


def _edgetpu_invoke(config: Config) -> Check:
    """One invoke of the EdgeTPU build: proves libedgetpu, the runtime and the Coral work together."""
    import numpy as np

    from edgepose.inference.backends import edgetpu_build
    from edgepose.inference.runtime import load_runtime, open_edgetpu_backend
    from edgepose.models import default_model_dir, load_manifest, resolve_model

    try:
        manifest = load_manifest()
        model_dir = default_model_dir(config.model.dir)
        model = edgetpu_build(resolve_model(config.model.name, model_dir, manifest), manifest, model_dir)
        backend = open_edgetpu_backend(model.path, load_runtime(config.model.runtime), config.model.edgetpu_device)
    except EdgeposeError as exc:
        return Check(
            "libedgetpu",
            Status.FAIL,
            str(exc),
            "libedgetpu and the runtime must match: tflite-runtime 2.5 pairs with libedgetpu1 16.0 "
            "(see docs/edgetpu.md); is another process holding the Coral?",
        )
    try:
        spec = backend.input_spec
        started = time.perf_counter()
        backend.invoke(np.zeros(spec.shape, dtype=spec.dtype))
        invoke_ms = (time.perf_counter() - started) * 1e3
    except (EdgeposeError, RuntimeError, ValueError) as exc:
        return Check("libedgetpu", Status.FAIL, f"test invoke failed: {exc}", "replug the Coral; see docs/edgetpu.md")
    finally:
        backend.close()
    return Check("libedgetpu", Status.PASS, f"test invoke of {model.path.name} on the Coral: {invoke_ms:.1f} ms")


def check_models(config: Config | None, coral: Check) -> Check:
    from edgepose.inference.backends import is_edgetpu_compiled
    from edgepose.models import default_model_dir, load_manifest, sha256_of

    if config is None:
        return Check("models", Status.SKIP, "config invalid")
    manifest = load_manifest()
    model_dir = default_model_dir(config.model.dir)
    spec = manifest.models.get(config.model.name)
    if spec is None:
        path = Path(config.model.name).expanduser()
        if path.is_file():
            return Check("models", Status.PASS, f"{path} (a path, not in the manifest: no checksum to compare)")
        return Check(
            "models", Status.FAIL, f"model file not found: {path}", "set model.name to a manifest name or path"
        )
    names = [spec.name]
    # The EdgeTPU build matters when it will be used: a Coral is attached, or the config demands one.
    if spec.edgetpu_twin and (
        config.model.backend == "edgetpu" or (config.model.backend == "auto" and coral.status is Status.PASS)
    ):
        names.append(spec.edgetpu_twin)
    problems, good = [], []
    for name in names:
        entry = manifest.models[name]
        path = model_dir / entry.file
        if not path.is_file():
            problems.append(f"{name} missing in {model_dir}")
            continue
        recorded = model_dir / f"{entry.file}.sha256"
        expected = entry.sha256 or (recorded.read_text().split()[0] if recorded.is_file() else None)
        actual = sha256_of(path)
        if expected is not None and actual != expected.lower():
            problems.append(f"{name}: sha256 {actual[:12]}… does not match {expected[:12]}…")
        elif is_edgetpu_compiled(path) != (entry.backend == "edgetpu"):
            problems.append(f"{name}: the file is not the {entry.backend} build the manifest says")
        else:
            good.append(f"{name} ({'sha256 ok' if expected else 'no checksum recorded'})")
    if problems:
        fetch = " ".join(names)
        return Check("models", Status.FAIL, "; ".join(problems), f"edgepose models fetch {fetch}")
    return Check("models", Status.PASS, f"{', '.join(good)} in {model_dir}")


def check_config(path: Path | None, overrides: Sequence[str]) -> tuple[Check, Config | None]:
    try:
        config, used = load_config(path, overrides)
    except ConfigError as exc:
        more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
        return Check("config", Status.FAIL, exc.problems[0] + more, "edgepose config check shows every problem"), None
    return Check("config", Status.PASS, f"{used if used is not None else 'built-in defaults'} is valid"), config


def check_broker(config: Config | None, timeout_s: float = BROKER_TIMEOUT_S) -> Check:
    """Connect with the configured TLS and credentials, wait for CONNACK, disconnect."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    if config is None:
        return Check("mqtt broker", Status.SKIP, "config invalid")
    settings = config.mqtt
    address = f"{settings.host}:{settings.port}" + (" (TLS)" if settings.tls.enabled else "")
    try:
        password = read_mqtt_password(settings)
    except ConfigError as exc:
        return Check("mqtt broker", Status.FAIL, exc.problems[0], "fix mqtt.password_file / password_credential")
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"edgepose-doctor-{os.getpid()}",
        protocol=mqtt.MQTTv311,
    )
    client.connect_timeout = timeout_s
    answered = threading.Event()
    outcome: dict[str, Any] = {}

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        outcome["reason"] = reason
        answered.set()

    client.on_connect = on_connect
    try:
        if settings.username:
            client.username_pw_set(settings.username, password)
        if settings.tls.enabled:
            tls = settings.tls
            client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        started = time.monotonic()
        client.connect(settings.host, settings.port, keepalive=10)
        client.loop_start()
        answered.wait(max(0.1, timeout_s - (time.monotonic() - started)))
    except (OSError, ssl.SSLError, ValueError) as exc:
        return Check(
            "mqtt broker",
            Status.FAIL,
            f"{address}: cannot connect: {exc}",
            "is the broker running and reachable? check mqtt.host/port, the firewall and mqtt.tls",
        )
    finally:
        client.disconnect()
        client.loop_stop()
    if "reason" not in outcome:
        return Check(
            "mqtt broker",
            Status.FAIL,
            f"{address}: connected, but no MQTT answer within {timeout_s:.0f} s",
            "is that port an MQTT broker (TLS on a plain port, or the other way round)?",
        )
    reason = outcome["reason"]
    if reason.is_failure:
        return Check(
            "mqtt broker",
            Status.FAIL,
            f"{address}: the broker refused the connection: {reason}",
            "check mqtt.username and the password file/credential against the broker's accounts and ACLs",
        )
    user = f" as {settings.username}" if settings.username else " anonymously"
    return Check("mqtt broker", Status.PASS, f"{address}: connected{user}")


def read_throttled(host: Host) -> int | None:
    """The firmware's throttle flags, from sysfs (newer kernels) or vcgencmd."""
    text = host.read("/sys/devices/platform/soc/soc:firmware/get_throttled")
    if text is None:
        output = host.run(["vcgencmd", "get_throttled"])
        if output is None:
            return None
        text = output.strip().partition("=")[2]
    try:
        return int(text, 16)  # sysfs writes "50005", vcgencmd "throttled=0x50005": both hex
    except ValueError:
        return None


def check_throttling(host: Host) -> Check:
    flags = read_throttled(host)
    if flags is None:
        return Check("power/throttling", Status.SKIP, "no get_throttled (not a Raspberry Pi, or no vcgencmd)")
    seen = [text for bit, text in THROTTLE_BITS.items() if flags & (1 << bit)]
    if not seen:
        return Check("power/throttling", Status.PASS, f"get_throttled=0x{flags:x}: no under-voltage or throttling")
    detail = f"get_throttled=0x{flags:x}: {', '.join(seen)}"
    power_fix = "use the official power supply (5.1 V 3 A for a Pi 4, 5 V 5 A for a Pi 5) and a short, thick cable"
    heat_fix = "improve cooling (heatsink or fan; do not enclose the Pi)"
    fix = power_fix if flags & 0x10001 else heat_fix
    if flags & 0xF:
        return Check("power/throttling", Status.FAIL, detail, fix)
    return Check("power/throttling", Status.WARN, detail + " (since boot)", fix)


def check_temperature(host: Host) -> Check:
    zones = sorted(host.path("/sys/class/thermal").glob("thermal_zone*"))
    readings = []
    for zone in zones:
        raw = host.read(f"/sys/class/thermal/{zone.name}/temp")
        if raw is None or not raw.lstrip("-").isdigit():
            continue
        kind = host.read(f"/sys/class/thermal/{zone.name}/type") or zone.name
        readings.append((kind, int(raw) / 1000.0))
    if not readings:
        return Check("cpu temperature", Status.SKIP, "no thermal zones")
    kind, celsius = next(((k, c) for k, c in readings if "cpu" in k or "soc" in k), readings[0])
    detail = f"{celsius:.1f} °C ({kind})"
    fix = "improve cooling (heatsink or fan); a hot Pi throttles and inference slows"
    if celsius >= TEMP_FAIL_C:
        return Check("cpu temperature", Status.FAIL, detail + f": at or above {TEMP_FAIL_C:.0f} °C", fix)
    if celsius >= TEMP_WARN_C:
        return Check("cpu temperature", Status.WARN, detail + f": above {TEMP_WARN_C:.0f} °C", fix)
    return Check("cpu temperature", Status.PASS, detail)


def check_disk(config: Config | None) -> Check:
    from edgepose.models import default_model_dir

    directory = default_model_dir(config.model.dir if config is not None else None)
    existing = next((p for p in (directory, *directory.parents) if p.exists()), Path("/"))
    free_mb = shutil.disk_usage(existing).free / 1e6
    detail = f"{free_mb:,.0f} MB free for models ({directory})"
    fix = f"free space on {existing} or set model.dir to a larger disk"
    if free_mb < LOW_FREE_DISK_MB:
        return Check("disk", Status.FAIL, detail, fix)
    if free_mb < MIN_FREE_DISK_MB:
        return Check("disk", Status.WARN, detail, fix)
    return Check("disk", Status.PASS, detail)


def check_systemd(host: Host) -> Check:
    unit = host.path(f"/etc/systemd/system/{SYSTEMD_UNIT}")
    if not unit.is_file():
        return Check("systemd unit", Status.SKIP, f"{SYSTEMD_UNIT} not installed")
    active = (host.run(["systemctl", "is-active", SYSTEMD_UNIT]) or "").strip() or "unknown"
    enabled = (host.run(["systemctl", "is-enabled", SYSTEMD_UNIT]) or "").strip() or "unknown"
    detail = f"{SYSTEMD_UNIT}: {active}, {enabled}"
    if active == "active":
        return Check("systemd unit", Status.PASS, detail)
    if active == "failed":
        return Check("systemd unit", Status.FAIL, detail, "journalctl -u edgepose -n 50 shows why")
    return Check("systemd unit", Status.WARN, detail, "sudo systemctl enable --now edgepose")


def run_checks(
    config_path: Path | None = None,
    overrides: Sequence[str] = (),
    host: Host | None = None,
    broker_timeout_s: float = BROKER_TIMEOUT_S,
) -> list[Check]:
    host = host or Host()
    config_check, config = check_config(config_path, overrides)
    runtime = _guarded("tflite runtime", lambda: check_runtime(config))
    coral = _guarded("coral", lambda: check_coral(host, config))
    return [
        _guarded("platform", lambda: check_platform(host)),
        _guarded("python", check_python),
        runtime,
        _guarded("numpy", lambda: check_numpy(host)),
        _guarded("picamera2", lambda: check_picamera2(host, config)),
        _guarded("v4l2", lambda: check_v4l2(host, config)),
        coral,
        _guarded("libedgetpu", lambda: check_libedgetpu(host, config, coral, runtime)),
        _guarded("models", lambda: check_models(config, coral)),
        config_check,
        _guarded("mqtt broker", lambda: check_broker(config, broker_timeout_s)),
        _guarded("power/throttling", lambda: check_throttling(host)),
        _guarded("cpu temperature", lambda: check_temperature(host)),
        _guarded("disk", lambda: check_disk(config)),
        _guarded("systemd unit", lambda: check_systemd(host)),
    ]


def _guarded(name: str, check: Callable[[], Check]) -> Check:
    """A check that crashes is itself a finding (with its reason), not the end of the report."""
    try:
        return check()
    except Exception as exc:
        return Check(name, Status.FAIL, f"the check itself failed: {type(exc).__name__}: {exc}", "please report this")


def default_path_for_doctor(path: Path | None) -> Path | None:
    """The config the daemon would use: -c, else /etc/edgepose/edgepose.yaml, else the defaults."""
    if path is not None:
        return path
    found = default_config_path()
    return found if found.exists() else None


def render(checks: Sequence[Check]) -> str:
    width = max(len(check.name) for check in checks)
    lines = []
    for check in checks:
        lines.append(f"{check.status.value.upper():4}  {check.name:{width}}  {check.detail}")
        if check.fix and check.status in (Status.WARN, Status.FAIL):
            lines.append(f"{'':4}  {'':{width}}  fix: {check.fix}")
    failed = sum(check.status is Status.FAIL for check in checks)
    warned = sum(check.status is Status.WARN for check in checks)
    lines.append(f"{failed} failed, {warned} warnings, {len(checks) - failed - warned} ok or skipped")
    return "\n".join(lines)


def exit_code(checks: Sequence[Check]) -> int:
    return 1 if any(check.status is Status.FAIL for check in checks) else 0
