"""Operator quantization constraints as data: the types a target's table is written in.

A target (``edgeq.export.<target>``) declares, per ONNX op type, how its integer kernel ties the
op's output parameters to its inputs' (:class:`OpConstraint`, one entry per op); the planner
(:func:`edgeq.quant.build.plan_from_ranges`), the derived ranges, mixed precision and the
analysis take that :class:`Constraints` table as an argument, so the rule a kernel imposes is
written down once, in its target, and the quantization stage never names a target.
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


FREE = OpConstraint(Rule.FREE)


class Constraints:
    """A target's constraint table: ONNX op type -> :class:`OpConstraint`; unlisted ops are free.

    Call it with an op type: ``constraints("Concat").rule``.
    """

    def __init__(self, target: str, table: Mapping[str, OpConstraint]) -> None:
        self.target = target
        self.table: Mapping[str, OpConstraint] = MappingProxyType(dict(table))

    def __call__(self, op_type: str) -> OpConstraint:
        return self.table.get(op_type, FREE)

    def __repr__(self) -> str:
        return f"Constraints({self.target!r}, {len(self.table)} ops)"


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
