"""TFLite integer-kernel quantization constraints, as data: one small entry per ONNX op type.

Both the planner (:func:`edgeq.quant.build.plan_from_ranges`) and the TFLite writer read this
table, so the rule a kernel imposes is written down once. The entries follow what LiteRT's
reference kernels check in ``Prepare`` (and what their arithmetic assumes):

* ``LOGISTIC``: int8 output scale 1/256, zero point -128; int16 output scale 1/32768, zp 0.
* ``SOFTMAX``: the same fixed output parameters as ``LOGISTIC``.
* ``CONCATENATION`` (int8): every input must have exactly the output's scale and zero point
  (the int8 kernel copies bytes, it does not rescale). int16 needs zero points of 0; the writer
  still gives all inputs the output's parameters so the copy is exact.
* data-movement ops (``MAX_POOL_2D``, ``RESHAPE``, ``TRANSPOSE``, ``SPLIT``,
  ``STRIDED_SLICE``, ``RESIZE_NEAREST_NEIGHBOR``, ``PAD``): the output reuses the input's
  parameters (the kernels copy or select values without rescaling).
* arithmetic (``CONV_2D``, ``DEPTHWISE_CONV_2D``, ``TRANSPOSE_CONV``, ``ADD``, ``SUB``, ``MUL``):
  free output parameters; int16 tensors must be symmetric (zero point 0).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType

import numpy as np

from edgeq.quant.plan import QDType, QParams, activation_params


class Rule(str, Enum):
    """How an op's output parameters relate to its inputs'."""

    FREE = "free"  # from the output's own range
    FIXED = "fixed"  # fixed by the kernel, whatever the range
    SAME_AS_INPUT = "same_as_input"  # the output reuses data input 0's parameters
    SHARED = "shared"  # the output and every data input use one set of parameters


@dataclass(frozen=True)
class OpConstraint:
    """The quantization rule of one ONNX op type once lowered to TFLite.

    Attributes:
        rule: the relation between input and output parameters.
        fixed: for ``Rule.FIXED``, dtype -> (scale, zero_point) of every output.
        kernel: the TFLite builtin the op lowers to (documentation only).
    """

    rule: Rule
    fixed: Mapping[str, tuple[float, int]] = field(default_factory=dict)
    kernel: str = ""

    def fixed_params(self, dtype: QDType) -> QParams:
        """The kernel-imposed output parameters for ``dtype`` (``Rule.FIXED`` only)."""
        try:
            scale, zp = self.fixed[dtype]
        except KeyError:
            raise ValueError(f"{self.kernel or 'this op'} has no fixed {dtype} output parameters") from None
        return QParams(np.float32(scale), zp, dtype)


_UNIT_INTERVAL = MappingProxyType({"int8": (1.0 / 256.0, -128), "int16": (1.0 / 32768.0, 0)})

FREE = OpConstraint(Rule.FREE)

CONSTRAINTS: Mapping[str, OpConstraint] = MappingProxyType({
    "Conv": OpConstraint(Rule.FREE, kernel="CONV_2D / DEPTHWISE_CONV_2D"),
    "ConvTranspose": OpConstraint(Rule.FREE, kernel="TRANSPOSE_CONV"),
    "Add": OpConstraint(Rule.FREE, kernel="ADD"),
    "Sub": OpConstraint(Rule.FREE, kernel="SUB"),
    "Mul": OpConstraint(Rule.FREE, kernel="MUL"),
    "Div": OpConstraint(Rule.FREE, kernel="MUL (by the reciprocal constant)"),
    "Pow": OpConstraint(Rule.FREE, kernel="MUL (x * x)"),
    "Sigmoid": OpConstraint(Rule.FIXED, _UNIT_INTERVAL, kernel="LOGISTIC"),
    "Softmax": OpConstraint(Rule.FIXED, _UNIT_INTERVAL, kernel="SOFTMAX"),
    "Concat": OpConstraint(Rule.SHARED, kernel="CONCATENATION"),
    "MaxPool": OpConstraint(Rule.SAME_AS_INPUT, kernel="MAX_POOL_2D"),
    "Reshape": OpConstraint(Rule.SAME_AS_INPUT, kernel="RESHAPE"),
    "Flatten": OpConstraint(Rule.SAME_AS_INPUT, kernel="RESHAPE"),
    "Squeeze": OpConstraint(Rule.SAME_AS_INPUT, kernel="RESHAPE"),
    "Unsqueeze": OpConstraint(Rule.SAME_AS_INPUT, kernel="RESHAPE"),
    "Identity": OpConstraint(Rule.SAME_AS_INPUT, kernel="RESHAPE"),
    "Transpose": OpConstraint(Rule.SAME_AS_INPUT, kernel="TRANSPOSE"),
    "Split": OpConstraint(Rule.SAME_AS_INPUT, kernel="SPLIT / STRIDED_SLICE"),
    "Slice": OpConstraint(Rule.SAME_AS_INPUT, kernel="STRIDED_SLICE"),
    "Resize": OpConstraint(Rule.SAME_AS_INPUT, kernel="RESIZE_NEAREST_NEIGHBOR"),
    "Pad": OpConstraint(Rule.SAME_AS_INPUT, kernel="PAD / PADV2"),
})


def constraint(op_type: str) -> OpConstraint:
    """The constraint of ``op_type``; ops not listed are free (their own range decides)."""
    return CONSTRAINTS.get(op_type, FREE)


def constant_params(values: np.ndarray, dtype: QDType) -> QParams:
    """Per-tensor parameters for a constant operand of an elementwise op: its exact min/max."""
    values = np.asarray(values, np.float64)
    return activation_params(float(values.min(initial=0.0)), float(values.max(initial=0.0)), dtype)


def as_dtype(params: QParams, dtype: QDType) -> QParams:
    """Per-tensor parameters of ``dtype`` covering the real range ``params`` covers.

    uint8 <-> int8 is exact (the zero point moves by 128); other conversions re-derive the
    parameters from the representable interval (int16 is symmetric).
    """
    if params.dtype == dtype:
        return params
    scale, zp = float(params.scale[0]), int(params.zero_point[0])
    if {params.dtype, dtype} == {"uint8", "int8"}:
        return QParams(np.float32(scale), zp + (128 if dtype == "uint8" else -128), dtype)
    lo, hi = params.real_range()
    return activation_params(float(lo[0]), float(hi[0]), dtype)
