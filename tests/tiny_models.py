"""Tiny .tflite stand-ins for the pose models that are not available locally, built without TensorFlow.

Each file has the input/output signature of the real model (shapes, dtypes, dynamic shape signature,
tensor names) and outputs fixed, known arrays whatever the input, so a test can push a frame through
the real LiteRT interpreter and the project's loading code and check the decoders against known answers.

The graph is the same trick for every model:

    input --(CAST to float32, uint8 inputs only)--> MEAN over H, W -> [1, 3]
          --> FULLY_CONNECTED(weights all zero, bias = wanted values) -> [1, N] --> RESHAPE -> output shape

Zero weights make the product exactly 0.0 for any (finite) input, so each output is its bias bit for bit;
MEAN makes the graph independent of the input's spatial size, which the dynamic MultiPose input needs.

The flatbuffer is written with the TFLite schema's generated object API that ships inside ai-edge-litert
(`ai_edge_litert.schema_py_generated`, the module `ai_edge_litert.tools.flatbuffer_utils` uses), packed by
the `flatbuffers` package ai-edge-litert already depends on: no extra dependency.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import flatbuffers  # type: ignore[import-untyped]  # no stubs; only Builder is used
import numpy as np
from ai_edge_litert import schema_py_generated as schema

# Names of the real models' tensors, so code or messages that show them see the usual ones.
MOVENET_INPUT_NAME = "serving_default_input:0"
MOVENET_OUTPUT_NAME = "StatefulPartitionedCall:0"
POSENET_INPUT_NAME = "sub_2"
POSENET_OUTPUT_NAMES = (
    "MobilenetV1/heatmap_2/BiasAdd",
    "MobilenetV1/offset_2/BiasAdd",
    "MobilenetV1/displacement_fwd_2/BiasAdd",
    "MobilenetV1/displacement_bwd_2/BiasAdd",
)
POSENET_INPUT_SIZE = 257
POSENET_GRID = 9  # (257 - 1) / 32 + 1 cells per side at output stride 32

_TFLITE_FILE_IDENTIFIER = b"TFL3"
_SCHEMA_VERSION = 3
_TENSOR_TYPES = {
    np.dtype(np.float32): schema.TensorType.FLOAT32,
    np.dtype(np.float16): schema.TensorType.FLOAT16,
    np.dtype(np.int32): schema.TensorType.INT32,
    np.dtype(np.uint8): schema.TensorType.UINT8,
}


class _Graph:
    """One subgraph being assembled: tensors, constant buffers and builtin operators."""

    def __init__(self) -> None:
        self.tensors: list[Any] = []
        # Buffer 0 is the schema's sentinel: the empty buffer every non-constant tensor points at.
        self.buffers: list[Any] = [schema.BufferT()]
        self.opcodes: list[int] = []
        self.operators: list[Any] = []

    def tensor(self, name: str, shape: list[int], dtype: Any, signature: list[int] | None = None) -> int:
        t = schema.TensorT()
        t.name = name
        t.shape = list(shape)
        t.type = _TENSOR_TYPES[np.dtype(dtype)]
        t.buffer = 0
        if signature is not None:
            t.shapeSignature = list(signature)  # -1 marks a dimension resizable at run time
        self.tensors.append(t)
        return len(self.tensors) - 1

    def constant(self, name: str, value: np.ndarray) -> int:
        value = np.ascontiguousarray(value)
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(value.tobytes(), dtype=np.uint8)
        self.buffers.append(buffer)
        index = self.tensor(name, list(value.shape), value.dtype)
        self.tensors[index].buffer = len(self.buffers) - 1
        return index

    def op(self, code: int, inputs: list[int], outputs: list[int], options_type: int, options: Any) -> None:
        if code not in self.opcodes:
            self.opcodes.append(code)
        o = schema.OperatorT()
        o.opcodeIndex = self.opcodes.index(code)
        o.inputs = inputs
        o.outputs = outputs
        o.builtinOptionsType = options_type
        o.builtinOptions = options
        self.operators.append(o)

    def features(self, image: int, dtype: Any, shape: list[int], signature: list[int] | None = None) -> int:
        """image -> [1, 3] float32 channel means: the one input-dependent (and size-independent) value."""
        if np.dtype(dtype) != np.float32:
            cast = self.tensor("tiny/cast", shape, np.float32, signature)
            options = schema.CastOptionsT()
            options.inDataType = _TENSOR_TYPES[np.dtype(dtype)]
            options.outDataType = schema.TensorType.FLOAT32
            self.op(schema.BuiltinOperator.CAST, [image], [cast], schema.BuiltinOptions.CastOptions, options)
            image = cast
        axes = self.constant("tiny/mean_axes", np.array([1, 2], dtype=np.int32))
        means = self.tensor("tiny/mean", [1, 3], np.float32)
        reducer = schema.ReducerOptionsT()
        reducer.keepDims = False
        self.op(schema.BuiltinOperator.MEAN, [image, axes], [means], schema.BuiltinOptions.ReducerOptions, reducer)
        return means

    def constant_output(self, features: int, value: np.ndarray, name: str, float16_weights: bool = False) -> int:
        """An output tensor of `value`'s shape (batch 1 prepended) that always equals `value`."""
        flat = np.asarray(value, dtype=np.float32).reshape(-1)
        weights_shape = [flat.size, 3]  # FULLY_CONNECTED weights are [units, input depth]
        if float16_weights:
            # Like the real float16 MoveNet: fp16 constants widened by DEQUANTIZE before the float kernels.
            half = self.constant(f"{name}/weights_fp16", np.zeros(weights_shape, dtype=np.float16))
            weights = self.tensor(f"{name}/weights", weights_shape, np.float32)
            self.op(
                schema.BuiltinOperator.DEQUANTIZE,
                [half],
                [weights],
                schema.BuiltinOptions.DequantizeOptions,
                schema.DequantizeOptionsT(),
            )
        else:
            weights = self.constant(f"{name}/weights", np.zeros(weights_shape, dtype=np.float32))
        bias = self.constant(f"{name}/bias", flat)
        dense = self.tensor(f"{name}/dense", [1, flat.size], np.float32)
        fc = schema.FullyConnectedOptionsT()
        fc.keepNumDims = False
        self.op(
            schema.BuiltinOperator.FULLY_CONNECTED,
            [features, weights, bias],
            [dense],
            schema.BuiltinOptions.FullyConnectedOptions,
            fc,
        )
        out_shape = [1, *np.shape(value)]
        target = self.constant(f"{name}/shape", np.array(out_shape, dtype=np.int32))
        output = self.tensor(name, out_shape, np.float32)
        reshape = schema.ReshapeOptionsT()
        reshape.newShape = out_shape
        self.op(
            schema.BuiltinOperator.RESHAPE, [dense, target], [output], schema.BuiltinOptions.ReshapeOptions, reshape
        )
        return output

    def write(self, path: Path | str, inputs: list[int], outputs: list[int], description: str) -> Path:
        subgraph = schema.SubGraphT()
        subgraph.tensors = self.tensors
        subgraph.inputs = inputs
        subgraph.outputs = outputs
        subgraph.operators = self.operators
        subgraph.name = "main"
        model = schema.ModelT()
        model.version = _SCHEMA_VERSION
        model.description = description
        model.buffers = self.buffers
        model.subgraphs = [subgraph]
        model.operatorCodes = []
        for code in self.opcodes:
            opcode = schema.OperatorCodeT()
            # Readers take max(deprecated_builtin_code, builtin_code); all codes here fit the old byte field.
            opcode.deprecatedBuiltinCode = code
            opcode.builtinCode = code
            opcode.version = 1
            model.operatorCodes.append(opcode)
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=_TFLITE_FILE_IDENTIFIER)
        path = Path(path)
        path.write_bytes(bytes(builder.Output()))
        return path


def _checked(name: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(value, dtype=np.float32)
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
    return array


def singlepose_model(
    path: Path | str,
    input_size: int,
    input_dtype: Literal["uint8", "float32"],
    keypoints: np.ndarray,
    *,
    float16_weights: bool = False,
) -> Path:
    """MoveNet SinglePose stand-in: [1, S, S, 3] uint8/float32 in, float32 [1, 1, 17, 3] == `keypoints` out.

    S = 192 mirrors Lightning, 256 Thunder. The real int8 and float16 files both take uint8; float32 input
    exercises the float path. `float16_weights` stores the constants as fp16 behind DEQUANTIZE ops, as the
    real float16 file does (the outputs stay exact: the fp16 weights are zeros, the bias stays float32).
    """
    wanted = _checked("keypoints", keypoints, (17, 3))
    graph = _Graph()
    shape = [1, input_size, input_size, 3]
    image = graph.tensor(MOVENET_INPUT_NAME, shape, np.dtype(input_dtype))
    features = graph.features(image, np.dtype(input_dtype), shape)
    output = graph.constant_output(features, wanted[np.newaxis], MOVENET_OUTPUT_NAME, float16_weights)
    return graph.write(path, [image], [output], f"tiny MoveNet SinglePose {input_size}px {input_dtype}")


def multipose_model(path: Path | str, rows: np.ndarray) -> Path:
    """MoveNet MultiPose Lightning stand-in: uint8 [1, H, W, 3] in, float32 [1, 6, 56] == `rows` out.

    Like the real file, the input is stored as [1, 1, 1, 3] with shape signature [1, -1, -1, 3]: callers must
    `resize_tensor_input(index, [1, H, W, 3])` and `allocate_tensors()` before feeding a real frame.
    """
    wanted = _checked("rows", rows, (6, 56))
    graph = _Graph()
    shape, signature = [1, 1, 1, 3], [1, -1, -1, 3]
    image = graph.tensor(MOVENET_INPUT_NAME, shape, np.uint8, signature)
    features = graph.features(image, np.uint8, shape, signature)
    output = graph.constant_output(features, wanted, MOVENET_OUTPUT_NAME)
    return graph.write(path, [image], [output], "tiny MoveNet MultiPose Lightning")


def posenet_model(
    path: Path | str,
    heatmaps: np.ndarray,
    offsets: np.ndarray,
    displacement_fwd: np.ndarray,
    displacement_bwd: np.ndarray,
) -> Path:
    """PoseNet MobileNetV1 257 stand-in: float32 [1, 257, 257, 3] in; out, in the real model's order,
    heatmaps [1, 9, 9, 17], offsets [1, 9, 9, 34], displacement_fwd and _bwd [1, 9, 9, 32] == the arrays given.
    """
    g = POSENET_GRID
    outputs_wanted = [
        _checked("heatmaps", heatmaps, (g, g, 17)),
        _checked("offsets", offsets, (g, g, 34)),
        _checked("displacement_fwd", displacement_fwd, (g, g, 32)),
        _checked("displacement_bwd", displacement_bwd, (g, g, 32)),
    ]
    graph = _Graph()
    shape = [1, POSENET_INPUT_SIZE, POSENET_INPUT_SIZE, 3]
    image = graph.tensor(POSENET_INPUT_NAME, shape, np.float32)
    features = graph.features(image, np.float32, shape)
    outputs = [
        graph.constant_output(features, value, name)
        for value, name in zip(outputs_wanted, POSENET_OUTPUT_NAMES, strict=True)
    ]
    return graph.write(path, [image], outputs, "tiny PoseNet MobileNetV1 257x257")
