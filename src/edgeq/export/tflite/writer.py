"""``write_tflite``: a float ONNX graph + a :class:`QuantPlan` -> a fully-integer TFLite flatbuffer."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import onnx

from edgeq.errors import UnsupportedOpError
from edgeq.export.tflite import layout
from edgeq.export.tflite.builder import Converter, Value
from edgeq.export.tflite.flatbuf import serialize
from edgeq.graph.view import GraphView
from edgeq.export.tflite.ops import _FIX, HANDLERS
from edgeq.quant.constraints import as_dtype
from edgeq.quant.plan import QuantPlan


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output as stored in the artifact (TFLite shape, NHWC for 4-D)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int


@dataclass(frozen=True)
class TFLiteResult:
    """The serialized model and its interface.

    Attributes:
        buffer: the TFLite flatbuffer.
        inputs / outputs: artifact inputs / outputs in order (outputs in ONNX graph-output order,
            named exactly as the ONNX outputs).
        layouts: ONNX tensor name -> permutation from ONNX to stored axis order for every tensor
            in the artifact named after an ONNX tensor (``stored = onnx.transpose(perm)``).
    """

    buffer: bytes
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    layouts: Mapping[str, tuple[int, ...]] = field(default_factory=dict)


def validate(graph: GraphView) -> None:
    """Raise :class:`UnsupportedOpError` for the first node the writer cannot convert."""
    for node in graph.nodes:
        handler = HANDLERS.get(node.op_type)
        if handler is None or node.domain not in ("", "ai.onnx"):
            raise UnsupportedOpError(
                f"{node.op_type} node {graph.label(node)!r}: op type {node.op_type!r} is not supported "
                "by the TFLite INT8 writer", _FIX,
            )
        handler.check(graph, node)


def write_tflite(model: onnx.ModelProto, plan: QuantPlan, *, description: str = "edgeq") -> TFLiteResult:
    """Convert a float ONNX graph into a fully-integer TFLite model following ``plan``.

    The input is stored NHWC (for 4-D) in the plan's input dtype (uint8 by default, followed by a
    QUANTIZE to int8 with zero point - 128); every other tensor is int8 (int16 where the plan
    says so) with per-channel symmetric int8 weights and int32 (int64 for 16x8) biases. Outputs
    carry exactly the plan's parameters.

    Args:
        model: the float ONNX graph the plan was made for (static shapes).
        plan: quantization parameters for every activation and Conv/ConvTranspose weight.
        description: stored in the flatbuffer's ``description`` field.

    Raises:
        UnsupportedOpError: a node (or attribute) has no integer TFLite equivalent here.
        KeyError: the plan misses parameters for a tensor.
    """
    graph = GraphView(model)
    validate(graph)
    cv = Converter(graph, plan, description)
    inputs = [_add_input(cv, name) for name in graph.inputs]
    for node in graph.nodes:
        HANDLERS[node.op_type].emit(cv, node)
    layouts = {name: v.perm for name, v in cv.values.items()}
    outputs = []
    for name in graph.outputs:
        info, perm = _add_output(cv, name)
        outputs.append(info)
        layouts[name] = perm
    return TFLiteResult(serialize(cv.model), inputs, outputs, MappingProxyType(layouts))


def _info(cv: Converter, index: int) -> TensorInfo:
    t = cv.model.tensors[index]
    return TensorInfo(t.name, t.shape, t.dtype, float(t.quant.scale[0]), int(t.quant.zero_point[0]))


def _add_input(cv: Converter, name: str) -> TensorInfo:
    params = cv.planned(name)
    shape = cv.onnx_shape(name)
    perm = layout.default_perm(len(shape))
    index = cv.tensor(name, layout.stored_shape(shape, perm), params)
    cv.model.inputs.append(index)
    if params.dtype == "uint8":
        # Kernels compute in int8: shift the zero point by -128, same scale (lossless).
        int8 = as_dtype(params, "int8")
        cv.values[name] = Value(cv.requantize(index, int8, f"{name}/int8"), perm, int8)
    else:
        cv.values[name] = Value(index, perm, params)
    return _info(cv, index)


def _add_output(cv: Converter, name: str) -> tuple[TensorInfo, layout.Perm]:
    perm = layout.default_perm(len(cv.onnx_shape(name)))
    index = cv.get(name, perm, cv.planned(name))
    if cv.model.tensors[index].name != name:
        cv.rename(index, name)
    cv.model.outputs.append(index)
    return _info(cv, index), perm
