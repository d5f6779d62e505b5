"""The conversion context: maps ONNX tensors to TFLite tensors, layouts and quantization.

Op handlers (:mod:`edgeq.export.tflite.ops`) never build TRANSPOSE or QUANTIZE operators by
hand: they ask the :class:`Converter` for an input "in layout P with parameters Q" and it
inserts (and caches) the needed TRANSPOSE / requantizing QUANTIZE. Outputs are declared with
the parameters the kernel naturally produces; where those differ from the plan, a QUANTIZE to
the planned parameters follows, so every tensor named after an ONNX tensor holds exactly the
plan's parameters.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tflite

from edgeq.export.tflite import layout
from edgeq.export.tflite.flatbuf import Options, TFLModel, TFLOperator, TFLTensor
from edgeq.graph.view import GraphView
from edgeq.export.tflite.options import quantize as quantize_options
from edgeq.export.tflite.options import reshape as reshape_options
from edgeq.export.tflite.options import transpose as transpose_options
from edgeq.export.tflite.constraints import TFLITE
from edgeq.quant.constraints import Rule, as_dtype, constant_params
from edgeq.quant.plan import QDType, QParams, QuantPlan

OP = tflite.BuiltinOperator


@dataclass(frozen=True)
class Value:
    """Where an ONNX tensor lives in the TFLite graph."""

    index: int
    perm: layout.Perm
    params: QParams

    @property
    def dtype(self) -> QDType:
        return self.params.dtype


def params_key(p: QParams) -> tuple:
    """A hashable identity of per-tensor parameters (exact float32 bits)."""
    return (p.dtype, p.scale.astype(np.float32).tobytes(), p.zero_point.tobytes(), p.axis)


def quantize_version(out_dtype: str) -> int:
    return 2 if out_dtype == "int16" else 1


def transpose_version(dtype: str, rank: int) -> int:
    if rank > 5:
        return 6
    if dtype == "int16":
        return 5
    if rank > 4:
        return 4
    return 2


class Converter:
    """Accumulates the TFLite model while op handlers walk the ONNX graph."""

    def __init__(self, graph: GraphView, plan: QuantPlan, description: str) -> None:
        self.g = graph
        self.plan = plan
        self.model = TFLModel(description=description)
        self.values: dict[str, Value] = {}
        self._variants: dict[tuple, int] = {}
        self._names: set[str] = set()
        self._pending: list[tuple[str, int, layout.Perm]] = []

    # -- tensors -------------------------------------------------------------------------------
    def unique_name(self, name: str) -> str:
        """``name``, or ``name_1``, ``name_2``... if already taken (TFLite names should be unique)."""
        candidate, k = name, 0
        while candidate in self._names:
            k += 1
            candidate = f"{name}_{k}"
        self._names.add(candidate)
        return candidate

    def rename(self, index: int, name: str) -> None:
        """Give tensor ``index`` the exact name ``name``, moving any holder of it aside."""
        for i, t in enumerate(self.model.tensors):
            if t.name == name and i != index:
                t.name = self.unique_name(f"{name}/internal")
        old = self.model.tensors[index].name
        self._names.discard(old)
        self._names.add(name)
        self.model.tensors[index].name = name

    def tensor(self, name: str, shape: Sequence[int], params: QParams) -> int:
        """A new activation tensor."""
        shape = tuple(int(s) for s in shape)
        return self.model.add_tensor(TFLTensor(self.unique_name(name), shape, params.dtype, params))

    def const(self, name: str, data: np.ndarray, params: QParams | None = None) -> int:
        """A new constant tensor holding ``data`` (already in its stored dtype and layout)."""
        data = np.ascontiguousarray(data)
        t = TFLTensor(self.unique_name(name), tuple(int(s) for s in data.shape), data.dtype.name, params, data)
        return self.model.add_tensor(t)

    def int32(self, name: str, values: Sequence[int] | np.ndarray) -> int:
        """A new int32 constant (shapes, paddings, axes...)."""
        return self.const(name, np.asarray(values, dtype=np.int32))

    def shape_of(self, index: int) -> tuple[int, ...]:
        return self.model.tensors[index].shape

    # -- plan ------------------------------------------------------------------------------------
    def planned(self, name: str) -> QParams:
        """The plan's parameters of activation ``name``."""
        return self.plan.activation(name)

    def op_dtype(self, name: str) -> QDType:
        """The integer type an op producing ``name`` computes in (int8 or int16)."""
        return "int16" if self.planned(name).dtype == "int16" else "int8"

    def constant_operand(self, name: str, value: np.ndarray, rank: int, perm: layout.Perm, dtype: QDType) -> int:
        """A quantized constant broadcastable against a rank-``rank`` tensor stored as ``perm``."""
        value = np.asarray(value, np.float32)
        value = value.reshape((1,) * (rank - value.ndim) + value.shape)
        params = constant_params(value, dtype)
        return self.const(name, layout.to_stored(params.quantize(value), perm), params)

    # -- values ----------------------------------------------------------------------------------
    def value(self, name: str) -> Value:
        try:
            return self.values[name]
        except KeyError:
            raise KeyError(f"tensor {name!r} used before it was produced") from None

    def onnx_shape(self, name: str) -> tuple[int, ...]:
        return self.g.shapes[name]

    def get(self, name: str, perm: Sequence[int] | None = None, params: QParams | None = None) -> int:
        """The tensor index holding ONNX tensor ``name`` in layout ``perm`` with ``params``.

        Inserts a TRANSPOSE and/or a requantizing QUANTIZE when the tensor is stored otherwise;
        each variant is built once and reused by every consumer.
        """
        v = self.value(name)
        perm = v.perm if perm is None else tuple(perm)
        params = v.params if params is None else params
        index = v.index
        if perm != v.perm:
            key = (name, perm, params_key(v.params))
            if key not in self._variants:
                self._variants[key] = self._transpose(index, v.perm, perm, f"{name}/{_perm_tag(perm)}")
            index = self._variants[key]
        if not params.same_as(v.params):
            key = (name, perm, params_key(params))
            if key not in self._variants:
                self._variants[key] = self.requantize(index, params, f"{name}/requant")
            index = self._variants[key]
        return index

    def get_as(self, name: str, dtype: QDType, perm: Sequence[int] | None = None) -> int:
        """Like :meth:`get`, converting the tensor to ``dtype`` (same real range) if needed.

        Outputs of fixed-range ops (Sigmoid, Softmax) convert to that op's fixed parameters of
        ``dtype``, which cover exactly the op's output interval; int16 tensors read as int8 use
        the plan's ``int8_views`` (their calibrated asymmetric range) where it has one.
        """
        params = self.value(name).params
        if params.dtype == dtype:
            return self.get(name, perm)
        producer = self.g.producer.get(name)
        c = TFLITE(producer.op_type) if producer is not None else None
        if c is not None and c.rule is Rule.FIXED:
            return self.get(name, perm, c.fixed_params(dtype))
        view = self.plan.int8_views.get(name) if dtype == "int8" else None
        if view is not None:
            return self.get(name, perm, view)
        return self.get(name, perm, as_dtype(params, dtype))

    def requantize(self, index: int, params: QParams, name: str) -> int:
        """Emit QUANTIZE(index) -> a new tensor with ``params``."""
        out = self.tensor(name, self.shape_of(index), params)
        self.add_op(OP.QUANTIZE, quantize_version(params.dtype), [index], [out], quantize_options())
        return out

    def _transpose(self, index: int, src: layout.Perm, dst: layout.Perm, name: str) -> int:
        t = self.model.tensors[index]
        perm = layout.between(src, dst)
        shape = tuple(t.shape[p] for p in perm)
        out = self.tensor(name, shape, t.quant)
        moved = [p for p in perm if t.shape[p] != 1]
        if moved == sorted(moved):
            # Only size-1 axes move: the bytes are already in order, a RESHAPE suffices.
            self.add_op(OP.RESHAPE, 1, [index, self.int32(f"{name}/shape", shape)], [out], reshape_options(shape))
        else:
            self.add_op(OP.TRANSPOSE, transpose_version(t.dtype, len(shape)),
                        [index, self.int32(f"{name}/perm", perm)], [out], transpose_options())
        return out

    # -- emitting ----------------------------------------------------------------------------------
    def output(self, name: str, perm: Sequence[int], natural: QParams | None = None) -> int:
        """Declare ONNX output ``name`` stored as ``perm``; returns the tensor the op writes.

        ``natural`` is what the kernel produces (fixed or input-derived parameters); when it
        differs from the plan, the op writes a ``/raw`` tensor and :meth:`add_op` follows it
        with a QUANTIZE into the planned tensor.
        """
        planned = self.planned(name)
        perm = tuple(perm)
        shape = layout.stored_shape(self.onnx_shape(name), perm)
        if natural is None or natural.same_as(planned):
            index = self.tensor(name, shape, planned)
            self.values[name] = Value(index, perm, planned)
            return index
        raw = self.tensor(f"{name}/raw", shape, natural)
        self._pending.append((name, raw, perm))
        return raw

    def add_op(self, opcode: int, version: int, inputs: Sequence[int], outputs: Sequence[int],
               options: Options | None = None) -> None:
        """Append an operator (and the requantizes its declared outputs need)."""
        self.model.operators.append(TFLOperator(opcode, version, list(inputs), list(outputs), options))
        pending, self._pending = self._pending, []
        for name, raw, perm in pending:
            planned = self.planned(name)
            final = self.requantize(raw, planned, name)
            self.values[name] = Value(final, perm, planned)


def _perm_tag(perm: Sequence[int]) -> str:
    if tuple(perm) == layout.NHWC:
        return "nhwc"
    if layout.is_identity(perm):
        return "onnx_layout"
    return "perm" + "".join(str(p) for p in perm)
