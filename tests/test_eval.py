"""`edgepose eval`: scoring maths, the readers, and the command on the truth photos, clips built
from them, a video of labelled frames and COCO annotations - all through the daemon's stage."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgepose.config import load_config
from edgepose.errors import UsageError
from edgepose.evaluation.clips import ClipSpec, LabelledImage, build_clip
from edgepose.evaluation.datasets import TRUTH_COLUMNS, DatasetError, read_truth_csv
from edgepose.evaluation.evaluate import EvalRequest, evaluate, score_clip
from edgepose.evaluation.metrics import score_frame, summarize
from edgepose.pose import KEYPOINT_NAMES, Keypoint, Pose
from edgepose.stills import open_offline_model
from tests.conftest import POSE_DATA, run_edgepose, write_video

TRUTH_CSV = POSE_DATA / "pose_landmark_truth.csv"
PHOTOS = (POSE_DATA / "image1.png", POSE_DATA / "image2.jpeg")


def _pose(pixels: np.ndarray, width: int, height: int, score: float = 0.8) -> Pose:
    points = tuple(
        Keypoint(name, float(x) / width, float(y) / height, score)
        for name, (x, y) in zip(KEYPOINT_NAMES, pixels, strict=True)
    )
    return Pose(points, score)


def _truth(offset_px: float = 0.0) -> LabelledImage:
    keypoints = np.tile([[100.0, 200.0]], (17, 1))
    return LabelledImage("t", np.zeros((640, 400, 3), np.uint8), keypoints, 640.0)


def test_worst_keypoint_over_tolerance_is_l_infinity_per_keypoint() -> None:
    truth = _truth()
    pixels = truth.keypoints_px.copy()
    pixels[3] += [10.5, -21.0]  # L-inf 21: exactly the tolerance
    pixels[9] += [-5.0, 3.0]
    score = score_frame(truth, _pose(pixels, 400, 640))
    assert score.worst_ratio == pytest.approx(1.0)
    assert score.worst_keypoint == KEYPOINT_NAMES[3]
    assert score.errors_px[9] == pytest.approx(5.0)
    missing = score_frame(truth, None)
    assert np.isinf(missing.worst_ratio)


def test_summary_median_worst_pck_and_skipped_first_frames() -> None:
    truth = _truth()
    scores = []
    for shift in (84.0, 4.2, 10.5, 31.5):  # ratios 4, 0.2, 0.5, 1.5
        pixels = truth.keypoints_px.copy()
        pixels[0, 0] += shift
        scores.append(score_frame(truth, _pose(pixels, 400, 640)))
    summary = summarize("clip", scores, skip_first=1)
    assert summary.frames == 3
    assert summary.median_worst_ratio == pytest.approx(0.5)
    assert summary.max_worst_ratio == pytest.approx(1.5)
    assert summary.pck == pytest.approx(1 - 1 / (3 * 17))
    assert summary.keypoints[0].pck == pytest.approx(2 / 3) and summary.keypoints[1].max_px == 0.0
    assert json.loads(json.dumps(summary.as_json()))["keypoints"]["nose"]["max_px"] == pytest.approx(31.5)


def test_truth_csv_columns_by_name_and_errors_that_name_the_line(tmp_path: Path) -> None:
    shuffled = tmp_path / "t.csv"
    columns = ["image", *reversed(TRUTH_COLUMNS)]
    with shuffled.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerow(["a.png", *range(34)])
    (truth,) = read_truth_csv(shuffled)
    assert truth[0, 0] == 33 and truth[16, 1] == 0  # nose_x was written last
    bad = tmp_path / "bad.csv"
    bad.write_text(",".join(TRUTH_COLUMNS) + "\n" + ",".join(["1"] * 33 + ["x"]) + "\n")
    with pytest.raises(DatasetError, match=r"bad.csv:2: expected 34 numeric"):
        read_truth_csv(bad)
    (tmp_path / "head.csv").write_text("nose_x,nose_y\n1,2\n")
    with pytest.raises(DatasetError, match="header lacks keypoint columns left_eye_x"):
        read_truth_csv(tmp_path / "head.csv")


# The issue's own case: image2 (arms crossed, both wrists hidden in dark sleeves) at half size,
# drifting 2 px per frame. Its wrists come out 0.7-1.3x the tolerance whatever the framing, on
# the stills path too (docs/pose-quality.md); the video path's median is at the stills path's
# level, just above 1.0x, not within it.
OCCLUDED_WRISTS_CLIP = "image2.jpeg h320 at 200,200 +2,+0px/f"


def test_eval_stills_and_quick_clips_meet_the_target(model_dir: Path) -> None:
    """The acceptance check in make test: the truth photos as stills, and the quick clip set (half
    size slow drift, a small mirrored walker at the frame edge, a large still person, both photos)
    in video mode in the daemon's pipelined order: every frame from the second on within 1.5x, every
    clip's median within 1.0x except the occluded-wrists clip, which stays within 1.15x."""
    result = run_edgepose(
        "eval", "--json", "--truth", str(TRUTH_CSV), *map(str, PHOTOS), "--clips", "quick", model_dir=model_dir
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["settings"] == {"smart_crop": "on", "smoothing": "on", "order": "pipelined"}
    stills = report["sections"][0]
    assert stills["group"] == "stills (2 images)" and stills["frames"] == 2
    assert stills["max_worst_ratio"] <= 1.0 and stills["pck"] == 1.0
    clips = {s["group"]: s for s in report["sections"] if "within_target" in s}
    assert len(clips) == 6 and OCCLUDED_WRISTS_CLIP in clips
    for name, clip in clips.items():
        assert clip["max_worst_ratio"] <= 1.5, name
        assert clip["second_passes"] <= 2, name  # only while the track starts: no cost in steady state
        if name == OCCLUDED_WRISTS_CLIP:
            assert clip["median_worst_ratio"] <= 1.15, name
        else:
            assert clip["within_target"], name


def test_eval_text_table_names_the_sets_and_keypoints(model_dir: Path) -> None:
    result = run_edgepose("eval", "--truth", str(TRUTH_CSV), *map(str, PHOTOS), model_dir=model_dir)
    assert result.returncode == 0, result.stderr
    assert "stills (2 images)" in result.stdout and "per keypoint, stills (2 images):" in result.stdout
    assert "left_wrist" in result.stdout and "PCK" in result.stdout


def _clip_spec() -> ClipSpec:
    return ClipSpec(1, 320, 100, 200, step_x_px=2, frames=8)


@pytest.fixture(scope="module")
def photos() -> list[LabelledImage]:
    from edgepose.evaluation.datasets import labelled_stills

    return labelled_stills(TRUTH_CSV, list(PHOTOS))


def test_eval_video_of_labelled_frames_reproduces_the_clip_numbers(
    model_dir: Path, photos: list[LabelledImage], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clip written out as PNG frames plus a per-frame truth CSV, scored by `eval --video`, gives
    exactly the numbers of the same clip scored in process: one code path, the daemon's stage."""
    frames = list(build_clip(photos, _clip_spec()))
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    with (tmp_path / "truth.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["frame", *TRUTH_COLUMNS])
        for frame in frames:
            cv2.imwrite(str(frames_dir / f"{frame.index:04d}.png"), cv2.cvtColor(frame.truth.image, cv2.COLOR_RGB2BGR))
            writer.writerow([frame.index, *frame.truth.keypoints_px.ravel()])
    result = run_edgepose(
        "eval",
        "--json",
        "--video",
        str(frames_dir),
        "--truth",
        str(tmp_path / "truth.csv"),
        "--reference-px",
        "320",
        model_dir=model_dir,
    )
    assert result.returncode == 0, result.stderr
    (video,) = json.loads(result.stdout)["sections"]
    assert video["group"] == "video frames (8 frames)" and video["frames"] == 7  # from the second frame

    monkeypatch.setenv("EDGEPOSE_MODEL_DIR", str(model_dir))
    config, _ = load_config(None, [])
    scores, _ = score_clip(open_offline_model(config), frames, "video", pipelined=True)
    expected = summarize("clip", scores, skip_first=1)
    assert video["median_worst_ratio"] == pytest.approx(expected.median_worst_ratio, abs=1e-3)
    assert video["max_worst_ratio"] == pytest.approx(expected.max_worst_ratio, abs=1e-3)


def _coco_file(tmp_path: Path, photos: list[LabelledImage], shift_px: float = 0.0) -> Path:
    images, annotations = [], []
    for index, photo in enumerate(photos, start=1):
        name = f"{index}.png"
        cv2.imwrite(str(tmp_path / name), cv2.cvtColor(photo.image, cv2.COLOR_RGB2BGR))
        height, width = photo.image.shape[:2]
        images.append({"id": index, "file_name": name, "width": width, "height": height})
        keypoints = np.c_[photo.keypoints_px + shift_px, np.full(17, 2)]
        x0, y0 = photo.keypoints_px.min(axis=0) - 20
        x1, y1 = photo.keypoints_px.max(axis=0) + 20
        annotations.append(
            {
                "id": index,
                "image_id": index,
                "category_id": 1,
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "keypoints": keypoints.ravel().tolist(),
            }
        )
    path = tmp_path / f"coco{shift_px:g}.json"
    categories = [{"id": 1, "name": "person", "keypoints": list(KEYPOINT_NAMES), "skeleton": []}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_eval_coco_oks_ap_and_pck(model_dir: Path, photos: list[LabelledImage], tmp_path: Path) -> None:
    """COCO annotations of the truth photos: OKS AP from pycocotools is high; the same labels moved
    by 40 px make it drop, so the AP is really computed from the poses."""
    good = _coco_file(tmp_path, photos)
    shifted = _coco_file(tmp_path, photos, shift_px=40.0)
    scores = {}
    for path in (good, shifted):
        result = run_edgepose(
            "eval", "--json", "--coco", str(path), "--coco-images", str(tmp_path), model_dir=model_dir
        )
        assert result.returncode == 0, result.stderr
        scores[path] = json.loads(result.stdout)
    coco = scores[good]["coco"]
    assert coco["images"] == 2 and coco["AP"] >= 0.9 and coco["AP50"] == pytest.approx(1.0)
    (section,) = scores[good]["sections"]
    assert section["group"].startswith("COCO coco0.json (single-person images: 2 of 2)")
    assert section["pck"] >= 0.9
    assert scores[shifted]["coco"]["AP"] < 0.5


def test_eval_without_data_or_with_a_missing_file_is_a_one_line_error(model_dir: Path, tmp_path: Path) -> None:
    result = run_edgepose("eval", model_dir=model_dir)
    assert result.returncode == 64  # a bad command line, as the README's exit codes say
    assert result.stderr.strip().endswith(
        "edgepose: error: nothing to evaluate: give --truth CSV with images or --video, or --coco"
    )
    result = run_edgepose("eval", "--truth", str(tmp_path / "none.csv"), str(PHOTOS[0]), model_dir=model_dir)
    assert result.returncode == 66 and "cannot read truth CSV" in result.stderr and "Traceback" not in result.stderr
    result = run_edgepose("eval", "--truth", str(TRUTH_CSV), str(PHOTOS[0]), model_dir=model_dir)
    assert result.returncode == 65 and "2 truth rows for 1 images" in result.stderr


def test_evaluate_rejects_contradictory_requests() -> None:
    config, _ = load_config(None, [])
    with pytest.raises(UsageError, match="--clips builds clips from labelled stills"):
        evaluate(config, EvalRequest(clips="quick", coco=Path("a.json"), coco_images=Path(".")))
    with pytest.raises(UsageError, match="--coco and --coco-images go together"):
        evaluate(config, EvalRequest(coco=Path("a.json")))


def test_eval_video_file_and_markdown_table(model_dir: Path, photos: list[LabelledImage], tmp_path: Path) -> None:
    """A clip as an MJPG .avi (what a phone or OpenCV writes: lossy, read back through
    cv2.VideoCapture) scores close to the lossless frames; --markdown prints the summary table."""
    frames = list(build_clip(photos, ClipSpec(0, 320, 100, 200, step_x_px=2, frames=8)))
    video = write_video(tmp_path / "clip.avi", [f.truth.image for f in frames], fps=30.0)
    with (tmp_path / "truth.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(TRUTH_COLUMNS)
        writer.writerows(f.truth.keypoints_px.ravel() for f in frames)
    result = run_edgepose(
        "eval", "--markdown", "--video", str(video), "--truth", str(tmp_path / "truth.csv"),
        "--reference-px", "320", model_dir=model_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "| set | frames | video |"
    row = lines[2].split("|")
    assert row[1].strip() == "video clip.avi (8 frames)" and row[2].strip() == "7"
    median, worst = (float(v.strip().rstrip("×")) for v in row[3].split("/"))
    assert median <= 1.0 and worst <= 1.5
    short = tmp_path / "short.csv"
    short.write_text(",".join(TRUTH_COLUMNS) + "\n" + ",".join(["1"] * 34) + "\n")
    result = run_edgepose("eval", "--video", str(video), "--truth", str(short), model_dir=model_dir)
    assert result.returncode == 65 and "1 rows, but the video has more frames" in result.stderr
