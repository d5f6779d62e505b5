"""TFLite integer-kernel quantization constraints, as data: one small entry per ONNX op type.

The planner (:func:`edgeq.quant.build.plan_from_ranges`, given :data:`TFLITE`) and the TFLite
writer read this table, so the rule a kernel imposes is written down once. The entries follow what LiteRT's
reference kernels check in ``Prepare`` (and what their arithmetic assumes):

* ``LOGISTIC``: int8 output scale 1/256, zero point -128; int16 output scale 1/32768, zp 0.
* ``SOFTMAX``: the same fixed output parameters as ``LOGISTIC``.
* ``CONCATENATION`` (int8): every input must have exactly the output's scale and zero point
  (the int8 kernel copies bytes, it does not rescale). int16 needs zero points of 0; the writer
  still gives all inputs the output's parameters so the copy is exact.
* data-movement ops (``MAX_POOL_2D``, ``RESHAPE``, ``TRANSPOSE``, ``SPLIT``,
  ``STRIDED_SLICE``, ``RESIZE_NEAREST_NEIGHBOR``, ``PAD``): the output reuses the input's
  parameters (the kernels copy or select values without rescaling).
* arithmetic (``CONV_2D``, ``DEPTHWISE_CONV_2D``, ``TRANSPOSE_CONV``, ``ADD``, ``SUB``, ``MUL``,
  ``BATCH_MATMUL``): free output parameters; int16 tensors must be symmetric (zero point 0).
"""
from __future__ import annotations

from types import MappingProxyType

from edgeq.quant.constraints import Constraints, OpConstraint, Rule

_UNIT_INTERVAL = MappingProxyType({"int8": (1.0 / 256.0, -128), "int16": (1.0 / 32768.0, 0)})

TFLITE = Constraints("tflite", {
    "Conv": OpConstraint(Rule.FREE, kernel="CONV_2D / DEPTHWISE_CONV_2D"),
    "ConvTranspose": OpConstraint(Rule.FREE, kernel="TRANSPOSE_CONV"),
    "Add": OpConstraint(Rule.FREE, kernel="ADD"),
    "Sub": OpConstraint(Rule.FREE, kernel="SUB"),
    "Mul": OpConstraint(Rule.FREE, kernel="MUL"),
    "Div": OpConstraint(Rule.FREE, kernel="MUL (by the reciprocal constant)"),
    "Pow": OpConstraint(Rule.FREE, kernel="MUL (x * x)"),
    "MatMul": OpConstraint(Rule.FREE, kernel="BATCH_MATMUL"),
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

__all__ = ["TFLITE"]
