"""A minimal in-memory TFLite model and its serialization to a flatbuffer.

The converter fills a :class:`TFLModel` (tensors, operators, constant data) and calls
:func:`serialize`; only this module talks to the ``flatbuffers`` builder and the generated
``tflite`` schema functions. Serialization walks everything in list order, so the same model
always yields byte-identical output.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import flatbuffers
import numpy as np
import tflite

from edgeq.quant.plan import QParams

SCHEMA_VERSION = 3

#: numpy dtype name -> tflite.TensorType
TENSOR_TYPES: dict[str, int] = {
    "float32": tflite.TensorType.FLOAT32,
    "int32": tflite.TensorType.INT32,
    "uint8": tflite.TensorType.UINT8,
    "int64": tflite.TensorType.INT64,
    "int16": tflite.TensorType.INT16,
    "int8": tflite.TensorType.INT8,
}

# Constant buffers are aligned generously so kernels may read them in place with wide loads.
_DATA_ALIGNMENT = 16


@dataclass(frozen=True)
class Options:
    """Builtin options of one operator: the union tag and a function building the table."""

    kind: int
    build: Callable[[flatbuffers.Builder], int]


@dataclass
class TFLTensor:
    """One tensor: ``quant`` carries TFLite-layout axes; ``data`` is set for constants."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    quant: QParams | None = None
    data: np.ndarray | None = None


@dataclass
class TFLOperator:
    opcode: int
    version: int
    inputs: list[int]
    outputs: list[int]
    options: Options | None = None


@dataclass
class TFLModel:
    """A single-subgraph TFLite model under construction."""

    tensors: list[TFLTensor] = field(default_factory=list)
    operators: list[TFLOperator] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    description: str = "edgeq"

    def add_tensor(self, tensor: TFLTensor) -> int:
        self.tensors.append(tensor)
        return len(self.tensors) - 1


def _int_vector(b: flatbuffers.Builder, start: Callable, values: list[int], fmt: str = "int32") -> int:
    start(b, len(values))
    prepend = b.PrependInt32 if fmt == "int32" else b.PrependInt64
    for v in reversed(values):
        prepend(int(v))
    return b.EndVector()


def _data_vector(b: flatbuffers.Builder, data: np.ndarray) -> int:
    payload = np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<"), copy=False).tobytes()
    b.StartVector(1, len(payload), _DATA_ALIGNMENT)
    b.head -= len(payload)
    b.Bytes[b.head : b.head + len(payload)] = payload
    return b.EndVector()


def _quantization(b: flatbuffers.Builder, q: QParams) -> int:
    scale = b.CreateNumpyVector(q.scale.astype(np.float32))
    zero_point = b.CreateNumpyVector(q.zero_point.astype(np.int64))
    tflite.QuantizationParametersStart(b)
    tflite.QuantizationParametersAddScale(b, scale)
    tflite.QuantizationParametersAddZeroPoint(b, zero_point)
    tflite.QuantizationParametersAddQuantizedDimension(b, int(q.axis or 0))
    return tflite.QuantizationParametersEnd(b)


def _tensor(b: flatbuffers.Builder, t: TFLTensor, buffer_index: int) -> int:
    name = b.CreateString(t.name)
    shape = _int_vector(b, tflite.TensorStartShapeVector, list(t.shape))
    quant = _quantization(b, t.quant) if t.quant is not None else None
    tflite.TensorStart(b)
    tflite.TensorAddShape(b, shape)
    tflite.TensorAddType(b, TENSOR_TYPES[t.dtype])
    tflite.TensorAddBuffer(b, buffer_index)
    tflite.TensorAddName(b, name)
    if quant is not None:
        tflite.TensorAddQuantization(b, quant)
    return tflite.TensorEnd(b)


def _operator(b: flatbuffers.Builder, op: TFLOperator, opcode_index: int) -> int:
    inputs = _int_vector(b, tflite.OperatorStartInputsVector, op.inputs)
    outputs = _int_vector(b, tflite.OperatorStartOutputsVector, op.outputs)
    options = op.options.build(b) if op.options is not None else None
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, opcode_index)
    tflite.OperatorAddInputs(b, inputs)
    tflite.OperatorAddOutputs(b, outputs)
    if op.options is not None:
        tflite.OperatorAddBuiltinOptionsType(b, op.options.kind)
        tflite.OperatorAddBuiltinOptions(b, options)
    return tflite.OperatorEnd(b)


def _opcode(b: flatbuffers.Builder, code: int, version: int) -> int:
    tflite.OperatorCodeStart(b)
    # Old readers only look at the deprecated int8 field; codes >= 127 use the placeholder.
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
    tflite.OperatorCodeAddBuiltinCode(b, code)
    tflite.OperatorCodeAddVersion(b, version)
    return tflite.OperatorCodeEnd(b)


def _table_vector(b: flatbuffers.Builder, start: Callable, offsets: list[int]) -> int:
    start(b, len(offsets))
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def _signature(b: flatbuffers.Builder, model: TFLModel) -> int:
    def tensor_maps(indices: list[int]) -> list[int]:
        maps = []
        for i in indices:
            name = b.CreateString(model.tensors[i].name)
            tflite.TensorMapStart(b)
            tflite.TensorMapAddName(b, name)
            tflite.TensorMapAddTensorIndex(b, i)
            maps.append(tflite.TensorMapEnd(b))
        return maps

    ins = _table_vector(b, tflite.SignatureDefStartInputsVector, tensor_maps(model.inputs))
    outs = _table_vector(b, tflite.SignatureDefStartOutputsVector, tensor_maps(model.outputs))
    key = b.CreateString("serving_default")
    tflite.SignatureDefStart(b)
    tflite.SignatureDefAddInputs(b, ins)
    tflite.SignatureDefAddOutputs(b, outs)
    tflite.SignatureDefAddSignatureKey(b, key)
    tflite.SignatureDefAddSubgraphIndex(b, 0)
    return tflite.SignatureDefEnd(b)


def serialize(model: TFLModel) -> bytes:
    """Serialize ``model`` into a TFLite flatbuffer (file identifier ``TFL3``)."""
    data_bytes = sum(t.data.nbytes for t in model.tensors if t.data is not None)
    b = flatbuffers.Builder(data_bytes + 64 * 1024 + 512 * len(model.tensors))

    # Buffer 0 is the schema's empty sentinel; each constant tensor owns one buffer after it.
    buffer_of: list[int] = []
    data_offsets: list[int | None] = [None]
    for t in model.tensors:
        if t.data is None:
            buffer_of.append(0)
        else:
            buffer_of.append(len(data_offsets))
            data_offsets.append(_data_vector(b, t.data))
    buffers = []
    for off in data_offsets:
        tflite.BufferStart(b)
        if off is not None:
            tflite.BufferAddData(b, off)
        buffers.append(tflite.BufferEnd(b))

    opcodes: dict[tuple[int, int], int] = {}
    for op in model.operators:
        opcodes.setdefault((op.opcode, op.version), len(opcodes))
    tensors = [_tensor(b, t, buffer_of[i]) for i, t in enumerate(model.tensors)]
    operators = [_operator(b, op, opcodes[(op.opcode, op.version)]) for op in model.operators]

    t_vec = _table_vector(b, tflite.SubGraphStartTensorsVector, tensors)
    i_vec = _int_vector(b, tflite.SubGraphStartInputsVector, model.inputs)
    o_vec = _int_vector(b, tflite.SubGraphStartOutputsVector, model.outputs)
    op_vec = _table_vector(b, tflite.SubGraphStartOperatorsVector, operators)
    sg_name = b.CreateString("main")
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, t_vec)
    tflite.SubGraphAddInputs(b, i_vec)
    tflite.SubGraphAddOutputs(b, o_vec)
    tflite.SubGraphAddOperators(b, op_vec)
    tflite.SubGraphAddName(b, sg_name)
    subgraph = tflite.SubGraphEnd(b)

    codes = [_opcode(b, code, version) for code, version in opcodes]
    codes_vec = _table_vector(b, tflite.ModelStartOperatorCodesVector, codes)
    sg_vec = _table_vector(b, tflite.ModelStartSubgraphsVector, [subgraph])
    buf_vec = _table_vector(b, tflite.ModelStartBuffersVector, buffers)
    sig_vec = _table_vector(b, tflite.ModelStartSignatureDefsVector, [_signature(b, model)])
    desc = b.CreateString(model.description)
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, SCHEMA_VERSION)
    tflite.ModelAddOperatorCodes(b, codes_vec)
    tflite.ModelAddSubgraphs(b, sg_vec)
    tflite.ModelAddDescription(b, desc)
    tflite.ModelAddBuffers(b, buf_vec)
    tflite.ModelAddSignatureDefs(b, sig_vec)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())
