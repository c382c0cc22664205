from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from edgepose.errors import ChecksumError, ModelNotFoundError
from edgepose.models import fetch, fetch_file, load_manifest, resolve_model
from tests.conftest import LIGHTNING, MODEL_MIRROR, run_edgepose


def test_manifest_lists_every_model_in_scope() -> None:
    manifest = load_manifest()
    families = {spec.family for spec in manifest.models.values()}
    assert {"movenet_singlepose", "movenet_multipose", "posenet"} <= families
    for name in (
        "movenet_lightning_int8",
        "movenet_lightning_fp16",
        "movenet_thunder_int8",
        "movenet_thunder_fp16",
    ):
        assert name in manifest.models
    for spec in manifest.models.values():
        assert spec.url.startswith("https://")
        assert spec.sha256 is None or len(spec.sha256) == 64
        if spec.edgetpu_twin:
            assert manifest.models[spec.edgetpu_twin].backend == "edgetpu"
    assert {"image1.png", "image2.jpeg"} <= set(manifest.samples)


def test_fetch_from_mirror_verifies_and_caches(tmp_path: Path) -> None:
    manifest = load_manifest()
    (result,) = fetch([LIGHTNING], tmp_path, manifest, [MODEL_MIRROR], progress=lambda *_: None)
    assert result.how == "mirror" and result.pinned
    assert hashlib.sha256(result.path.read_bytes()).hexdigest() == manifest.models[LIGHTNING].sha256
    (again,) = fetch([LIGHTNING], tmp_path, manifest, [MODEL_MIRROR], progress=lambda *_: None)
    assert again.how == "cached"


def test_corrupted_mirror_file_is_refused_and_nothing_left_behind(tmp_path: Path) -> None:
    manifest = load_manifest()
    spec = manifest.models[LIGHTNING]
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    data = bytearray((MODEL_MIRROR / spec.file).read_bytes())
    data[1000] ^= 0xFF
    (mirror / spec.file).write_bytes(bytes(data))
    dest = tmp_path / "models"
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        fetch([LIGHTNING], dest, manifest, [mirror], progress=lambda *_: None)
    assert list(dest.iterdir()) == []


def test_corrupted_mirror_via_cli_exit_code(tmp_path: Path) -> None:
    spec = load_manifest().models[LIGHTNING]
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / spec.file).write_bytes(b"not a model")
    dest = tmp_path / "models"
    result = run_edgepose(
        "models",
        "fetch",
        LIGHTNING,
        "--mirror",
        str(mirror),
        "--dir",
        str(dest),
        model_dir=dest,
        timeout_s=30,
    )
    assert result.returncode == 65
    assert "checksum mismatch" in result.stderr and "Traceback" not in result.stderr
    assert not any(dest.iterdir())


def test_unpinned_file_records_checksum_on_first_fetch_then_enforces_it(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "x.tflite").write_bytes(b"first")
    dest = tmp_path / "models"
    first = fetch_file("x", "x.tflite", "https://example.invalid/x", None, dest, [mirror], lambda *_: None)
    assert not first.pinned
    assert (dest / "x.tflite.sha256").read_text().split()[0] == hashlib.sha256(b"first").hexdigest()
    (dest / "x.tflite").unlink()
    (mirror / "x.tflite").write_bytes(b"changed upstream")
    with pytest.raises(ChecksumError):
        fetch_file("x", "x.tflite", "https://example.invalid/x", None, dest, [mirror], lambda *_: None)


def test_download_failure_is_a_fetch_error(tmp_path: Path) -> None:
    from edgepose.errors import FetchError

    with pytest.raises(FetchError, match=r"download from http://127\.0\.0\.1:9/m\.tflite failed"):
        fetch_file("m", "m.tflite", "http://127.0.0.1:9/m.tflite", None, tmp_path, [], lambda *_: None, timeout_s=2)
    assert list(tmp_path.iterdir()) == []


def test_resolve_model_by_name_and_path(model_dir: Path, lightning_path: Path) -> None:
    manifest = load_manifest()
    assert resolve_model(LIGHTNING, model_dir, manifest).path == lightning_path
    by_path = resolve_model(str(lightning_path), Path("/nonexistent"), manifest)
    assert by_path.spec is not None and by_path.spec.name == LIGHTNING
    with pytest.raises(ModelNotFoundError, match="edgepose models fetch movenet_thunder_int8"):
        resolve_model("movenet_thunder_int8", model_dir, manifest)
    with pytest.raises(ModelNotFoundError, match="unknown model 'bogus'"):
        resolve_model("bogus", model_dir, manifest)


def test_models_list_cli(model_dir: Path) -> None:
    result = run_edgepose("models", "list", model_dir=model_dir, timeout_s=30)
    assert result.returncode == 0
    assert f"models directory: {model_dir}" in result.stdout
    line = next(line for line in result.stdout.splitlines() if line.startswith(LIGHTNING + " "))
    assert "fetched" in line and "sha256 pinned" in line
