"""Every model family through the real interpreter and the real stages, using tiny .tflite files
with the real models' signatures and known outputs (tests/tiny_models.py)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from edgepose.config import Config
from edgepose.inference.runtime import load_runtime, open_cpu_backend
from edgepose.inference.stage import MultiPoseStage, PoseNetStage, SinglePoseStage, build_stage
from edgepose.mqtt.payloads import KeypointsMessage, encode, keypoints_payload
from edgepose.sources.base import Frame
from tests.test_payloads import load_schema
from tests.tiny_models import multipose_model, posenet_model, singlepose_model


def _frame(height_px: int, width_px: int, index: int = 0) -> Frame:
    image = np.random.default_rng(index).integers(0, 255, (height_px, width_px, 3), dtype=np.uint8)
    return Frame(image, 1000.0 + index / 30, 1000.0 + index / 30, index)


def _payload_of(result: object) -> dict[str, object]:
    from edgepose.inference.stage import InferenceResult

    assert isinstance(result, InferenceResult)
    message = KeypointsMessage(
        "dev", 0, result.frame_timestamp_s, result.frame_width_px, result.frame_height_px, result.model,
        result.backend, result.inference_ms, 1.0, result.poses, result.crop, result.smoothed,
    )  # fmt: skip
    payload: dict[str, object] = json.loads(encode(keypoints_payload(message)))
    jsonschema.validate(payload, load_schema("keypoints"))
    return payload


@pytest.mark.parametrize(("size", "dtype"), [(256, "uint8"), (192, "float32"), (256, "float32")])
def test_thunder_and_float_singlepose_share_the_code_path(tmp_path: Path, size: int, dtype: str) -> None:
    keypoints = np.zeros((17, 3), np.float32)
    keypoints[:, 0] = np.linspace(0.2, 0.8, 17)  # y in the model input
    keypoints[:, 1] = 0.5
    keypoints[:, 2] = 0.9
    path = singlepose_model(tmp_path / "m.tflite", size, dtype, keypoints)  # type: ignore[arg-type]
    config = Config().model.model_copy(update={"smart_crop": False})
    stage = build_stage(open_cpu_backend(path, load_runtime("auto"), 1), "thunder", config, "video")
    assert isinstance(stage, SinglePoseStage) and stage.estimator.input_size_px == size
    result = stage.process(_frame(480, 640))
    # A 640x480 frame letterboxed into a square: model y 0.5 is frame y 0.5, x maps straight.
    nose, right_ankle = result.poses[0].keypoints[0], result.poses[0].keypoints[16]
    assert nose.x == pytest.approx(0.5, abs=1e-3)
    assert nose.y == pytest.approx((0.2 * 640 - 80) / 480, abs=1e-3)
    assert right_ankle.y == pytest.approx((0.8 * 640 - 80) / 480, abs=1e-3)
    _payload_of(result)


def _multipose_rows(x_shift: float) -> np.ndarray:
    rows = np.zeros((6, 56), np.float32)
    for person, (x0, score) in enumerate([(0.2, 0.8), (0.6, 0.5)]):
        x = x0 + x_shift
        rows[person, 0:51:3] = np.linspace(0.2, 0.8, 17)  # y
        rows[person, 1:51:3] = x + np.linspace(-0.05, 0.05, 17)  # x: a body has width too
        rows[person, 2:51:3] = 0.7
        rows[person, 51:55] = [0.15, x - 0.05, 0.85, x + 0.05]
        rows[person, 55] = score
    rows[2, 55] = 0.05  # below the threshold: not a person
    return rows


def test_multipose_gives_ids_and_boxes_that_persist(tmp_path: Path) -> None:
    config = Config().model
    stage = None
    ids_per_frame = []
    for index in range(4):
        # A fresh model file per frame moves both people right a little; the tracker must follow.
        path = multipose_model(tmp_path / f"mp{index}.tflite", _multipose_rows(0.01 * index))
        backend = open_cpu_backend(path, load_runtime("auto"), 1)
        if stage is None:
            stage = build_stage(backend, "multipose", config, "video")
            assert isinstance(stage, MultiPoseStage)
        else:
            stage.backend = backend
        result = stage.process(_frame(480, 640, index))
        assert len(result.poses) == 2
        assert backend.input_spec.shape == (1, 192, 256, 3)  # resized to the frame's aspect, /32
        ids_per_frame.append([pose.track_id for pose in result.poses])
        payload = _payload_of(result)
        pose = payload["poses"][0]  # type: ignore[index]
        assert {"id", "bbox"} <= set(pose)
    assert ids_per_frame[0] == [1, 2]
    assert all(ids == ids_per_frame[0] for ids in ids_per_frame), ids_per_frame


def test_posenet_decodes_heatmap_peaks(tmp_path: Path) -> None:
    heatmaps = np.full((9, 9, 17), -5.0, np.float32)
    offsets = np.zeros((9, 9, 34), np.float32)
    for part in range(17):
        heatmaps[part % 9, 4, part] = 5.0  # one confident cell per keypoint
        offsets[part % 9, 4, part] = 3.0  # +3 px in y
    displacements = np.zeros((9, 9, 32), np.float32)
    path = posenet_model(tmp_path / "posenet.tflite", heatmaps, offsets, displacements, displacements)
    stage = build_stage(open_cpu_backend(path, load_runtime("auto"), 1), "posenet", Config().model, "video")
    assert isinstance(stage, PoseNetStage)
    result = stage.process(_frame(257, 257))
    (pose,) = result.poses
    first = pose.keypoints[0]
    assert first.x == pytest.approx(4 * 32 / 257, abs=1e-3)
    assert first.y == pytest.approx(3 / 257, abs=1e-3)
    assert first.score == pytest.approx(1 / (1 + np.exp(-5.0)), abs=1e-3)
    _payload_of(result)


def test_unknown_model_shape_is_a_clear_error(tmp_path: Path) -> None:
    from edgepose.errors import ModelError

    rows = np.zeros((6, 56), np.float32)
    path = multipose_model(tmp_path / "mp.tflite", rows)
    backend = open_cpu_backend(path, load_runtime("auto"), 1)
    backend._output_specs = [backend.output_specs[0], backend.output_specs[0]]  # two outputs: no family
    with pytest.raises(ModelError, match="unsupported model"):
        build_stage(backend, "x", Config().model, "video")
