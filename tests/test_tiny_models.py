"""The tiny stand-in models (tests/tiny_models.py) load in the real LiteRT interpreter and in the project's
own backend, with the real models' signatures, and give back exactly the arrays they were built with."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pytest
from ai_edge_litert.interpreter import Interpreter

from edgepose.inference.runtime import InterpreterBackend, load_runtime, open_cpu_backend
from edgepose.inference.stage import detect_family
from tests.tiny_models import (
    MOVENET_INPUT_NAME,
    MOVENET_OUTPUT_NAME,
    POSENET_INPUT_NAME,
    POSENET_OUTPUT_NAMES,
    multipose_model,
    posenet_model,
    singlepose_model,
)

RNG = np.random.default_rng(7)
InputDtype = Literal["uint8", "float32"]


def _random_input(shape: tuple[int, ...] | list[int], dtype: npt.DTypeLike) -> np.ndarray:
    # Random frames, so a graph that leaked the input into its output would show.
    if np.dtype(dtype) == np.uint8:
        return RNG.integers(0, 256, size=tuple(shape), dtype=np.uint8)
    return RNG.uniform(-1.0, 1.0, size=tuple(shape)).astype(np.float32)


def _keypoints() -> np.ndarray:
    return np.column_stack([RNG.uniform(0, 1, 17), RNG.uniform(0, 1, 17), RNG.uniform(0, 1, 17)]).astype(np.float32)


def _rows() -> np.ndarray:
    return RNG.uniform(0, 1, size=(6, 56)).astype(np.float32)


def _posenet_arrays() -> list[np.ndarray]:
    return [RNG.normal(0, 3, size=(9, 9, c)).astype(np.float32) for c in (17, 34, 32, 32)]


def _open(path: Path) -> InterpreterBackend:
    return open_cpu_backend(path, load_runtime("auto"), 1)


SINGLEPOSE_VARIANTS = [
    pytest.param(192, "uint8", False, id="lightning-uint8"),
    pytest.param(256, "uint8", False, id="thunder-uint8"),
    pytest.param(192, "uint8", True, id="lightning-fp16-weights"),
    pytest.param(256, "uint8", True, id="thunder-fp16-weights"),
    pytest.param(192, "float32", False, id="lightning-float-input"),
    pytest.param(256, "float32", True, id="thunder-float-input-fp16-weights"),
]


@pytest.mark.parametrize(("size", "dtype", "fp16"), SINGLEPOSE_VARIANTS)
def test_singlepose_interpreter(tmp_path: Path, size: int, dtype: InputDtype, fp16: bool) -> None:
    keypoints = _keypoints()
    path = singlepose_model(tmp_path / "single.tflite", size, dtype, keypoints, float16_weights=fp16)
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    assert inp["name"] == MOVENET_INPUT_NAME and out["name"] == MOVENET_OUTPUT_NAME
    assert list(inp["shape"]) == [1, size, size, 3] and inp["dtype"] == np.dtype(dtype)
    assert list(inp["shape_signature"]) == [1, size, size, 3]
    assert list(out["shape"]) == [1, 1, 17, 3] and out["dtype"] == np.float32
    for _ in range(2):  # different frames, same answer
        interpreter.set_tensor(inp["index"], _random_input(inp["shape"], dtype))
        interpreter.invoke()
        np.testing.assert_array_equal(interpreter.get_tensor(out["index"]), keypoints[np.newaxis, np.newaxis])


@pytest.mark.parametrize(("size", "dtype", "fp16"), SINGLEPOSE_VARIANTS)
def test_singlepose_backend(tmp_path: Path, size: int, dtype: InputDtype, fp16: bool) -> None:
    keypoints = _keypoints()
    backend = _open(singlepose_model(tmp_path / "single.tflite", size, dtype, keypoints, float16_weights=fp16))
    assert backend.input_spec.shape == (1, size, size, 3) and backend.input_spec.dtype == np.dtype(dtype)
    assert [s.shape for s in backend.output_specs] == [(1, 1, 17, 3)]
    assert detect_family(backend) == "movenet_singlepose"
    (output,) = backend.invoke(_random_input(backend.input_spec.shape, dtype))
    np.testing.assert_array_equal(output[0, 0], keypoints)


def test_multipose_interpreter_dynamic_input(tmp_path: Path) -> None:
    rows = _rows()
    interpreter = Interpreter(model_path=str(multipose_model(tmp_path / "multi.tflite", rows)))
    (inp,) = interpreter.get_input_details()
    # As stored in the real file: a 1x1 placeholder whose H and W are declared resizable.
    assert inp["name"] == MOVENET_INPUT_NAME and inp["dtype"] == np.uint8
    assert list(inp["shape"]) == [1, 1, 1, 3]
    assert list(inp["shape_signature"]) == [1, -1, -1, 3]
    for height, width in [(192, 256), (256, 160), (256, 256)]:
        interpreter.resize_tensor_input(inp["index"], [1, height, width, 3])
        interpreter.allocate_tensors()
        (inp,) = interpreter.get_input_details()
        (out,) = interpreter.get_output_details()
        assert list(inp["shape"]) == [1, height, width, 3]
        assert out["name"] == MOVENET_OUTPUT_NAME and out["dtype"] == np.float32
        assert list(out["shape"]) == [1, 6, 56]
        interpreter.set_tensor(inp["index"], _random_input((1, height, width, 3), np.uint8))
        interpreter.invoke()
        np.testing.assert_array_equal(interpreter.get_tensor(out["index"])[0], rows)


def test_multipose_backend_resize(tmp_path: Path) -> None:
    rows = _rows()
    backend = _open(multipose_model(tmp_path / "multi.tflite", rows))
    assert backend.input_spec.shape == (1, 1, 1, 3) and backend.input_spec.dtype == np.uint8
    assert detect_family(backend) == "movenet_multipose"
    backend.resize_input((1, 192, 256, 3))
    assert backend.input_spec.shape == (1, 192, 256, 3)
    (output,) = backend.invoke(_random_input((1, 192, 256, 3), np.uint8))
    assert output.shape == (1, 6, 56) and output.dtype == np.float32
    np.testing.assert_array_equal(output[0], rows)


def test_posenet_interpreter(tmp_path: Path) -> None:
    arrays = _posenet_arrays()
    interpreter = Interpreter(model_path=str(posenet_model(tmp_path / "posenet.tflite", *arrays)))
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    outs = interpreter.get_output_details()
    assert inp["name"] == POSENET_INPUT_NAME and inp["dtype"] == np.float32
    assert list(inp["shape"]) == [1, 257, 257, 3]
    assert [d["name"] for d in outs] == list(POSENET_OUTPUT_NAMES)
    assert [list(d["shape"]) for d in outs] == [[1, 9, 9, 17], [1, 9, 9, 34], [1, 9, 9, 32], [1, 9, 9, 32]]
    assert all(d["dtype"] == np.float32 for d in outs)
    interpreter.set_tensor(inp["index"], _random_input(inp["shape"], np.float32))
    interpreter.invoke()
    for detail, expected in zip(outs, arrays, strict=True):
        np.testing.assert_array_equal(interpreter.get_tensor(detail["index"])[0], expected)


def test_posenet_backend(tmp_path: Path) -> None:
    arrays = _posenet_arrays()
    backend = _open(posenet_model(tmp_path / "posenet.tflite", *arrays))
    assert backend.input_spec.shape == (1, 257, 257, 3) and backend.input_spec.dtype == np.float32
    assert detect_family(backend) == "posenet"
    outputs = backend.invoke(_random_input(backend.input_spec.shape, np.float32))
    assert len(outputs) == 4
    for output, expected in zip(outputs, arrays, strict=True):
        np.testing.assert_array_equal(output[0], expected)


def test_wrong_shapes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keypoints"):
        singlepose_model(tmp_path / "x.tflite", 192, "uint8", np.zeros((17, 2)))
    with pytest.raises(ValueError, match="rows"):
        multipose_model(tmp_path / "x.tflite", np.zeros((6, 51)))
    with pytest.raises(ValueError, match="offsets"):
        posenet_model(tmp_path / "x.tflite", np.zeros((9, 9, 17)), np.zeros((9, 9, 17)), *_posenet_arrays()[2:])
