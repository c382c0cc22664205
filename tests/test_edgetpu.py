"""EdgeTPU detection on a fake sysfs/dev tree, backend selection with the real models, and the CLI's
errors for an EdgeTPU model without libedgetpu (this machine has no Coral and no libedgetpu)."""

from __future__ import annotations

import ctypes.util
import logging
import os
import shutil
import socket
from pathlib import Path

import pytest

from edgepose.config import ModelConfig
from edgepose.errors import BackendError, ModelError, ModelNotFoundError
from edgepose.inference.backends import BackendChoice, select_backend
from edgepose.inference.edgetpu import NOT_FOUND, probe_edgetpu
from edgepose.inference.fallback import FallbackBackend, WorkerSpec
from edgepose.inference.runtime import Runtime, load_runtime
from edgepose.models import Manifest, load_manifest, resolve_model
from tests.conftest import LIGHTNING, LIGHTNING_EDGETPU, POSE_DATA, run_edgepose
from tests.test_fallback import faulty_spec

no_libedgetpu = pytest.mark.skipif(
    ctypes.util.find_library("edgetpu") is not None, reason="libedgetpu is installed here: the no-library path is moot"
)


def add_usb(sysfs: Path, bus_path: str, vendor: str | None, product: str | None) -> None:
    device = sysfs / "bus" / "usb" / "devices" / bus_path
    device.mkdir(parents=True)
    if vendor is not None:
        (device / "idVendor").write_text(f"{vendor}\n")
    if product is not None:
        (device / "idProduct").write_text(f"{product}\n")


def add_apex(sysfs: Path, dev: Path, name: str, temp_millidegrees: str | None) -> None:
    dev.mkdir(parents=True, exist_ok=True)
    (dev / name).touch()
    if temp_millidegrees is not None:
        node = sysfs / "class" / "apex" / name
        node.mkdir(parents=True)
        (node / "temp").write_text(f"{temp_millidegrees}\n")


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    add_usb(root, "usb1", "1d6b", "0002")  # a root hub
    add_usb(root, "1-1:1.0", None, None)  # an interface: no IDs of its own
    (root / "bus" / "usb" / "devices" / "1-2").mkdir()  # unreadable IDs are skipped, not fatal
    return root


@pytest.fixture
def dev(tmp_path: Path) -> Path:
    root = tmp_path / "dev"
    root.mkdir()
    (root / "video0").touch()
    return root


# -- detection ---------------------------------------------------------------------------------


def test_nothing_attached(sysfs: Path, dev: Path) -> None:
    probe = probe_edgetpu("usb", sysfs, dev)
    assert not probe.present and probe.devices == []
    assert probe.description == NOT_FOUND == "no EdgeTPU found (no USB 1a6e:089a/18d1:9302, no /dev/apex_*)"
    assert not probe_edgetpu("", tmp := sysfs.parent / "missing", tmp).present  # no sysfs at all (a container)


@pytest.mark.parametrize(
    ("vendor", "product", "label"),
    [("1a6e", "089a", "Global Unichip, firmware not loaded yet"), ("18d1", "9302", "Google, firmware loaded")],
)
def test_usb_accelerator_before_and_after_firmware_load(
    sysfs: Path, dev: Path, vendor: str, product: str, label: str
) -> None:
    add_usb(sysfs, "2-1.3", vendor.upper(), product)  # sysfs writes lowercase; accept either
    for device in ("usb", "usb:0", "", ":0"):
        probe = probe_edgetpu(device, sysfs, dev)
        assert probe.present, device
        assert probe.devices == [f"usb:2-1.3 {vendor}:{product} ({label})"]
        assert probe.description == f"EdgeTPU found: usb:2-1.3 {vendor}:{product} ({label})"
    assert not probe_edgetpu("usb:1", sysfs, dev).present  # only one USB EdgeTPU
    wrong_kind = probe_edgetpu("pci", sysfs, dev)
    assert not wrong_kind.present
    assert "no PCIe EdgeTPU 'pci' found; present: usb:2-1.3" in wrong_kind.description


def test_pcie_apex_nodes_and_temperature(sysfs: Path, dev: Path) -> None:
    add_apex(sysfs, dev, "apex_0", "48250")
    add_apex(sysfs, dev, "apex_1", None)  # older gasket drivers have no temp attribute
    add_usb(sysfs, "1-1", "18d1", "9302")
    probe = probe_edgetpu("pci:1", sysfs, dev)
    assert probe.present
    assert probe.temperatures_c == {str(dev / "apex_0"): 48.25}
    assert probe.devices == [
        "usb:1-1 18d1:9302 (Google, firmware loaded)",
        f"pci:{dev / 'apex_0'} (48.2°C)",
        f"pci:{dev / 'apex_1'}",
    ]
    assert probe.description == f"EdgeTPU found: pci:{dev / 'apex_0'} (48.2°C), pci:{dev / 'apex_1'}"
    assert not probe_edgetpu("pci:2", sysfs, dev).present
    assert probe_edgetpu(":2", sysfs, dev).present  # ":N" counts every kind


def test_unparsable_temperature_is_ignored(sysfs: Path, dev: Path) -> None:
    add_apex(sysfs, dev, "apex_0", "hot")
    probe = probe_edgetpu("pci", sysfs, dev)
    assert probe.present and probe.temperatures_c == {}


# -- backend selection with the real models ------------------------------------------------------


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest()


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return load_runtime()


def choose(
    backend: str, name: str, model_dir: Path, manifest: Manifest, runtime: Runtime, **kwargs: object
) -> BackendChoice:
    config = ModelConfig(name=name, backend=backend, num_threads=1)  # type: ignore[arg-type]
    model = resolve_model(name, model_dir, manifest)
    return select_backend(config, model, manifest, model_dir, runtime, **kwargs)  # type: ignore[arg-type]


@no_libedgetpu
@pytest.mark.parametrize("name", [LIGHTNING, LIGHTNING_EDGETPU])
def test_backend_edgetpu_without_libedgetpu_is_a_clear_backend_error(
    name: str, model_dir: Path, manifest: Manifest, runtime: Runtime, sysfs: Path, dev: Path
) -> None:
    with pytest.raises(BackendError) as caught:
        choose("edgetpu", name, model_dir, manifest, runtime, sysfs_root=sysfs, dev_root=dev)
    message = str(caught.value)
    assert caught.value.exit_code == 69
    assert "\n" not in message
    assert "libedgetpu.so.1" in message and "libedgetpu1-std" in message
    assert NOT_FOUND in message  # the probe tells the user the device is missing too


def test_backend_auto_without_edgetpu_runs_on_cpu_with_the_reason(
    model_dir: Path, manifest: Manifest, runtime: Runtime, sysfs: Path, dev: Path
) -> None:
    choice = choose("auto", LIGHTNING, model_dir, manifest, runtime, sysfs_root=sysfs, dev_root=dev)
    try:
        assert choice.backend.kind == "cpu"
        assert choice.backend.runtime.name == runtime.name  # what the daemon's log and health read
        assert choice.reason == f"auto: {NOT_FOUND}"
        assert choice.probe is not None and not choice.probe.present
        assert choice.model.spec is not None and choice.model.spec.name == LIGHTNING
        assert choice.num_threads == 1
    finally:
        choice.backend.close()


@no_libedgetpu
def test_backend_auto_with_edgetpu_but_no_libedgetpu_runs_on_cpu(
    model_dir: Path, manifest: Manifest, runtime: Runtime, sysfs: Path, dev: Path
) -> None:
    add_usb(sysfs, "1-1", "1a6e", "089a")
    choice = choose("auto", LIGHTNING, model_dir, manifest, runtime, sysfs_root=sysfs, dev_root=dev)
    try:
        assert choice.backend.kind == "cpu"
        assert choice.reason.startswith("auto: EdgeTPU present but libedgetpu.so.1 not loadable: ")
        assert "cannot open shared object file" in choice.reason and "\n" not in choice.reason
    finally:
        choice.backend.close()


def test_backend_auto_with_working_edgetpu_uses_it_with_cpu_fallback(
    model_dir: Path, manifest: Manifest, runtime: Runtime, sysfs: Path, dev: Path, tmp_path: Path
) -> None:
    add_usb(sysfs, "1-1", "18d1", "9302")
    flag = tmp_path / "tpu-mode"
    flag.write_text("ok")
    seen: list[tuple[Path, str]] = []

    def worker(model_path: Path, worker_runtime: Runtime, device: str) -> WorkerSpec:
        seen.append((model_path, device))
        # The stand-in "EdgeTPU" runs the CPU model: the real EdgeTPU build needs the device.
        return faulty_spec(model_dir / manifest.models[LIGHTNING].file, flag)

    choice = choose("auto", LIGHTNING, model_dir, manifest, runtime, sysfs_root=sysfs, dev_root=dev, worker=worker)
    try:
        assert isinstance(choice.backend, FallbackBackend)
        assert choice.backend.kind == "edgetpu" and choice.backend.degraded_reason is None
        assert choice.reason == "auto: EdgeTPU found: usb:1-1 18d1:9302 (Google, firmware loaded)"
        assert choice.model.spec is not None and choice.model.spec.name == LIGHTNING_EDGETPU
        assert seen == [(model_dir / manifest.models[LIGHTNING_EDGETPU].file, "usb")]
    finally:
        choice.backend.close()


@pytest.mark.parametrize("backend", ["cpu", "auto"])
def test_edgetpu_model_on_cpu_runs_its_cpu_twin(
    backend: str, model_dir: Path, manifest: Manifest, runtime: Runtime, sysfs: Path, dev: Path
) -> None:
    choice = choose(backend, LIGHTNING_EDGETPU, model_dir, manifest, runtime, sysfs_root=sysfs, dev_root=dev)
    try:
        assert choice.backend.kind == "cpu"
        assert choice.model.spec is not None and choice.model.spec.name == LIGHTNING
        if backend == "cpu":
            assert choice.reason == f"model.backend: cpu (running {LIGHTNING}, the CPU build of {LIGHTNING_EDGETPU})"
    finally:
        choice.backend.close()


def test_edgetpu_model_without_cpu_build_is_a_one_line_model_error(
    model_dir: Path, manifest: Manifest, runtime: Runtime, tmp_path: Path
) -> None:
    loose = tmp_path / "pose_edgetpu.tflite"  # not in the manifest, no pose.tflite next to it
    shutil.copy(model_dir / manifest.models[LIGHTNING_EDGETPU].file, loose)
    with pytest.raises(ModelError) as caught:
        choose("cpu", str(loose), model_dir, manifest, runtime)
    assert caught.value.exit_code == 65
    assert "\n" not in str(caught.value)
    assert "compiled for the Coral EdgeTPU" in str(caught.value)


def test_loose_edgetpu_model_finds_its_cpu_build_next_to_it(
    model_dir: Path, manifest: Manifest, runtime: Runtime, tmp_path: Path
) -> None:
    shutil.copy(model_dir / manifest.models[LIGHTNING_EDGETPU].file, tmp_path / "pose_edgetpu.tflite")
    shutil.copy(model_dir / manifest.models[LIGHTNING].file, tmp_path / "pose.tflite")
    choice = choose("cpu", str(tmp_path / "pose_edgetpu.tflite"), model_dir, manifest, runtime)
    try:
        assert choice.backend.kind == "cpu" and choice.model.path == tmp_path / "pose.tflite"
    finally:
        choice.backend.close()


def test_backend_edgetpu_with_a_cpu_model_that_is_not_compiled(
    model_dir: Path, manifest: Manifest, runtime: Runtime, tmp_path: Path
) -> None:
    loose = tmp_path / "pose.tflite"
    shutil.copy(model_dir / manifest.models[LIGHTNING].file, loose)
    with pytest.raises(ModelError, match="not compiled for the EdgeTPU"):
        choose("edgetpu", str(loose), model_dir, manifest, runtime)


@pytest.mark.parametrize(("configured", "missing"), [(LIGHTNING, LIGHTNING_EDGETPU), (LIGHTNING_EDGETPU, LIGHTNING)])
def test_backend_edgetpu_needs_both_builds_fetched(
    configured: str, missing: str, model_dir: Path, manifest: Manifest, runtime: Runtime, tmp_path: Path
) -> None:
    only = tmp_path / "models"
    only.mkdir()
    (only / manifest.models[configured].file).symlink_to(model_dir / manifest.models[configured].file)
    with pytest.raises(ModelNotFoundError, match=f"run `edgepose models fetch {missing}`"):
        choose("edgetpu", configured, only, manifest, runtime)


def test_backend_auto_with_edgetpu_present_but_twin_not_fetched_runs_on_cpu(
    model_dir: Path, manifest: Manifest, runtime: Runtime, sysfs: Path, dev: Path, tmp_path: Path
) -> None:
    add_usb(sysfs, "1-1", "18d1", "9302")
    only = tmp_path / "models"
    only.mkdir()
    (only / manifest.models[LIGHTNING].file).symlink_to(model_dir / manifest.models[LIGHTNING].file)
    choice = choose("auto", LIGHTNING, only, manifest, runtime, sysfs_root=sysfs, dev_root=dev)
    try:
        assert choice.backend.kind == "cpu"
        assert f"edgepose models fetch {LIGHTNING_EDGETPU}" in choice.reason
    finally:
        choice.backend.close()


def test_threads_are_capped_at_the_cores(
    model_dir: Path, manifest: Manifest, runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    config = ModelConfig(name=LIGHTNING, backend="cpu", num_threads=64)
    with caplog.at_level(logging.WARNING):
        choice = select_backend(config, resolve_model(LIGHTNING, model_dir, manifest), manifest, model_dir, runtime)
    choice.backend.close()
    assert choice.num_threads == (os.cpu_count() or 1)
    assert "more than the" in caplog.text


# -- the CLI -------------------------------------------------------------------------------------


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@no_libedgetpu
def test_cli_run_with_backend_edgetpu_exits_69_with_one_line(model_dir: Path) -> None:
    result = run_edgepose(
        "run",
        "--set",
        "model.backend=edgetpu",
        "--set",
        "camera.source=synthetic",
        "--set",
        f"mqtt.port={unused_port()}",  # never a real broker: it must fail before connecting anyway
        "--max-frames",
        "1",
        model_dir=model_dir,
        timeout_s=60,
    )
    assert result.returncode == 69, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("edgepose: error:")]
    assert len(errors) == 1, result.stderr
    assert "libedgetpu" in errors[0]


def test_cli_infer_with_edgetpu_model_exits_65(model_dir: Path) -> None:
    result = run_edgepose("infer", "--model", LIGHTNING_EDGETPU, str(POSE_DATA / "image1.png"), model_dir=model_dir)
    assert result.returncode == 65, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("edgepose: error:")]
    assert len(errors) == 1 and "compiled for the Coral EdgeTPU" in errors[0]
