"""The model manifest, where fetched files live, and fetching them with pinned checksums.

Fetching streams to a temporary file in the destination directory, hashes while it writes and
renames only after the checksum matches, so a failed or corrupted fetch leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Any

import yaml

from edgepose.errors import ChecksumError, FetchError, ModelNotFoundError

log = logging.getLogger(__name__)

MIRROR_ENV = "EDGEPOSE_MODEL_MIRROR"
MODEL_DIR_ENV = "EDGEPOSE_MODEL_DIR"
_CHUNK_BYTES = 1 << 16


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    file: str
    url: str
    sha256: str | None
    input_size: int
    input_dtype: str
    backend: str
    description: str = ""
    edgetpu_twin: str | None = None
    cpu_twin: str | None = None


@dataclass(frozen=True)
class SampleSpec:
    name: str
    file: str
    url: str
    sha256: str | None
    description: str = ""


@dataclass(frozen=True)
class Manifest:
    models: dict[str, ModelSpec]
    samples: dict[str, SampleSpec]

    def model(self, name: str) -> ModelSpec:
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models))
            raise ModelNotFoundError(f"unknown model '{name}': known models are {known}") from None


def _manifest_text() -> str:
    packaged = resources.files("edgepose").joinpath("manifest.yaml")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    # Running from a source checkout (editable install): the manifest sits at the top level.
    source_tree = Path(__file__).resolve().parent.parent / "models" / "manifest.yaml"
    return source_tree.read_text(encoding="utf-8")


def load_manifest(text: str | None = None) -> Manifest:
    raw: dict[str, Any] = yaml.safe_load(text if text is not None else _manifest_text())
    models = {
        name: ModelSpec(name=name, **{k: v for k, v in entry.items() if k != "license"})
        for name, entry in (raw.get("models") or {}).items()
    }
    samples = {
        name: SampleSpec(
            name=name,
            file=entry.get("file", name),
            url=entry["url"],
            sha256=entry.get("sha256"),
            description=entry.get("description", ""),
        )
        for name, entry in (raw.get("samples") or {}).items()
    }
    return Manifest(models=models, samples=samples)


def default_model_dir(configured: Path | None = None) -> Path:
    """config model.dir, then $EDGEPOSE_MODEL_DIR, then systemd's StateDirectory, then a user cache."""
    if configured is not None:
        return configured
    if os.environ.get(MODEL_DIR_ENV):
        return Path(os.environ[MODEL_DIR_ENV])
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0]) / "models"
    system = Path("/var/lib/edgepose/models")
    if system.is_dir():
        return system
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "edgepose" / "models"


def mirror_dirs(explicit: Sequence[Path] = ()) -> list[Path]:
    if explicit:
        return list(explicit)
    env = os.environ.get(MIRROR_ENV, "")
    return [Path(p) for p in env.split(os.pathsep) if p]


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    spec: ModelSpec | None  # None when the user gave a path that is not in the manifest


def resolve_model(name_or_path: str, model_dir: Path, manifest: Manifest) -> ResolvedModel:
    """A manifest name resolves inside model_dir; anything that looks like a path is used as is."""
    if name_or_path in manifest.models:
        spec = manifest.models[name_or_path]
        path = model_dir / spec.file
        if not path.is_file():
            raise ModelNotFoundError(
                f"model '{spec.name}' is not in {model_dir}: run `edgepose models fetch {spec.name}`"
                f" (or set model.dir / {MODEL_DIR_ENV})"
            )
        return ResolvedModel(path=path, spec=spec)
    path = Path(name_or_path).expanduser()
    if path.suffix == ".tflite" or os.sep in name_or_path:
        if not path.is_file():
            raise ModelNotFoundError(f"model file not found: {path}")
        known_spec = next((s for s in manifest.models.values() if s.file == path.name), None)
        return ResolvedModel(path=path, spec=known_spec)
    known = ", ".join(sorted(manifest.models))
    raise ModelNotFoundError(f"unknown model '{name_or_path}': use a .tflite path or one of {known}")


# ---------------------------------------------------------------------------------------------
# Fetching


@dataclass(frozen=True)
class FetchResult:
    name: str
    path: Path
    sha256: str
    how: str  # "cached", "mirror", "download"
    pinned: bool


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _expected_sha(file: str, pinned: str | None, dest_dir: Path) -> tuple[str | None, bool]:
    if pinned:
        return pinned.lower(), True
    recorded = dest_dir / f"{file}.sha256"
    if recorded.is_file():
        return recorded.read_text(encoding="utf-8").split()[0].lower(), False
    return None, False


ProgressFn = Callable[[str, int, int | None], None]


def stderr_progress(label: str, done_bytes: int, total_bytes: int | None) -> None:
    if not sys.stderr.isatty():
        return
    if total_bytes:
        width = 30
        filled = int(width * done_bytes / total_bytes)
        bar = "#" * filled + "-" * (width - filled)
        sys.stderr.write(f"\r{label} [{bar}] {done_bytes / 1e6:6.1f}/{total_bytes / 1e6:.1f} MB")
    else:
        sys.stderr.write(f"\r{label} {done_bytes / 1e6:6.1f} MB")
    if total_bytes is not None and done_bytes >= total_bytes:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _copy_hashing(src: IO[bytes], dst: IO[bytes], label: str, total: int | None, progress: ProgressFn) -> str:
    digest = hashlib.sha256()
    done = 0
    for chunk in iter(lambda: src.read(_CHUNK_BYTES), b""):
        dst.write(chunk)
        digest.update(chunk)
        done += len(chunk)
        progress(label, done, total)
    return digest.hexdigest()


def fetch_file(
    name: str,
    file: str,
    url: str,
    pinned_sha256: str | None,
    dest_dir: Path,
    mirrors: Sequence[Path] = (),
    progress: ProgressFn = stderr_progress,
    timeout_s: float = 60.0,
) -> FetchResult:
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / file
    expected, pinned = _expected_sha(file, pinned_sha256, dest_dir)
    if dest.is_file() and expected is not None and sha256_of(dest) == expected:
        return FetchResult(name, dest, expected, "cached", pinned)

    source_label = url
    mirror_file = next((m / file for m in mirrors if (m / file).is_file()), None)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{file}.", suffix=".part", dir=dest_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            if mirror_file is not None:
                source_label = str(mirror_file)
                how = "mirror"
                with mirror_file.open("rb") as src:
                    actual = _copy_hashing(src, out, name, mirror_file.stat().st_size, progress)
            else:
                if mirrors:
                    log.info("%s: not in mirror %s, downloading", file, ", ".join(map(str, mirrors)))
                how = "download"
                request = urllib.request.Request(url, headers={"User-Agent": "edgepose-fetch"})
                try:
                    with urllib.request.urlopen(request, timeout=timeout_s) as response:
                        length = response.headers.get("Content-Length")
                        total = int(length) if length and length.isdigit() else None
                        actual = _copy_hashing(response, out, name, total, progress)
                except (urllib.error.URLError, OSError, TimeoutError) as exc:
                    reason = getattr(exc, "reason", exc)
                    raise FetchError(f"{name}: download from {url} failed: {reason}") from None
        if expected is not None and actual != expected:
            raise ChecksumError(
                f"{name}: checksum mismatch for {source_label}: expected sha256 {expected}, got {actual};"
                " the file was not installed"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if expected is None:
        (dest_dir / f"{file}.sha256").write_text(f"{actual}  {file}\n", encoding="utf-8")
        log.warning("%s: no pinned checksum in the manifest; recorded sha256 %s on first fetch", name, actual)
    return FetchResult(name, dest, actual, how, pinned)


def fetch(
    names: Iterable[str],
    dest_dir: Path,
    manifest: Manifest,
    mirrors: Sequence[Path] = (),
    progress: ProgressFn = stderr_progress,
) -> list[FetchResult]:
    results = []
    for name in names:
        if name in manifest.models:
            spec = manifest.models[name]
            results.append(fetch_file(name, spec.file, spec.url, spec.sha256, dest_dir, mirrors, progress))
        elif name in manifest.samples:
            sample = manifest.samples[name]
            results.append(fetch_file(name, sample.file, sample.url, sample.sha256, dest_dir, mirrors, progress))
        else:
            known = ", ".join([*sorted(manifest.models), *sorted(manifest.samples)])
            raise ModelNotFoundError(f"unknown model or sample '{name}': known: {known}")
    return results


def sample_paths(model_dir: Path, manifest: Manifest) -> list[Path]:
    paths = [model_dir / s.file for s in manifest.samples.values()]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise ModelNotFoundError(
            f"demo photos {', '.join(missing)} are not in {model_dir}: run `edgepose models fetch samples`"
        )
    return paths


__all__ = [
    "FetchResult",
    "Manifest",
    "ModelSpec",
    "ResolvedModel",
    "SampleSpec",
    "default_model_dir",
    "fetch",
    "fetch_file",
    "load_manifest",
    "mirror_dirs",
    "resolve_model",
    "sample_paths",
]
