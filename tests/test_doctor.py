"""`edgepose doctor`: each check against a directory of Pi stand-ins (as the picamera2 tests stand in
for the camera), the real model files, a real mosquitto and a port that never answers."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from edgepose.config import load_config
from edgepose.doctor import (
    Check,
    Host,
    Status,
    check_broker,
    check_models,
    check_temperature,
    check_throttling,
    exit_code,
    render,
    run_checks,
)
from edgepose.models import load_manifest
from tests.conftest import LIGHTNING, Broker, run_edgepose
from tests.fakes.picamera2_fake import FakeCameraSystem, make_modules

NO_CORAL = Check("coral", Status.SKIP, "none")


def _write(root: Path, path: str, text: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


@pytest.fixture
def pi_root(tmp_path: Path) -> Path:
    """A Raspberry Pi 4 as the doctor reads it: firmware flags, thermal zone, camera nodes, a Coral on USB."""
    root = tmp_path / "pi"
    _write(root, "/proc/device-tree/model", "Raspberry Pi 4 Model B Rev 1.4\x00")
    _write(root, "/etc/os-release", 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n')
    _write(root, "/sys/devices/platform/soc/soc:firmware/get_throttled", "0\n")
    _write(root, "/sys/class/thermal/thermal_zone0/temp", "48312\n")
    _write(root, "/sys/class/thermal/thermal_zone0/type", "cpu-thermal\n")
    _write(root, "/dev/video0", "")
    _write(root, "/sys/class/video4linux/video0/name", "unicam-image\n")
    _write(root, "/sys/bus/usb/devices/2-1/idVendor", "18d1\n")
    _write(root, "/sys/bus/usb/devices/2-1/idProduct", "9302\n")
    (root / "usr/lib/python3/dist-packages/picamera2").mkdir(parents=True)
    (root / "usr/lib/python3/dist-packages/numpy-1.24.2.dist-info").mkdir(parents=True)
    _write(root, "/etc/systemd/system/edgepose.service", "[Service]\n")
    return root


def _host(
    root: Path,
    numpy_version: str = "1.24.2",
    camera: FakeCameraSystem | None = None,
    commands: dict[str, str] | None = None,
    libedgetpu: bool = False,
) -> Host:
    picamera2, _ = make_modules(camera or FakeCameraSystem())

    def import_module(name: str) -> ModuleType:
        if name == "numpy":
            return SimpleNamespace(__version__=numpy_version, __file__="/opt/edgepose/venv/numpy/__init__.py")  # type: ignore[return-value]
        if name == "picamera2":
            return picamera2
        raise ImportError(name)

    def run(argv: Sequence[str]) -> str | None:
        return (commands or {}).get(" ".join(argv))

    def load_library(name: str) -> object:
        if not libedgetpu:
            raise OSError(f"{name}: cannot open shared object file: No such file or directory")
        return object()

    return Host(root=root, import_module=import_module, run=run, load_library=load_library, machine="aarch64")


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_pi_with_a_coral_but_no_libedgetpu(pi_root: Path, broker: Broker, model_dir: Path) -> None:
    commands = {
        "systemctl is-active edgepose.service": "failed\n",
        "systemctl is-enabled edgepose.service": "enabled\n",
    }
    checks = _by_name(
        run_checks(
            None,
            [f"mqtt.port={broker.port}", "mqtt.host=127.0.0.1", f"model.dir={model_dir}"],
            _host(pi_root, commands=commands),
        )
    )
    assert [c for c in checks] == [
        "platform",
        "python",
        "tflite runtime",
        "numpy",
        "picamera2",
        "v4l2",
        "coral",
        "libedgetpu",
        "models",
        "config",
        "mqtt broker",
        "power/throttling",
        "cpu temperature",
        "disk",
        "systemd unit",
    ]
    assert checks["platform"].status is Status.PASS
    assert checks["platform"].detail == "aarch64, Debian GNU/Linux 12 (bookworm), Raspberry Pi 4 Model B Rev 1.4"
    assert checks["numpy"].status is Status.PASS
    assert checks["picamera2"].status is Status.PASS and "imx708" in checks["picamera2"].detail
    assert checks["v4l2"].detail == "video0 (unicam-image)"
    assert checks["coral"].status is Status.PASS and "18d1:9302" in checks["coral"].detail
    libedgetpu = checks["libedgetpu"]
    assert libedgetpu.status is Status.FAIL and libedgetpu.fix is not None and "libedgetpu1-std" in libedgetpu.fix
    # A Coral is attached, so the EdgeTPU build is needed too; both are fetched and verified.
    assert checks["models"].status is Status.PASS, checks["models"].detail
    assert f"{LIGHTNING}_edgetpu (sha256 ok)" in checks["models"].detail
    assert checks["mqtt broker"].status is Status.PASS and "connected anonymously" in checks["mqtt broker"].detail
    assert checks["power/throttling"].status is Status.PASS
    assert checks["cpu temperature"].detail == "48.3 °C (cpu-thermal)"
    assert checks["systemd unit"].status is Status.FAIL and "journalctl -u edgepose" in (
        checks["systemd unit"].fix or ""
    )
    for check in checks.values():
        if check.status in (Status.WARN, Status.FAIL):
            assert check.fix, f"{check.name} has no fix"
    assert exit_code(list(checks.values())) == 1


def test_numpy_2_shadowing_debians_numpy_fails_with_the_fix(pi_root: Path) -> None:
    checks = _by_name(run_checks(None, [], _host(pi_root, numpy_version="2.2.1"), broker_timeout_s=0.5))
    numpy = checks["numpy"]
    assert numpy.status is Status.FAIL
    assert "shadows Debian's numpy 1.24.2" in numpy.detail
    assert numpy.fix is not None and "numpy<2" in numpy.fix


def test_picamera2_without_a_camera_and_not_importable(pi_root: Path) -> None:
    empty = FakeCameraSystem(cameras=[])
    checks = _by_name(run_checks(None, ["camera.source=picamera2"], _host(pi_root, camera=empty), broker_timeout_s=0.5))
    assert checks["picamera2"].status is Status.FAIL and "no camera is attached" in checks["picamera2"].detail

    def broken(name: str) -> ModuleType:
        raise ValueError("numpy.dtype size changed, may indicate binary incompatibility")

    host = Host(root=pi_root, import_module=broken, machine="aarch64")
    checks = _by_name(run_checks(None, [], host, broker_timeout_s=0.5))
    assert checks["picamera2"].status is Status.FAIL
    assert "numpy<2" in (checks["picamera2"].fix or "")


def test_off_a_pi_the_pi_checks_skip(tmp_path: Path) -> None:
    host = Host(root=tmp_path, import_module=lambda name: (_ for _ in ()).throw(ImportError(name)), machine="x86_64")
    checks = _by_name(run_checks(None, [], host, broker_timeout_s=0.5))
    for name in ("picamera2", "coral", "libedgetpu", "power/throttling", "cpu temperature", "systemd unit"):
        assert checks[name].status is Status.SKIP, name
    assert "not a Raspberry Pi" in checks["platform"].detail


@pytest.mark.parametrize(
    ("flags", "status", "words"),
    [
        ("0", Status.PASS, "no under-voltage"),
        ("50000", Status.WARN, "under-voltage has occurred"),
        ("50005", Status.FAIL, "under-voltage now"),
        ("80008", Status.FAIL, "soft temperature limit now"),
    ],
)
def test_throttling_flags(pi_root: Path, flags: str, status: Status, words: str) -> None:
    _write(pi_root, "/sys/devices/platform/soc/soc:firmware/get_throttled", flags)
    check = check_throttling(_host(pi_root))
    assert check.status is status and words in check.detail
    if status is not Status.PASS:
        expected = "power supply" if "voltage" in words else "cooling"
        assert expected in (check.fix or "")


def test_throttling_from_vcgencmd_when_sysfs_has_none(pi_root: Path) -> None:
    (pi_root / "sys/devices/platform/soc/soc:firmware/get_throttled").unlink()
    check = check_throttling(_host(pi_root, commands={"vcgencmd get_throttled": "throttled=0x50005\n"}))
    assert check.status is Status.FAIL and "get_throttled=0x50005" in check.detail
    assert check_throttling(_host(pi_root)).status is Status.SKIP


@pytest.mark.parametrize(
    ("milli_c", "status"), [("65000", Status.PASS), ("74500", Status.WARN), ("83000", Status.FAIL)]
)
def test_temperature_thresholds(pi_root: Path, milli_c: str, status: Status) -> None:
    _write(pi_root, "/sys/class/thermal/thermal_zone0/temp", milli_c)
    assert check_temperature(_host(pi_root)).status is status


def test_models_checksums(model_dir: Path, tmp_path: Path) -> None:
    config, _ = load_config(None, [f"model.dir={model_dir}"])
    assert check_models(config, NO_CORAL).status is Status.PASS
    broken_dir = tmp_path / "models"
    shutil.copytree(model_dir, broken_dir)
    model = broken_dir / load_manifest().models[LIGHTNING].file
    model.write_bytes(model.read_bytes()[:-10] + b"0123456789")
    config, _ = load_config(None, [f"model.dir={broken_dir}"])
    check = check_models(config, NO_CORAL)
    assert check.status is Status.FAIL and "does not match" in check.detail
    assert check.fix == f"edgepose models fetch {LIGHTNING}"
    model.unlink()
    assert "missing" in check_models(config, NO_CORAL).detail


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word: a broker that does not answer."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(2)
    for sock in held:
        sock.close()
    server.close()


def test_broker_that_does_not_answer_or_is_closed(silent_port: int) -> None:
    config, _ = load_config(None, [f"mqtt.port={silent_port}", "mqtt.host=127.0.0.1"])
    started = time.monotonic()
    check = check_broker(config, timeout_s=1.0)
    assert time.monotonic() - started < 3
    assert check.status is Status.FAIL and "no MQTT answer" in check.detail
    config, _ = load_config(None, [f"mqtt.port={_closed_port()}", "mqtt.host=127.0.0.1"])
    check = check_broker(config, timeout_s=1.0)
    assert check.status is Status.FAIL and "cannot connect" in check.detail and check.fix


def test_invalid_config_fails_and_its_dependents_skip(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt:\n  port: lots\n")
    checks = _by_name(run_checks(bad, [], Host(root=tmp_path)))
    assert checks["config"].status is Status.FAIL and "mqtt.port" in checks["config"].detail
    assert checks["models"].status is Status.SKIP and checks["mqtt broker"].status is Status.SKIP
    text = render(list(checks.values()))
    assert "FAIL  config" in text and "fix: edgepose config check" in text


def test_cli_json_under_ten_seconds_with_a_silent_broker(silent_port: int, pi_root: Path, model_dir: Path) -> None:
    started = time.monotonic()
    result = run_edgepose(
        "doctor", "--json", "--root", str(pi_root), "--set", f"mqtt.port={silent_port}", "--set", "mqtt.host=127.0.0.1",
        model_dir=model_dir,
        timeout_s=30,
    )  # fmt: skip
    elapsed_s = time.monotonic() - started
    assert elapsed_s < 10, f"doctor took {elapsed_s:.1f}s"
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"checks"}
    for check in report["checks"]:
        assert set(check) == {"name", "status", "detail", "fix"}
        assert check["status"] in ("pass", "warn", "fail", "skip")
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses["mqtt broker"] == "fail"
    # A Pi's model file on this x86_64 machine: the doctor reads it and asks for a 64-bit ARM OS.
    assert statuses["platform"] == "warn"
    assert statuses["cpu temperature"] == "pass"


def test_cli_text_and_exit_0_when_nothing_fails(broker: Broker, model_dir: Path, tmp_path: Path) -> None:
    result = run_edgepose(
        "doctor", "--root", str(tmp_path), "--set", f"mqtt.port={broker.port}", "--set", "mqtt.host=127.0.0.1",
        model_dir=model_dir,
        timeout_s=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS  mqtt broker" in result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith("0 failed")


def test_coral_and_a_loadable_libedgetpu_get_a_test_invoke(pi_root: Path, model_dir: Path) -> None:
    """The library loads (stand-in) and a Coral is listed, so the doctor opens the EdgeTPU model with
    the delegate for one invoke; with no real Coral here that fails, and says what to check."""
    checks = _by_name(
        run_checks(
            None, [f"model.dir={model_dir}", "mqtt.port=1"], _host(pi_root, libedgetpu=True), broker_timeout_s=0.5
        )
    )
    libedgetpu = checks["libedgetpu"]
    assert libedgetpu.status is Status.FAIL
    assert "EdgeTPU delegate" in libedgetpu.detail
    assert libedgetpu.fix is not None and "libedgetpu and the runtime must match" in libedgetpu.fix


def test_v4l2_source_that_is_missing(pi_root: Path) -> None:
    host = _host(pi_root)
    checks = _by_name(run_checks(None, ["camera.source=v4l2:/dev/video7", "mqtt.port=1"], host, broker_timeout_s=0.5))
    assert checks["v4l2"].status is Status.FAIL
    assert "/dev/video7 does not exist; present: video0 (unicam-image)" in checks["v4l2"].detail
    (pi_root / "dev/video0").unlink()
    checks = _by_name(run_checks(None, ["camera.source=usb:0", "mqtt.port=1"], host, broker_timeout_s=0.5))
    assert checks["v4l2"].status is Status.FAIL and "no /dev/video*" in checks["v4l2"].detail
