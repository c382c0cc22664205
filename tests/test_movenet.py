"""MoveNet single-pose decoding, checked against where the model's input pixels really came from."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from edgepose.errors import ModelError
from edgepose.geometry import box_to_frame, letterbox_box
from edgepose.inference.movenet import SinglePoseEstimator, decode_singlepose, keypoints_to_pose
from edgepose.inference.runtime import TensorSpec
from edgepose.pose import KEYPOINT_NAMES, CropBox

H_PX, W_PX = 480, 640
INPUT_PX = 192
RAMP_LOW, RAMP_SPAN = 20, 230  # ramp values stay clear of the zero padding


def ramp_frame() -> np.ndarray:
    """R rises with the column index and G with the row index: each pixel says where it is."""
    frame = np.zeros((H_PX, W_PX, 3), np.uint8)
    frame[..., 0] = np.round(RAMP_LOW + np.arange(W_PX) * RAMP_SPAN / (W_PX - 1))[None, :]
    frame[..., 1] = np.round(RAMP_LOW + np.arange(H_PX) * RAMP_SPAN / (H_PX - 1))[:, None]
    return frame


class RampReadingBackend:
    """A MoveNet-shaped backend that answers fixed keypoints, and measures from the input tensor which
    frame position each input position shows (a line fitted to the ramp; bilinear resampling keeps a
    ramp linear), so the truth comes from the pixels the model saw, not from the geometry code."""

    kind = "cpu"

    def __init__(self) -> None:
        self.input_spec = TensorSpec(0, "input", (1, INPUT_PX, INPUT_PX, 3), np.dtype(np.uint8), 0.0, 0)
        self.output_specs = [TensorSpec(1, "keypoints", (1, 1, 17, 3), np.dtype(np.float32), 0.0, 0)]
        # Spread over the input, in the model's own [y, x] normalized coordinates.
        self.points = np.array([[0.1 + 0.05 * i, 0.85 - 0.045 * i] for i in range(17)])
        self.fit_y: np.ndarray | None = None
        self.fit_x: np.ndarray | None = None

    def invoke(self, tensor: np.ndarray) -> list[np.ndarray]:
        image = tensor[0].astype(np.float64)
        inside = ((image[..., 0] > 0) & (image[..., 1] > 0)).astype(np.uint8)
        # Away from the pasted region's border, where resampling clamps instead of interpolating.
        rows, cols = np.nonzero(cv2.erode(inside, np.ones((5, 5), np.uint8)))
        row_px = (image[rows, cols, 1] - RAMP_LOW) * (H_PX - 1) / RAMP_SPAN
        col_px = (image[rows, cols, 0] - RAMP_LOW) * (W_PX - 1) / RAMP_SPAN
        # An input pixel's centre is at (i + 0.5) / N; a frame pixel's centre at index + 0.5.
        self.fit_y = np.polyfit((rows + 0.5) / INPUT_PX, row_px + 0.5, 1)
        self.fit_x = np.polyfit((cols + 0.5) / INPUT_PX, col_px + 0.5, 1)
        out = np.zeros((1, 1, 17, 3), np.float32)
        out[0, 0, :, :2] = self.points
        out[0, 0, :, 2] = 0.9
        return [out]

    def truth_px(self) -> np.ndarray:
        assert self.fit_y is not None and self.fit_x is not None
        return np.stack([np.polyval(self.fit_y, self.points[:, 0]), np.polyval(self.fit_x, self.points[:, 1])], 1)

    def resize_input(self, shape: tuple[int, ...]) -> None:
        pass

    def close(self) -> None:
        pass


# A large smart-crop box, partly outside the frame, with edges between pixels: rounding the pasted region to
# whole pixels moves what the model sees by up to 3.3 px here (the most in 4,000 random boxes).
OFF_GRID_BOX = CropBox(ymin=-0.29738, xmin=-0.65780, ymax=1.46597, xmax=0.66470)


@pytest.mark.parametrize("box", [None, OFF_GRID_BOX, CropBox(0.1013, 0.2071, 0.7519, 0.6953)], ids=str)
def test_keypoints_land_where_the_model_saw_them(box: CropBox | None) -> None:
    backend = RampReadingBackend()
    estimate = SinglePoseEstimator(backend).estimate(ramp_frame(), box)
    decoded_px = estimate.keypoints[:, :2] * [H_PX, W_PX]
    error_px = np.abs(decoded_px - backend.truth_px()).max()
    assert error_px <= 0.3, error_px  # uint8 rounding of the ramp, averaged by the fit


def test_decoding_through_the_requested_box_would_be_pixels_off() -> None:
    """Why the estimator maps through the effective box: the requested one is 3 px off for OFF_GRID_BOX."""
    backend = RampReadingBackend()
    SinglePoseEstimator(backend).estimate(ramp_frame(), OFF_GRID_BOX)
    through_requested_px = box_to_frame(backend.points, OFF_GRID_BOX) * [H_PX, W_PX]
    assert np.abs(through_requested_px - backend.truth_px()).max() > 2.0


def test_decode_singlepose_maps_y_and_x_through_the_box_and_keeps_scores() -> None:
    output = np.zeros((1, 1, 17, 3), np.float32)
    output[0, 0, :, 0] = np.linspace(0.0, 1.0, 17)
    output[0, 0, :, 1] = np.linspace(1.0, 0.0, 17)
    output[0, 0, :, 2] = np.linspace(0.1, 0.9, 17)
    box = CropBox(ymin=-0.25, xmin=0.125, ymax=0.75, xmax=0.625)
    mapped = decode_singlepose(output, box)
    np.testing.assert_allclose(mapped[:, 0], -0.25 + np.linspace(0.0, 1.0, 17) * 1.0, atol=1e-7)
    np.testing.assert_allclose(mapped[:, 1], 0.125 + np.linspace(1.0, 0.0, 17) * 0.5, atol=1e-7)
    np.testing.assert_allclose(mapped[:, 2], np.linspace(0.1, 0.9, 17), atol=1e-7)


def test_keypoints_to_pose_names_x_and_y_and_averages_the_score() -> None:
    keypoints = np.array([[0.01 * i, 0.5 + 0.01 * i, 0.05 * i] for i in range(17)])
    pose = keypoints_to_pose(keypoints)
    assert [k.name for k in pose.keypoints] == list(KEYPOINT_NAMES)
    assert pose.keypoints[3].y == pytest.approx(0.03) and pose.keypoints[3].x == pytest.approx(0.53)
    assert pose.keypoints[3].score == pytest.approx(0.15)
    assert pose.score == pytest.approx(0.05 * 8)


class ShapedBackend:
    """A backend of any declared shape, answering zeros; for the estimator's model checks."""

    kind = "cpu"

    def __init__(
        self, input_shape: tuple[int, ...], output_shapes: list[tuple[int, ...]], dtype: type = np.uint8
    ) -> None:
        self.input_spec = TensorSpec(0, "input", input_shape, np.dtype(dtype), 0.0, 0)
        self.output_specs = [
            TensorSpec(i + 1, f"out{i}", shape, np.dtype(np.float32), 0.0, 0) for i, shape in enumerate(output_shapes)
        ]
        self.invoke_s = 0.0

    def invoke(self, tensor: np.ndarray) -> list[np.ndarray]:
        time.sleep(self.invoke_s)
        return [np.zeros(spec.shape, np.float32) for spec in self.output_specs]

    def resize_input(self, shape: tuple[int, ...]) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("input_shape", "outputs", "message"),
    [
        ((1, 192, 192), [(1, 1, 17, 3)], r"input shape \(1, 192, 192\), expected \[1, N, N, 3\]"),
        ((1, 192, 192, 4), [(1, 1, 17, 3)], r"input shape \(1, 192, 192, 4\)"),
        ((1, 192, 256, 3), [(1, 1, 17, 3)], r"input shape \(1, 192, 256, 3\)"),
        (
            (1, 192, 192, 3),
            [(1, 1, 17, 3), (1, 1)],
            r"outputs \[\(1, 1, 17, 3\), \(1, 1\)\], expected one \[1, 1, 17, 3\]",
        ),
        ((1, 192, 192, 3), [(1, 6, 56)], r"outputs \[\(1, 6, 56\)\]"),
        ((1, 192, 192, 3), [], r"outputs \[\]"),
    ],
)
def test_a_model_that_is_not_movenet_singlepose_is_named(
    input_shape: tuple[int, ...], outputs: list[tuple[int, ...]], message: str
) -> None:
    with pytest.raises(ModelError, match="not a MoveNet single-pose model: " + message):
        SinglePoseEstimator(ShapedBackend(input_shape, outputs))


@pytest.mark.parametrize(("size", "dtype"), [(192, np.uint8), (256, np.float32)])
def test_input_tensors_take_the_model_size_and_type(size: int, dtype: type) -> None:
    estimator = SinglePoseEstimator(ShapedBackend((1, size, size, 3), [(1, 1, 17, 3)], dtype))
    assert estimator.input_size_px == size
    tensor = estimator.new_input()
    assert tensor.shape == (1, size, size, 3) and tensor.dtype == dtype
    frame = np.full((90, 160, 3), 200, np.uint8)
    box = estimator.prepare_into(frame, None, tensor)
    assert box == letterbox_box(90, 160)
    # 160x90 letterboxed to size x (size * 90/160): the middle row is the frame's 200, the top row padding.
    assert tensor[0, size // 2, size // 2].tolist() == [200, 200, 200] and tensor[0, 0, 0].tolist() == [0, 0, 0]


def test_decode_singlepose_refuses_another_output_shape() -> None:
    with pytest.raises(ModelError, match=r"unexpected MoveNet output shape \(1, 1, 16, 3\): expected \[1, 1, 17, 3\]"):
        decode_singlepose(np.zeros((1, 1, 16, 3)), letterbox_box(480, 640))


def _scaled_case() -> tuple[SinglePoseEstimator, np.ndarray, np.ndarray, np.ndarray]:
    estimator = SinglePoseEstimator(ShapedBackend((1, 192, 192, 3), [(1, 1, 17, 3)]))
    frame = ramp_frame()  # 640x480 letterboxes to 192x144 at rows 24..168
    scaled = np.full((144, 192, 3), 77, np.uint8)  # what the camera's scaler would hand over; 77 marks it
    return estimator, frame, scaled, estimator.new_input()


def test_a_frame_scaled_by_the_camera_is_pasted_as_is_for_the_letterbox() -> None:
    estimator, frame, scaled, tensor = _scaled_case()
    box = estimator.prepare_into(frame, None, tensor, scaled)
    assert (tensor[0, 24:168] == 77).all() and (tensor[0, :24] == 0).all() and (tensor[0, 168:] == 0).all()
    assert box == letterbox_box(H_PX, W_PX)
    # The same for the letterbox asked for by name.
    tensor[...] = 1
    assert estimator.prepare_into(frame, letterbox_box(H_PX, W_PX), tensor, scaled) == letterbox_box(H_PX, W_PX)
    assert (tensor[0, 24:168] == 77).all()


def test_the_scaled_frame_is_not_used_when_it_does_not_fit() -> None:
    estimator, frame, scaled, tensor = _scaled_case()
    expected = estimator.new_input()
    estimator.prepare_into(frame, None, expected)  # resized from the full frame
    for other in (np.full((144, 190, 3), 77, np.uint8), np.full((142, 192, 3), 77, np.uint8)):
        estimator.prepare_into(frame, None, tensor, other)
        np.testing.assert_array_equal(tensor, expected)
    # A smart-crop box is cut from the full frame, never from the scaled one.
    crop = CropBox(0.1, 0.2, 0.7, 0.65)
    estimator.prepare_into(frame, crop, expected)
    estimator.prepare_into(frame, crop, tensor, scaled)
    np.testing.assert_array_equal(tensor, expected)


def test_a_float_model_resizes_the_full_frame_even_with_a_scaled_one() -> None:
    estimator = SinglePoseEstimator(ShapedBackend((1, 192, 192, 3), [(1, 1, 17, 3)], np.float32))
    frame = ramp_frame()
    expected = estimator.new_input()
    estimator.prepare_into(frame, None, expected)
    tensor = estimator.new_input()
    estimator.prepare_into(frame, None, tensor, np.full((144, 192, 3), 77, np.uint8))
    np.testing.assert_array_equal(tensor, expected)
    assert not (tensor[0, 24:168] == 77).all()


def test_stage_timings_are_milliseconds_of_each_step(monkeypatch: pytest.MonkeyPatch) -> None:
    estimator = SinglePoseEstimator(ShapedBackend((1, 192, 192, 3), [(1, 1, 17, 3)]))
    ticks = iter([10.0, 10.002, 10.052, 10.0525])  # start, prepared, invoked, decoded (perf_counter seconds)
    monkeypatch.setattr(time, "perf_counter", lambda: next(ticks))
    estimate = estimator.estimate(np.zeros((48, 64, 3), np.uint8))
    timings = estimate.timings
    assert (timings.preprocess_ms, timings.invoke_ms, timings.decode_ms) == pytest.approx((2.0, 50.0, 0.5), rel=1e-6)
    assert estimate.box == letterbox_box(48, 64)  # the box the keypoints were decoded through


def test_keypoints_to_pose_needs_all_17_rows() -> None:
    with pytest.raises(ValueError):
        keypoints_to_pose(np.zeros((16, 3)))
