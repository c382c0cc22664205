"""Decompression bombs and broken images: refused before decoding or reported, exit 65, one line."""

from __future__ import annotations

import resource
import struct
import time
import zlib
from pathlib import Path

import pytest

from edgepose.errors import EXIT_DATA, ImageError
from edgepose.sources.images import ImagesSource, read_rgb
from tests.conftest import POSE_DATA, Broker, run_edgepose


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_bomb_png(path: Path, width_px: int = 20000, height_px: int = 20000) -> Path:
    """A valid PNG (1-bit grey, all black): about 50 kB on disk, 1.2 GB once decoded to RGB."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width_px + 7) // 8)  # filter byte + packed bits
    body = b"".join(compressor.compress(row) for _ in range(height_px)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width_px, height_px, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")
    )
    return path


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("edgepose:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    bomb = write_bomb_png(tmp_path / "bomb.png")
    started = time.perf_counter()
    with pytest.raises(ImageError, match=r"400000000 pixels, more than camera\.max_image_pixels.*refused before"):
        read_rgb(bomb)
    assert time.perf_counter() - started < 0.5  # a decode would take seconds and 1.2 GB


def test_limit_is_configurable(tmp_path: Path) -> None:
    photo = POSE_DATA / "image1.png"
    assert read_rgb(photo).shape == (640, 384, 3)
    with pytest.raises(ImageError, match=r"more than camera\.max_image_pixels"):
        read_rgb(photo, max_pixels=640 * 384 - 1)


def test_truncated_and_non_images_are_reported(tmp_path: Path) -> None:
    jpeg = (POSE_DATA / "image2.jpeg").read_bytes()
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(jpeg[: len(jpeg) // 2])
    with pytest.raises(ImageError, match="truncated"):
        read_rgb(truncated)
    png = (POSE_DATA / "image1.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    with pytest.raises(ImageError, match="not a readable image"):
        read_rgb(tmp_path / "cut.png")
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(ImageError, match="not a readable image"):
        read_rgb(tmp_path / "text.jpg")


def test_images_source_applies_the_limit(tmp_path: Path) -> None:
    write_bomb_png(tmp_path / "a.png", 9000, 9000)
    source = ImagesSource(str(tmp_path), loop=False, max_pixels=50_000_000)
    source.open()
    with pytest.raises(ImageError, match="refused before decoding"):
        source.read()


def test_infer_cli_exits_65_with_one_line(tmp_path: Path, model_dir: Path) -> None:
    bomb = write_bomb_png(tmp_path / "bomb.png")
    result = run_edgepose("infer", str(bomb), model_dir=model_dir, timeout_s=60)
    assert result.returncode == EXIT_DATA
    assert "refused before decoding" in _one_error_line(result.stderr)
    # The child never came near the 1.2 GB (2.4 GB RSS measured before this limit existed).
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss < 1_000_000  # kB

    cut = tmp_path / "cut.jpg"
    cut.write_bytes((POSE_DATA / "image2.jpeg").read_bytes()[:5000])
    result = run_edgepose("infer", str(cut), model_dir=model_dir, timeout_s=60)
    assert result.returncode == EXIT_DATA
    assert "truncated" in _one_error_line(result.stderr)

    photo = POSE_DATA / "image1.png"
    result = run_edgepose("infer", str(photo), "--set", "camera.max_image_pixels=1000", model_dir=model_dir)
    assert result.returncode == EXIT_DATA
    assert "more than camera.max_image_pixels (1000)" in _one_error_line(result.stderr)


def test_daemon_images_source_exits_65(tmp_path: Path, broker: Broker, model_dir: Path) -> None:
    write_bomb_png(tmp_path / "bomb.png")
    result = run_edgepose(
        "run",
        "--set", f"camera.source=images:{tmp_path}",
        "--set", f"mqtt.host={broker.host}",
        "--set", f"mqtt.port={broker.port}",
        model_dir=model_dir,
        timeout_s=60,
    )  # fmt: skip
    assert result.returncode == EXIT_DATA, result.stderr
    assert "refused before decoding" in _one_error_line(result.stderr)
