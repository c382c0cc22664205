"""The one drawing function, and `edgepose infer --annotate` with the real model on the truth photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgepose.annotate import CENTRE_RGB, CROP_RGB, FADED_ALPHA, LEFT_RGB, RIGHT_RGB, annotate
from edgepose.errors import UsageError
from edgepose.pose import KEYPOINT_NAMES, CropBox, Keypoint, Pose
from edgepose.sources.images import read_rgb
from edgepose.stills import annotation_paths
from tests.conftest import TruthImage, run_edgepose

GREY = 60


def _pose(score: float = 0.9, low: tuple[str, ...] = ()) -> Pose:
    """A standing figure in a 200x200 frame: left side at x=0.6, right side at x=0.4 (the person faces us)."""
    rows = {"eye": 0.12, "ear": 0.14, "shoulder": 0.3, "elbow": 0.45, "wrist": 0.6, "hip": 0.6, "knee": 0.75}
    rows |= {"ankle": 0.9}
    points = []
    for name in KEYPOINT_NAMES:
        if name == "nose":
            x, y = 0.5, 0.1
        else:
            side, part = name.split("_")
            x = 0.6 if side == "left" else 0.4
            x += 0.15 if part in ("elbow", "wrist") and side == "left" else 0.0
            x -= 0.15 if part in ("elbow", "wrist") and side == "right" else 0.0
            y = rows[part]
        points.append(Keypoint(name, x, y, 0.05 if name in low else score))
    return Pose(tuple(points), score)


def _at(image: np.ndarray, x: float, y: float) -> tuple[int, ...]:
    return tuple(int(v) for v in image[round(y * image.shape[0]), round(x * image.shape[1])])


def test_annotate_draws_left_and_right_in_their_colours_on_a_copy() -> None:
    image = np.full((200, 200, 3), GREY, np.uint8)
    drawn = annotate(image, [_pose()])
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert (image == GREY).all(), "the input must not be drawn on"
    assert _at(drawn, 0.6 + 0.15, 0.6) == LEFT_RGB  # left wrist
    assert _at(drawn, 0.4 - 0.15, 0.6) == RIGHT_RGB  # right wrist
    assert _at(drawn, 0.5, 0.3) == CENTRE_RGB  # middle of the shoulder bar
    # Left upper arm, halfway between shoulder and elbow: a limb is drawn, not only the joints.
    assert _at(drawn, 0.675, 0.375) == LEFT_RGB


def test_low_score_joints_are_faded_not_hidden() -> None:
    image = np.full((200, 200, 3), GREY, np.uint8)
    drawn = annotate(image, [_pose(low=("left_wrist",))], score_threshold=0.2)
    faded = np.array(_at(drawn, 0.75, 0.6), float)
    expected = (1 - FADED_ALPHA) * GREY + FADED_ALPHA * np.array(LEFT_RGB, float)
    assert np.abs(faded - expected).max() <= 2, faded
    # Its neighbour keeps full colour.
    assert _at(drawn, 0.75, 0.45) == LEFT_RGB


def test_crop_box_is_drawn_and_empty_poses_change_nothing_else() -> None:
    image = np.full((100, 160, 3), GREY, np.uint8)
    drawn = annotate(image, [], CropBox(ymin=0.1, xmin=0.25, ymax=0.9, xmax=0.75))
    assert _at(drawn, 0.25, 0.5) == CROP_RGB
    assert _at(drawn, 0.5, 0.5) == (GREY, GREY, GREY)
    assert (annotate(image, []) == image).all()


def test_annotate_refuses_what_is_not_an_rgb_image() -> None:
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        annotate(np.zeros((10, 10), np.uint8), [])


def test_annotation_paths(tmp_path: Path) -> None:
    a, b = tmp_path / "in" / "a.jpg", tmp_path / "other" / "a.jpg"
    assert annotation_paths(tmp_path / "one.png", [a]) == [tmp_path / "one.png"]
    assert annotation_paths(tmp_path / "out", [a]) == [tmp_path / "out" / "a.jpg"]
    with pytest.raises(UsageError, match="exactly one image"):
        annotation_paths(tmp_path / "one.png", [a, tmp_path / "b.jpg"])
    with pytest.raises(UsageError, match="both be written"):
        annotation_paths(tmp_path / "out", [a, b])
    a.parent.mkdir()
    a.write_bytes(b"x")
    with pytest.raises(UsageError, match="overwrite the input"):
        annotation_paths(a.parent, [a])
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        annotation_paths(tmp_path / "file", [a])


def test_infer_annotate_writes_each_image_same_size_with_skeleton(
    model_dir: Path, truth_images: list[TruthImage], tmp_path: Path
) -> None:
    out = tmp_path / "annotated"
    paths = [str(t.path) for t in truth_images]
    result = run_edgepose("infer", "--json", "--annotate", str(out), *paths, model_dir=model_dir)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    for truth, line in zip(truth_images, lines, strict=True):
        written = out / truth.path.name
        assert line["annotated"] == str(written)
        original, drawn = read_rgb(truth.path), read_rgb(written)
        assert drawn.shape == original.shape
        # Every confident keypoint has a drawn joint on it (the photo differs there), far from it less so.
        for point in line["keypoints"]:
            if point["score"] < 0.5:
                continue
            x, y = round(point["x_px"]), round(point["y_px"])
            patch = np.abs(drawn[y - 2 : y + 3, x - 2 : x + 3].astype(int) - original[y - 2 : y + 3, x - 2 : x + 3])
            assert patch.max() > 60, (truth.path.name, point["name"])


def test_infer_annotate_to_one_file_and_refusal_for_many(
    model_dir: Path, truth_images: list[TruthImage], tmp_path: Path
) -> None:
    target = tmp_path / "one.png"
    result = run_edgepose("infer", "--annotate", str(target), str(truth_images[1].path), model_dir=model_dir)
    assert result.returncode == 0, result.stderr
    assert f"annotated: {target}" in result.stdout
    assert read_rgb(target).shape == read_rgb(truth_images[1].path).shape

    paths = [str(t.path) for t in truth_images]
    refused = run_edgepose("infer", "--annotate", str(tmp_path / "x.png"), *paths, model_dir=model_dir)
    assert refused.returncode == 64
    message = f"--annotate {tmp_path / 'x.png'}: a file name takes exactly one image, got 2; give a directory"
    assert refused.stderr.strip().splitlines() == [f"edgepose: error: {message}"]
