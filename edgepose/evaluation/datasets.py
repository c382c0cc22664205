"""Readers for labelled data anyone has: the TF pose-estimation truth CSV (stills, or one row per
video frame) and COCO person-keypoint annotations. Each error names the file and what is wrong."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgepose.errors import EXIT_DATA, EXIT_NO_INPUT, EdgeposeError
from edgepose.evaluation.clips import UPSTREAM_REFERENCE_PX, LabelledImage
from edgepose.pose import KEYPOINT_NAMES, NUM_KEYPOINTS
from edgepose.sources.images import read_rgb

TRUTH_COLUMNS: tuple[str, ...] = tuple(f"{name}_{axis}" for name in KEYPOINT_NAMES for axis in ("x", "y"))


class DatasetError(EdgeposeError):
    """Labelled data that cannot be read: a missing file, a malformed row, a count mismatch."""

    exit_code = EXIT_DATA


class DatasetNotFoundError(DatasetError):
    exit_code = EXIT_NO_INPUT


def read_truth_csv(path: Path) -> list[np.ndarray]:
    """The TF truth format (`nose_x,nose_y,...,right_ankle_y`, one person per row) -> (17, 2) x, y per row.

    Other columns (an image name, a frame number) are allowed and ignored; the 34 keypoint columns
    are found by name so their order does not matter.
    """
    try:
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
    except OSError as exc:
        raise DatasetNotFoundError(f"cannot read truth CSV {path}: {exc.strerror or exc}") from exc
    if not rows:
        raise DatasetError(f"{path}: empty truth CSV")
    header = [column.strip() for column in rows[0]]
    missing = [column for column in TRUTH_COLUMNS if column not in header]
    if missing:
        raise DatasetError(
            f"{path}: header lacks keypoint columns {', '.join(missing[:4])}{'...' if len(missing) > 4 else ''}"
        )
    columns = [header.index(column) for column in TRUTH_COLUMNS]
    truths = []
    for line_number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            values = [float(row[column]) for column in columns]
        except (IndexError, ValueError):
            raise DatasetError(f"{path}:{line_number}: expected {len(TRUTH_COLUMNS)} numeric keypoint values") from None
        truths.append(np.array(values, dtype=np.float64).reshape(NUM_KEYPOINTS, 2))
    if not truths:
        raise DatasetError(f"{path}: no truth rows")
    return truths


def labelled_stills(truth_csv: Path, images: Sequence[Path]) -> list[LabelledImage]:
    """Stills paired with the CSV's rows in order (the TF test data's convention).

    The tolerance reference is each image's height: the upstream 21 px are for its 640 px photos.
    """
    truths = read_truth_csv(truth_csv)
    if len(truths) != len(images):
        raise DatasetError(f"{truth_csv}: {len(truths)} truth rows for {len(images)} images; they pair in order")
    labelled = []
    for path, truth in zip(images, truths, strict=True):
        image = read_rgb(path)
        labelled.append(LabelledImage(path.name, image, truth, float(image.shape[0])))
    return labelled


def video_frames(path: Path) -> Iterator[np.ndarray]:
    """RGB frames of a video file, or of a directory of images taken in name order (lossless clips)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp"})
        if not files:
            raise DatasetError(f"{path}: no .png/.jpg/.bmp frames in the directory")
        for file in files:
            yield read_rgb(file)
        return
    if not path.is_file():
        raise DatasetNotFoundError(f"video not found: {path}")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise DatasetError(f"{path}: OpenCV cannot open this video")
        while True:
            ok, bgr = capture.read()
            if not ok:
                return
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()


@dataclass(frozen=True)
class CocoPerson:
    """One COCO person annotation: (17, 3) x, y, v and its box (x, y, w, h) in pixels."""

    annotation_id: int
    keypoints: np.ndarray
    bbox_xywh: tuple[float, float, float, float]
    area: float


@dataclass(frozen=True)
class CocoImage:
    image_id: int
    path: Path
    people: tuple[CocoPerson, ...]


def read_coco(annotations: Path, images_dir: Path) -> tuple[dict[str, Any], list[CocoImage]]:
    """A COCO keypoints JSON (person category) and where its images are; images without people are kept
    (a false detection there costs AP, as in COCO's own evaluation)."""
    try:
        data = json.loads(annotations.read_text())
    except OSError as exc:
        raise DatasetNotFoundError(f"cannot read COCO annotations {annotations}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{annotations}: not JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(data, dict) or not all(key in data for key in ("images", "annotations", "categories")):
        raise DatasetError(f"{annotations}: a COCO file needs 'images', 'annotations' and 'categories'")
    person_ids = {c.get("id") for c in data["categories"] if isinstance(c, dict) and c.get("name") == "person"}
    if not person_ids:
        raise DatasetError(f"{annotations}: no 'person' category")
    people: dict[int, list[CocoPerson]] = {}
    for index, ann in enumerate(data["annotations"]):
        try:
            if ann["category_id"] not in person_ids or ann.get("iscrowd", 0):
                continue
            keypoints = np.array(ann["keypoints"], dtype=np.float64).reshape(NUM_KEYPOINTS, 3)
            x, y, w, h = (float(v) for v in ann["bbox"])
            person = CocoPerson(int(ann["id"]), keypoints, (x, y, w, h), float(ann.get("area", w * h)))
        except (KeyError, TypeError, ValueError):
            raise DatasetError(
                f"{annotations}: annotation #{index} needs id, category_id, bbox and 51 keypoint values"
            ) from None
        people.setdefault(int(ann["image_id"]), []).append(person)
    images = []
    for index, entry in enumerate(data["images"]):
        try:
            image_id, file_name = int(entry["id"]), str(entry["file_name"])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{annotations}: image #{index} needs id and file_name") from None
        images.append(CocoImage(image_id, images_dir / file_name, tuple(people.get(image_id, ()))))
    return data, images


def coco_labelled(image: CocoImage, pixels: np.ndarray) -> LabelledImage | None:
    """The single labelled person of an image as a LabelledImage, for per-keypoint error and PCK.

    Only images with exactly one annotated person are scored this way (a single-pose model has no
    way to say whom it found); the tolerance reference is the person box height, scaled from the
    upstream photos where the person spans about 500 of 640 px.
    """
    labelled = [p for p in image.people if (p.keypoints[:, 2] > 0).any()]
    if len(labelled) != 1:
        return None
    person = labelled[0]
    reference_px = person.bbox_xywh[3] * UPSTREAM_REFERENCE_PX / PERSON_SPAN_OF_REFERENCE_PX
    return LabelledImage(image.path.name, pixels, person.keypoints[:, :2], reference_px, person.keypoints[:, 2] > 0)


# In the upstream truth photos the person (top of head to ankles) spans about 500 px of the 640:
# the COCO box height is converted to that reference so PCK means the same on both kinds of data.
PERSON_SPAN_OF_REFERENCE_PX = 500.0
