"""The ONNX -> TFLite op registry: one handler class per ONNX op type.

A handler has two methods: ``check`` (static validation, raising
:class:`~edgeq.errors.UnsupportedOpError` with the node, the op and the unsupported attribute)
and ``emit`` (append TFLite operators through the :class:`~edgeq.export.tflite.builder.Converter`).
Adding an op means writing one class and adding it to :data:`HANDLERS`.

Quantization rules come from :mod:`edgeq.export.tflite.constraints`: handlers declare the parameters a
kernel naturally produces (fixed for LOGISTIC/SOFTMAX, the input's for data movement) and the
converter requantizes to the plan where the two differ.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import onnx

from edgeq.errors import UnsupportedOpError
from edgeq.export.tflite import layout
from edgeq.export.tflite import options as opt
from edgeq.export.tflite.builder import OP, Converter, transpose_version
from edgeq.graph.view import GraphView
from edgeq.export.tflite.constraints import TFLITE
from edgeq.quant.constraints import Rule, as_dtype, constant_params
from edgeq.quant.plan import QDType, QParams

_FIX = (
    "run with `--split smart` to keep this part of the graph out of the INT8 artifact, "
    "or choose another target"
)


def unsupported(g: GraphView, node: onnx.NodeProto, what: str) -> UnsupportedOpError:
    """The error for a node the TFLite INT8 writer cannot express."""
    where = f"{node.op_type} node {g.label(node)!r}"
    return UnsupportedOpError(f"{where}: {what} is not supported by the TFLite INT8 writer", _FIX)


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _common_perm(cv: Converter, names: Sequence[str], rank: int) -> layout.Perm:
    """The layout most activation operands already have, so few transposes; ties go to the
    default layout (NHWC for 4-D, what convolutions downstream read), then to the first operand."""
    perms = [cv.value(n).perm for n in names if not cv.g.is_const(n) and len(cv.onnx_shape(n)) == rank]
    if not perms:
        return layout.default_perm(rank)
    counts = Counter(perms)
    default = layout.default_perm(rank)
    return max(perms, key=lambda p: (counts[p], p == default, -perms.index(p)))


def _int_version(dtype: str, int8: int, int16: int) -> int:
    return int16 if dtype == "int16" else int8


# -- spatial padding ---------------------------------------------------------------------------
def _onnx_pads(g: GraphView, node: onnx.NodeProto, in_hw: Sequence[int], kernel: Sequence[int],
               strides: Sequence[int], dilations: Sequence[int]) -> list[int]:
    """ONNX pads ``[top, left, bottom, right]``, resolving ``auto_pad``."""
    a = g.attrs(node)
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        return list(a.get("pads", [0, 0, 0, 0]))
    if auto == "VALID":
        return [0, 0, 0, 0]
    begin, end = [], []
    for size, k, s, d in zip(in_hw, kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small = total // 2
        begin.append(total - small if auto == "SAME_LOWER" else small)
        end.append(small if auto == "SAME_LOWER" else total - small)
    return begin + end


def _padding_mode(in_hw: Sequence[int], out_hw: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                  dilations: Sequence[int], pads: Sequence[int]) -> str | None:
    """``"VALID"`` or ``"SAME"`` when TFLite's padding reproduces the ONNX pads exactly, else None."""
    if not any(pads) and all(o == (i - (k - 1) * d - 1) // s + 1
                             for i, o, k, s, d in zip(in_hw, out_hw, kernel, strides, dilations)):
        return "VALID"
    for dim, (i, o, k, s, d) in enumerate(zip(in_hw, out_hw, kernel, strides, dilations)):
        total = max((math.ceil(i / s) - 1) * s + (k - 1) * d + 1 - i, 0)
        if o != math.ceil(i / s) or pads[dim] != total // 2 or pads[dim + 2] != total - total // 2:
            return None
    return "SAME"


def _explicit_pad(cv: Converter, index: int, pads: Sequence[int], name: str, fill_min: bool) -> int:
    """PAD an NHWC tensor by ONNX ``[top, left, bottom, right]``.

    Convolutions pad with the real value 0, which is the zero point (plain PAD); max pooling pads
    with the smallest code (PADV2), which can never win the max, exactly like ONNX's -inf.
    """
    t = cv.model.tensors[index]
    top, left, bottom, right = pads
    shape = (t.shape[0], t.shape[1] + top + bottom, t.shape[2] + left + right, t.shape[3])
    out = cv.tensor(f"{name}/pad", shape, t.quant)
    paddings = cv.int32(f"{name}/paddings", [[0, 0], [top, bottom], [left, right], [0, 0]])
    version = _int_version(t.dtype, 2, 3)
    if fill_min:
        fill = cv.const(f"{name}/pad_value", np.array([t.quant.qmin], dtype=t.dtype), t.quant)
        cv.add_op(OP.PADV2, version, [index, paddings, fill], [out], opt.padv2())
    else:
        cv.add_op(OP.PAD, version, [index, paddings], [out], opt.pad())
    return out


class OpHandler:
    """Base class: override ``check`` (optional) and ``emit``."""

    op_type: ClassVar[str]

    def check(self, g: GraphView, node: onnx.NodeProto) -> None:
        """Raise :class:`UnsupportedOpError` if ``node`` cannot be converted."""

    def emit(self, cv: Converter, node: onnx.NodeProto) -> None:
        raise NotImplementedError

    @staticmethod
    def natural(cv: Converter, node: onnx.NodeProto, dtype: QDType = "int8") -> QParams | None:
        """What the kernel itself outputs, per :mod:`edgeq.export.tflite.constraints`: fixed parameters
        (LOGISTIC, SOFTMAX), the input's (data movement), or None (free: the plan's)."""
        c = TFLITE(node.op_type)
        if c.rule is Rule.FIXED:
            return c.fixed_params(dtype)
        if c.rule is Rule.SAME_AS_INPUT:
            return cv.value(node.input[0]).params
        return None


# -- convolutions ---------------------------------------------------------------------------------
class _ConvBase(OpHandler):
    weight_axis: ClassVar[int]

    def check(self, g: GraphView, node: onnx.NodeProto) -> None:
        if len(g.shapes[node.input[0]]) != 4:
            raise unsupported(g, node, f"a {len(g.shapes[node.input[0]]) - 2}-D convolution (only 2-D)")
        for i, what in ((1, "weights"), (2, "bias")):
            if len(node.input) > i and node.input[i] and not g.is_const(node.input[i]):
                raise unsupported(g, node, f"non-constant {what} {node.input[i]!r}")

    def quantized_weights(self, cv: Converter, node: onnx.NodeProto, in_scale: float, dtype: QDType
                          ) -> tuple[np.ndarray, QParams, np.ndarray, np.ndarray]:
        """int8 weights (ONNX layout), their params, and the quantized bias with its scales."""
        wname = node.input[1]
        w = cv.g.consts[wname].astype(np.float32)
        if wname not in cv.plan.weights:
            raise KeyError(f"quantization plan has no parameters for weight {wname!r}")
        wp = cv.plan.weights[wname]
        qw = wp.quantize(w)
        n_out = w.shape[self.weight_axis]
        has_bias = len(node.input) > 2 and node.input[2]
        bias = cv.g.consts[node.input[2]].astype(np.float64) if has_bias else np.zeros(n_out)
        w_scale = np.broadcast_to(wp.scale.astype(np.float64), (n_out,)).copy()
        bias_dtype, limit = (np.int64, 2**47) if dtype == "int16" else (np.int32, 2**31 - 1)
        # The bias is stored at scale in_scale * w_scale: a channel whose bias would not fit
        # (all-zero weights, or an input so narrow that its step is below 2^-30 of the bias, as
        # where a signal has died out) takes the smallest weight scale its bias fits in; its
        # products are then below the bias' own resolution, so nothing measurable is lost, where a
        # saturated bias would be wrong by orders of magnitude.
        fits = np.abs(bias) / (in_scale * limit / 2)
        grow = fits > w_scale
        if grow.any():
            w_scale = np.where(grow, fits, w_scale)
            shape = [1] * w.ndim
            shape[self.weight_axis] = n_out
            qw = np.clip(np.round(w / w_scale.reshape(shape)), -127, 127).astype(np.int8)
        wp = QParams(w_scale.astype(np.float32), np.zeros(n_out, np.int64), "int8", axis=self.weight_axis)
        b_scale = in_scale * wp.scale.astype(np.float64)
        qb = np.clip(np.round(bias / b_scale), -limit, limit).astype(bias_dtype)
        return qw, wp, qb, b_scale

    @staticmethod
    def bias_tensor(cv: Converter, node: onnx.NodeProto, qb: np.ndarray, b_scale: np.ndarray) -> int:
        name = node.input[2] if len(node.input) > 2 and node.input[2] else f"{node.output[0]}/bias"
        params = QParams(b_scale.astype(np.float32), np.zeros(b_scale.size, np.int64), "int32",
                         axis=0 if b_scale.size > 1 else None)
        return cv.const(name, qb, params)


class ConvOp(_ConvBase):
    """Conv -> CONV_2D, or DEPTHWISE_CONV_2D when ``group`` equals the input channels."""

    op_type = "Conv"
    weight_axis = 0

    def check(self, g: GraphView, node: onnx.NodeProto) -> None:
        super().check(g, node)
        group = g.attrs(node).get("group", 1)
        c_in, c_out = g.shapes[node.input[0]][1], g.shapes[node.input[1]][0]
        if group != 1 and not (group == c_in and c_out % c_in == 0):
            raise unsupported(g, node, f"grouped convolution with group={group} (input channels {c_in})")

    def emit(self, cv: Converter, node: onnx.NodeProto) -> None:
        g, a, out = cv.g, cv.g.attrs(node), node.output[0]
        dtype = cv.op_dtype(out)
        x = cv.get_as(node.input[0], dtype, layout.NHWC)
        in_scale = float(cv.model.tensors[x].quant.scale[0])
        kernel = list(g.shapes[node.input[1]][2:])
        strides, dil = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
        in_hw, out_hw = g.shapes[node.input[0]][2:], g.shapes[out][2:]
        pads = _onnx_pads(g, node, in_hw, kernel, strides, dil)
        mode = _padding_mode(in_hw, out_hw, kernel, strides, dil, pads)
        if mode is None:
            x, mode = _explicit_pad(cv, x, pads, out, fill_min=False), "VALID"
        qw, wp, qb, b_scale = self.quantized_weights(cv, node, in_scale, dtype)
        bias = self.bias_tensor(cv, node, qb, b_scale)
        y = cv.output(out, layout.NHWC)
        group = a.get("group", 1)
        if group == 1:
            w = cv.const(node.input[1], qw.transpose(0, 2, 3, 1), QParams(wp.scale, wp.zero_point, "int8", axis=0))
            cv.add_op(OP.CONV_2D, _int_version(dtype, 3, 4), [x, w, bias], [y],
                      opt.conv2d(mode, tuple(strides), tuple(dil)))
        else:
            # ONNX [C_out, 1, kh, kw] -> TFLite [1, kh, kw, C_out], channels on the last axis.
            w = cv.const(node.input[1], qw.transpose(1, 2, 3, 0), QParams(wp.scale, wp.zero_point, "int8", axis=3))
            multiplier = qw.shape[0] // group
            cv.add_op(OP.DEPTHWISE_CONV_2D, _int_version(dtype, 3, 5), [x, w, bias], [y],
                      opt.depthwise_conv2d(mode, tuple(strides), tuple(dil), multiplier))


class ConvTransposeOp(_ConvBase):
    """ConvTranspose -> TRANSPOSE_CONV (with bias), VALID or SAME-equivalent padding only."""

    op_type = "ConvTranspose"
    weight_axis = 1

    def check(self, g: GraphView, node: onnx.NodeProto) -> None:
        super().check(g, node)
        a = g.attrs(node)
        if a.get("group", 1) != 1:
            raise unsupported(g, node, f"group={a['group']}")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise unsupported(g, node, f"dilations={a['dilations']}")
        if self._padding(g, node) is None:
            raise unsupported(g, node, f"pads={a.get('pads')} / output_padding={a.get('output_padding')} "
                                       "(only no padding, or TFLite SAME-equivalent padding)")

    @staticmethod
    def _padding(g: GraphView, node: onnx.NodeProto) -> str | None:
        a = g.attrs(node)
        kernel, strides = g.shapes[node.input[1]][2:], a.get("strides", [1, 1])
        in_hw, out_hw = g.shapes[node.input[0]][2:], g.shapes[node.output[0]][2:]
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or any(a.get("output_padding", [0, 0])):
            return None
        pads = a.get("pads", [0, 0, 0, 0])
        if not any(pads) and all(o == (i - 1) * s + k for i, o, k, s in zip(in_hw, out_hw, kernel, strides)):
            return "VALID"
        for dim, (i, o, k, s) in enumerate(zip(in_hw, out_hw, kernel, strides)):
            total = max(k - s, 0)
            if o != i * s or pads[dim] != total // 2 or pads[dim + 2] != total - total // 2:
                return None
        return "SAME"

    def emit(self, cv: Converter, node: onnx.NodeProto) -> None:
        g, a, out = cv.g, cv.g.attrs(node), node.output[0]
        dtype = cv.op_dtype(out)
        x = cv.get_as(node.input[0], dtype, layout.NHWC)
        in_scale = float(cv.model.tensors[x].quant.scale[0])
        qw, wp, qb, b_scale = self.quantized_weights(cv, node, in_scale, dtype)
        # ONNX [C_in, C_out, kh, kw] -> TFLite [C_out, kh, kw, C_in], channels on axis 0.
        w = cv.const(node.input[1], qw.transpose(1, 2, 3, 0), QParams(wp.scale, wp.zero_point, "int8", axis=0))
        bias = self.bias_tensor(cv, node, qb, b_scale)
        out_shape = cv.int32(f"{out}/output_shape", layout.stored_shape(g.shapes[out], layout.NHWC))
        y = cv.output(out, layout.NHWC)
        strides = tuple(a.get("strides", [1, 1]))
        cv.add_op(OP.TRANSPOSE_CONV, 3, [out_shape, w, x, bias], [y],
                  opt.transpose_conv(self._padding(g, node), strides))


# -- elementwise ----------------------------------------------------------------------------------
class SigmoidOp(OpHandler):
    """Sigmoid -> LOGISTIC (fixed output parameters)."""

    op_type = "Sigmoid"

    def emit(self, cv: Converter, node: onnx.NodeProto) -> None:
        out = node.output[0]
        dtype = cv.op_dtype(out)
        perm = cv.value(node.input[0]).perm
        x = cv.get_as(node.input[0], dtype, perm)
        y = cv.output(out, perm, self.natural(cv, node, dtype))
        cv.add_op(OP.LOGISTIC, _int_version(dtype, 2, 3), [x], [y])


class BinaryOp(OpHandler):
    """Add/Sub/Mul -> ADD/SUB/MUL; constant operands are quantized per tensor on their own."""

    op_type = "Add"
    tfl: ClassVar[dict[str, int]] = {"Add": OP.ADD, "Sub": OP.SUB, "Mul": OP.MUL, "Div": OP.MUL, "Pow": OP.MUL}

    def check(self, g: GraphView, node: onnx.NodeProto) -> None:
        if all(g.is_const(i) for i in node.input[:2]):
            raise unsupported(g, node, "an op on constants only")
        rank = len(g.shapes[node.output[0]])
        for i in node.input[:2]:
            if not g.is_const(i) and len(g.shapes[i]) != rank:
                raise unsupported(g, node, f"broadcasting the lower-rank activation {i!r}")

    def operands(self, g: GraphView, node: onnx.NodeProto) -> list[tuple[str, np.ndarray | None]]:
        """(name, constant value or None) for the TFLite op's two inputs."""
        return [(i, g.consts[i] if g.is_const(i) else None) for i in node.input[:2]]

    def emit(self, cv: Converter, node: onnx.NodeProto) -> None:
        out = node.output[0]
        dtype, rank = cv.op_dtype(out), len(cv.onnx_shape(out))
        operands = self.operands(cv.g, node)
        perm = _common_perm(cv, [n for n, c in operands if c is None], rank)
        inputs = []
        for name, value in operands:
            if value is None:
                inputs.append(cv.get_as(name, dtype, perm))
            else:
                inputs.append(cv.constant_operand(name, value, rank, perm, dtype))
        y = cv.output(out, perm)
        code = self.tfl[node.op_type]
        cv.add_op(code, self.version(cv, code, dtype, inputs, y, rank), inputs, [y], self.options(code))

    @staticmethod
    def options(code: int):
        return {OP.ADD: opt.add, OP.SUB: opt.sub, OP.MUL: opt.mul}[code]()

    @staticmethod
    def version(cv: Converter, code: int, dtype: str, inputs: list[int], out: int, rank: int) -> int:
        if code == OP.ADD:
            return _int_version(dtype, 2, 3)
        if code == OP.SUB:
            return 5 if dtype == "int16" else (3 if rank > 4 else 2)
        if dtype == "int16":
            return 4
        s = [float(cv.model.tensors[i].quant.scale[0]) for i in (*inputs, out)]
        return 3 if s[0] * s[1] / s[2] >= 1.0 else 2


class SubOp(BinaryOp):
    op_type = "Sub"


class MulOp(BinaryOp):
    op_type = "Mul"


class DivOp(BinaryOp):
    """Div by a constant -> MUL by its reciprocal."""

    op_type = "Div"

    def check(self, g: GraphView, node: onnx.NodeProto) -> None:
        super().check(g, node)
        d = node.input[1]
        if not g.is_const(d):
            raise unsupported(g, node, f"division by the activation {d!r} (only by a constant)")
        if np.any(g.consts[d] == 0):
            raise unsupported(g, node, "division by a constant containing zero")

    def operands(self, g: GraphView, node: onnx.NodeProto) -> list[tuple[str, np.ndarray | None]]:
        x, d = node.input[:2]
        return [(x, None), (f"{d}/reciprocal", 1.0 / g.consts[d].astype(np.float64))]


class PowOp(BinaryOp):
    """Pow with a constant exponent of 2 -> MUL(x, x)."""

    op_type = "Pow"

    def check(self, g: GraphView, node: onnx.NodeProto) -> None:
        e = node.input[1]
        if not g.is_const(e) or g.consts[e].size != 1 or float(g.consts[e].ravel()[0]) != 2.0:
            raise unsupported(g, node, "an exponent other than the constant 2")
        if g.is_const(node.input[0]):
            raise unsupported(g, node, "a constant base")

    def operands(self, g: GraphView, node: onnx.NodeProto) -> list[tuple[str, np.ndarray | None]]:
        return [(node.input[0], None), (node.input[0], None)]


class SoftmaxOp(OpHandler):
    """Softmax -> SOFTMAX over the last stored axis (transposing so the ONNX axis is last)."""

    op_type = "Softmax"

    def check(self, g: GraphView, node: onnx.NodeProto) -> None:
        rank = len(g.shapes[node.input[0]])
        axis = _axis(g.attrs(node).get("axis", -1 if g.opset >= 13 else 1), rank)
        if g.opset < 13 and axis != rank - 1:
            raise unsupported(g, node, f"opset-{g.opset} Softmax (flattening) with axis={axis}")

    def emit(self, cv: Converter, node: onnx.NodeProto) -> None:
        x_name, out = node.input[0], node.output[0]
        rank = len(cv.onnx_shape(x_name))
        axis = _axis(cv.g.attrs(node).get("axis", -1 if cv.g.opset >= 13 else 1), rank)
        perm = cv.value(x_name).perm
        if perm[-1] != axis:
            perm = tuple(i for i in range(rank) if i != axis) + (axis,)
        dtype = cv.op_dtype(out)
        x = cv.get_as(x_name, dtype, perm)
        y = cv.output(out, perm, self.natural(cv, node, dtype))
        cv.add_op(OP.SOFTMAX, _int_version(dtype, 2, 3), [x], [y], opt.softmax(1.0))


class MatMulOp(OpHandler):
    """MatMul -> BATCH_MATMUL (int8, or int16 16x16 with zero points 0), activation x activation or
    activation x constant, ranks 2-5 with broadcast batch axes.

    Operands are read in ONNX layout, or with their last two axes swapped, which BATCH_MATMUL's
    ``adj_x`` / ``adj_y`` absorb (an attention block's ``Transpose`` then moves no data). A
    constant operand is quantized per tensor over its exact range (symmetric for int16).
    """

    op_type = "MatMul"

    def check(self, g: GraphView, node: onnx.NodeProto) -> None:
        a, b = node.input[:2]
        if g.is_const(a) and g.is_const(b):
            raise unsupported(g, node, "a MatMul of constants only")
        ranks = [len(g.shapes[i]) for i in (a, b)]
        if min(ranks) < 2 or max(ranks) > 5:
            raise unsupported(g, node, f"operands of rank {ranks[0]} and {ranks[1]} (only 2-D to 5-D)")

    @staticmethod
    def operand(cv: Converter, name: str, rank: int, dtype: QDType) -> tuple[int, bool]:
        """(tensor index, adjoint) of one operand, read as stored where that is a matrix layout."""
        if cv.g.is_const(name):
            value = np.asarray(cv.g.consts[name], np.float32)
            value = value.reshape((1,) * (rank - value.ndim) + value.shape)
            params = constant_params(value, dtype)
            return cv.const(name, params.quantize(value), params), False
        r = len(cv.onnx_shape(name))
        ident = layout.identity(r)
        swapped = ident[:-2] + (r - 1, r - 2)
        perm = cv.value(name).perm
        adj = perm == swapped
        return cv.get_as(name, dtype, swapped if adj else ident), adj

    def emit(self, cv: Converter, node: onnx.NodeProto) -> None:
        out = node.output[0]
        # An int16 operand keeps its precision: the product runs in int16 (an attention matrix
        # read in int8 loses most of its probabilities) and only the result is requantized.
        wide = any(not cv.g.is_const(i) and cv.value(i).dtype == "int16" for i in node.input[:2])
        dtype: QDType = "int16" if wide else cv.op_dtype(out)
        rank = len(cv.onnx_shape(out))
        (a, adj_x), (b, adj_y) = (self.operand(cv, i, rank, dtype) for i in node.input[:2])
        planned = cv.planned(out)
        natural = as_dtype(planned, dtype) if planned.dtype != dtype else None
        y = cv.output(out, layout.identity(rank), natural)
        cv.add_op(OP.BATCH_MATMUL, _int_version(dtype, 2, 3), [a, b], [y], opt.batch_matmul(adj_x, adj_y))


# -- data movement --------------------------------------------------------------------------------
class ConcatOp(OpHandler):
    """Concat -> CONCATENATION; every input is brought to the output's parameters (int8 kernel)."""

    op_type = "Concat"

    def emit(self, cv: Converter, node: onnx.NodeProto) -> None:
        out = node.output[0]
        rank = len(cv.onnx_shape(out))
        axis = _axis(cv.g.attrs(node)["axis"], rank)
        params = cv.planned(out)
        perm = _common_perm(cv, list(node.input), rank)
        inputs = []
        for name in node.input:
            if cv.g.is_const(name):
                q = params.quantize(cv.g.consts[name].astype(np.float32))
                inputs.append(cv.const(name, layout.to_stored(q, perm), params))
            else:
                inputs.append(cv.get(name, perm, params))
        y = cv.output(out, perm)
        cv.add_op(OP.CONCATENATION, _int_version(params.dtype, 2, 3), inputs, [y],
                  opt.concatenation(layout.stored_axis(axis, perm)))


class SplitOp(OpHandler):
    """Split -> SPLIT (2-4 equal parts) or one STRIDED_SLICE per output, never SPLIT_V.

    The XNNPACK delegate takes SPLIT only for 2, 3 or 4 equal parts and does not take SPLIT_V at
    all; every SPLIT_V cut the graph into separate delegate partitions with a CPU kernel between
    them. STRIDED_SLICE (unit strides) is delegated and expresses any split, so it covers the rest.
    Both are pure copies: the outputs are bit-identical to SPLIT_V's.
    """

    op_type = "Split"
    max_even_parts: ClassVar[int] = 4  # xnn_define_even_split2/3/4

    @staticmethod
    def sizes(g: GraphView, node: onnx.NodeProto) -> list[int]:
        a = g.attrs(node)
        rank = len(g.shapes[node.input[0]])
        dim = g.shapes[node.input[0]][_axis(a.get("axis", 0), rank)]
        if len(node.input) > 1 and node.input[1]:
            return [int(s) for s in g.consts[node.input[1]]]
        if "split" in a:
            return [int(s) for s in a["split"]]
        n = len(node.output)
        chunk = math.ceil(dim / n)
        return [chunk] * (n - 1) + [dim - chunk * (n - 1)]

    def check(self, g: GraphView, node: onnx.NodeProto) -> None:
        if len(node.input) > 1 and node.input[1] and not g.is_const(node.input[1]):
            raise unsupported(g, node, "non-constant split sizes")

    def emit(self, cv: Converter, node: onnx.NodeProto) -> None:
        v = cv.value(node.input[0])
        rank = len(cv.onnx_shape(node.input[0]))
        axis = layout.stored_axis(_axis(cv.g.attrs(node).get("axis", 0), rank), v.perm)
        sizes = self.sizes(cv.g, node)
        if 2 <= len(sizes) <= self.max_even_parts and len(set(sizes)) == 1:
            self.emit_split(cv, node, axis)
        else:
            self.emit_slices(cv, node, axis, sizes)

    def emit_split(self, cv: Converter, node: onnx.NodeProto, axis: int) -> None:
        """One SPLIT (inputs: axis, then data)."""
        v = cv.value(node.input[0])
        outs = [cv.output(o, v.perm, self.natural(cv, node)) for o in node.output]
        axis_t = cv.const(f"{node.output[0]}/axis", np.array(axis, dtype=np.int32))
        cv.add_op(OP.SPLIT, _int_version(v.dtype, 2, 4), [axis_t, v.index], outs, opt.split(len(outs)))

    def emit_slices(self, cv: Converter, node: onnx.NodeProto, axis: int, sizes: Sequence[int]) -> None:
        """One STRIDED_SLICE per output (each op right after its output, so a requantize the
        plan asks for follows the slice that writes it)."""
        v = cv.value(node.input[0])
        shape = cv.shape_of(v.index)
        version = 4 if len(shape) > 4 else _int_version(v.dtype, 2, 1)
        start = 0
        for name, size in zip(node.output, sizes):
            begin, end = [0] * len(shape), list(shape)
            begin[axis], end[axis] = start, start + size
            start += size
            y = cv.output(name, v.perm, self.natural(cv, node))
            cv.add_op(OP.STRIDED_SLICE, version,
                      [v.index, cv.int32(f"{name}/begin", begin), cv.int32(f"{name}/end", end),
                       cv.int32(f"{name}/strides", [1] * len(shape))], [y], opt.strided_slice())


class SliceOp(OpHandler):
    """Slice (positive steps) -> STRIDED_SLICE with explicit, clamped bounds."""

    op_type = "Slice"

    @staticmethod
    def bounds(g: GraphView, node: onnx.NodeProto) -> tuple[list[int], list[int], list[int]]:
        shape = g.shapes[node.input[0]]
        rank = len(shape)
        if g.opset < 10:
            a = g.attrs(node)
            starts, ends = a["starts"], a["ends"]
            axes = a.get("axes", list(range(len(starts))))
            steps = [1] * len(starts)
        else:
            vals = [g.consts[i].tolist() if i else None for i in list(node.input[1:]) + [""] * (5 - len(node.input))]
            starts, ends = vals[0], vals[1]
            axes = vals[2] if vals[2] is not None else list(range(len(starts)))
            steps = vals[3] if vals[3] is not None else [1] * len(starts)
        begin, end, stride = [0] * rank, list(shape), [1] * rank
        for s, e, ax, st in zip(starts, ends, axes, steps):
            ax = _axis(int(ax), rank)
            dim = shape[ax]
            s, e = int(s), int(e)
            s, e = (s + dim if s < 0 else s), (e + dim if e < 0 else e)
            begin[ax], end[ax], stride[ax] = min(max(s, 0), dim), min(max(e, 0), dim), int(st)
        return begin, end, stride

    def check(self, g: GraphView, node: onnx.NodeProto) -> None:
        if any(i and not g.is_const(i) for i in node.input[1:]):
            raise unsupported(g, node, "non-constant starts/ends/axes/steps")
        if any(s <= 0 for s in self.bounds(g, node)[2]):
            raise unsupported(g, node, "a negative or zero step")

    def emit(self, cv: Converter, node: onnx.NodeProto) -> None:
        v = cv.value(node.input[0])
        begin, end, stride = (layout.stored_shape(b, v.perm) for b in self.bounds(cv.g, node))
        out = node.output[0]
        y = cv.output(out, v.perm, self.natural(cv, node))
        rank = len(begin)
        version = 4 if rank > 4 else _int_version(v.dtype, 2, 1)
        cv.add_op(OP.STRIDED_SLICE, version,
                  [v.index, cv.int32(f"{out}/begin", begin), cv.int32(f"{out}/end", end),
                   cv.int32(f"{out}/strides", stride)], [y], opt.strided_slice())


class MaxPoolOp(OpHandler):
    """MaxPool -> MAX_POOL_2D (SAME/VALID when exact, else PADV2 with the minimum code + VALID)."""

    op_type = "MaxPool"

    def check(self, g: GraphView, node: onnx.NodeProto) -> None:
        a = g.attrs(node)
        if len(g.shapes[node.input[0]]) != 4:
            raise unsupported(g, node, "a non-2-D pooling")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise unsupported(g, node, f"dilations={a['dilations']}")
        if a.get("storage_order", 0) != 0 or (len(node.output) > 1 and node.output[1]):
            raise unsupported(g, node, "the Indices output / storage_order")
        if a.get("ceil_mode", 0):
            in_hw, out_hw = g.shapes[node.input[0]][2:], g.shapes[node.output[0]][2:]
            pads = _onnx_pads(g, node, in_hw, a["kernel_shape"], a.get("strides", [1, 1]), [1, 1])
            floor_hw = [(i + p0 + p1 - k) // s + 1 for i, p0, p1, k, s in
                        zip(in_hw, pads[:2], pads[2:], a["kernel_shape"], a.get("strides", [1, 1]))]
            if list(out_hw) != floor_hw:
                raise unsupported(g, node, "ceil_mode=1 (changing the output size)")

    def emit(self, cv: Converter, node: onnx.NodeProto) -> None:
        g, a, out = cv.g, cv.g.attrs(node), node.output[0]
        v = cv.value(node.input[0])
        x = cv.get(node.input[0], layout.NHWC)
        kernel, strides = list(a["kernel_shape"]), list(a.get("strides", [1, 1]))
        in_hw, out_hw = g.shapes[node.input[0]][2:], g.shapes[out][2:]
        pads = _onnx_pads(g, node, in_hw, kernel, strides, [1, 1])
        mode = _padding_mode(in_hw, out_hw, kernel, strides, [1, 1], pads)
        if mode is None:
            x, mode = _explicit_pad(cv, x, pads, out, fill_min=True), "VALID"
        y = cv.output(out, layout.NHWC, self.natural(cv, node))
        cv.add_op(OP.MAX_POOL_2D, _int_version(v.dtype, 2, 3), [x], [y],
                  opt.pool2d(mode, tuple(strides), tuple(kernel)))


class ResizeOp(OpHandler):
    """Resize (nearest, asymmetric, floor, integer factors) -> CONCATENATION + RESHAPE (upsampling
    by 2-4) or RESIZE_NEAREST_NEIGHBOR (other factors)."""

    op_type = "Resize"
    tiled_factors: ClassVar[set[int]] = {1, 2, 3, 4}  # XNNPACK concatenates at most 4 inputs

    def check(self, g: GraphView, node: onnx.NodeProto) -> None:
        a = g.attrs(node)
        if a.get("mode", "nearest") != "nearest":
            raise unsupported(g, node, f"mode={a.get('mode')!r}")
        ctm = a.get("coordinate_transformation_mode", "half_pixel")
        nm = a.get("nearest_mode", "round_prefer_floor")
        if ctm != "asymmetric" or nm != "floor":
            raise unsupported(g, node, f"coordinate_transformation_mode={ctm!r} with nearest_mode={nm!r} "
                                       "(only 'asymmetric' with 'floor')")
        in_shape, out_shape = g.shapes[node.input[0]], g.shapes[node.output[0]]
        if len(in_shape) != 4 or in_shape[:2] != out_shape[:2]:
            raise unsupported(g, node, "resizing other than the H and W axes of a 4-D tensor")
        for i, o in zip(in_shape[2:], out_shape[2:]):
            if not (o % i == 0 or i % o == 0):
                raise unsupported(g, node, f"a non-integer scale {o}/{i}")

    def emit(self, cv: Converter, node: onnx.NodeProto) -> None:
        out = node.output[0]
        (h, w), (oh, ow) = cv.onnx_shape(node.input[0])[2:], cv.onnx_shape(out)[2:]
        if oh % h == 0 and ow % w == 0 and {oh // h, ow // w} <= self.tiled_factors and (oh, ow) != (h, w):
            self.emit_tiled(cv, node, oh // h, ow // w)
            return
        v = cv.value(node.input[0])
        x = cv.get(node.input[0], layout.NHWC)
        size = cv.int32(f"{out}/size", [oh, ow])
        y = cv.output(out, layout.NHWC, self.natural(cv, node))
        cv.add_op(OP.RESIZE_NEAREST_NEIGHBOR, _int_version(v.dtype, 2, 4), [x, size], [y], opt.resize_nearest())

    def emit_tiled(self, cv: Converter, node: onnx.NodeProto, fh: int, fw: int) -> None:
        """Nearest upsampling by integer factors as copies the XNNPACK delegate takes.

        The delegate does not take RESIZE_NEAREST_NEIGHBOR, which cut the graph around every
        upsample. With floor indexing, output pixel (i, j) is input pixel (i // fh, j // fw): in
        NHWC, concatenating ``fw`` copies along C and reshaping to ``[N, H, W*fw, C]`` repeats
        every pixel ``fw`` times along W; ``fh`` copies along W reshaped to ``[N, H*fh, W*fw, C]``
        repeats every row. Pure copies, so bit-identical to the resize.
        """
        out = node.output[0]
        x = cv.get(node.input[0], layout.NHWC)
        n, h, w, c = cv.shape_of(x)
        steps = [(f, axis, shape) for f, axis, shape in
                 ((fw, 3, (n, h, w * fw, c)), (fh, 2, (n, h * fh, w * fw, c))) if f > 1]
        for k, (f, axis, shape) in enumerate(steps):
            t = cv.model.tensors[x]
            wide = list(t.shape)
            wide[axis] *= f
            tiled = cv.tensor(f"{out}/tile{axis}", wide, t.quant)
            cv.add_op(OP.CONCATENATION, _int_version(t.dtype, 2, 3), [x] * f, [tiled], opt.concatenation(axis))
            last = k == len(steps) - 1
            y = cv.output(out, layout.NHWC, self.natural(cv, node)) if last else cv.tensor(f"{out}/rows", shape, t.quant)
            cv.add_op(OP.RESHAPE, 1, [tiled, cv.int32(f"{out}/shape{axis}", shape)], [y], opt.reshape(shape))
            x = y


class ReshapeOp(OpHandler):
    """Reshape (and Flatten/Squeeze/Unsqueeze/Identity) -> RESHAPE in ONNX layout."""

    op_type = "Reshape"

    def emit(self, cv: Converter, node: onnx.NodeProto) -> None:
        x_name, out = node.input[0], node.output[0]
        x = cv.get(x_name, layout.identity(len(cv.onnx_shape(x_name))))
        shape = cv.onnx_shape(out)
        y = cv.output(out, layout.identity(len(shape)), self.natural(cv, node))
        cv.add_op(OP.RESHAPE, 1, [x, cv.int32(f"{out}/shape", shape)], [y], opt.reshape(shape))


class FlattenOp(ReshapeOp):
    op_type = "Flatten"


class SqueezeOp(ReshapeOp):
    op_type = "Squeeze"


class UnsqueezeOp(ReshapeOp):
    op_type = "Unsqueeze"


class IdentityOp(ReshapeOp):
    op_type = "Identity"


class TransposeOp(OpHandler):
    """Transpose -> one TRANSPOSE composed with the input's and output's stored layouts.

    The output's stored layout is the first of (the input's own bytes reinterpreted, NHWC / ONNX
    order, ONNX order) that every consumer reads without another transpose; when it is the
    input's own layout the op moves no data (a RESHAPE keeps the tensor named).
    """

    op_type = "Transpose"

    def emit(self, cv: Converter, node: onnx.NodeProto) -> None:
        x_name, out = node.input[0], node.output[0]
        v = cv.value(x_name)
        rank = len(cv.onnx_shape(x_name))
        onnx_perm = tuple(cv.g.attrs(node).get("perm", list(reversed(range(rank)))))
        out_perm = self.out_perm(cv, out, layout.compose(layout.inverse(onnx_perm), v.perm))
        # stored_out = onnx_in.T(onnx_perm).T(out_perm) = stored_in.T(inverse(v.perm)).T(...)
        perm = layout.between(v.perm, layout.compose(onnx_perm, out_perm))
        y = cv.output(out, out_perm, self.natural(cv, node))
        if layout.is_identity(perm):
            shape = cv.shape_of(v.index)
            cv.add_op(OP.RESHAPE, 1, [v.index, cv.int32(f"{out}/shape", shape)], [y], opt.reshape(shape))
        else:
            cv.add_op(OP.TRANSPOSE, transpose_version(v.dtype, rank), [v.index, cv.int32(f"{out}/perm", perm)], [y],
                      opt.transpose())

    @staticmethod
    def out_perm(cv: Converter, out: str, free: layout.Perm) -> layout.Perm:
        rank = len(free)
        consumers = cv.g.consumers.get(out, [])
        if out in cv.g.outputs or not consumers:
            return layout.default_perm(rank)
        for perm in (free, layout.default_perm(rank), layout.identity(rank)):
            if all(_reads_without_transpose(cv.g, c, out, perm) for c in consumers):
                return perm
        return layout.default_perm(rank)


_NHWC_READERS = {"Conv", "ConvTranspose", "MaxPool", "Resize"}
_ONNX_ORDER_READERS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"}


def _reads_without_transpose(g: GraphView, node: onnx.NodeProto, name: str, perm: layout.Perm) -> bool:
    """Whether ``node`` reads tensor ``name`` stored as ``perm`` without a TRANSPOSE first."""
    rank = len(perm)
    if node.op_type in _NHWC_READERS:
        return perm == layout.NHWC
    if node.op_type in _ONNX_ORDER_READERS:
        return layout.is_identity(perm)
    if node.op_type == "MatMul":
        return perm[:-2] == layout.identity(rank)[:-2]
    if node.op_type == "Softmax":
        axis = _axis(g.attrs(node).get("axis", -1 if g.opset >= 13 else 1), rank)
        return perm[-1] == axis
    if node.op_type == "Transpose":
        return True
    return perm == layout.default_perm(rank)


class PadOp(OpHandler):
    """Pad (constant mode) -> PAD (pad value 0) or PADV2 (other pad values)."""

    op_type = "Pad"

    @staticmethod
    def pads_and_value(g: GraphView, node: onnx.NodeProto) -> tuple[list[int], float]:
        a = g.attrs(node)
        rank = len(g.shapes[node.input[0]])
        if g.opset < 11:
            pads, value = list(a["pads"]), float(a.get("value", 0.0))
        else:
            pads = [int(p) for p in g.consts[node.input[1]]]
            value = float(g.consts[node.input[2]].ravel()[0]) if len(node.input) > 2 and node.input[2] else 0.0
        if len(node.input) > 3 and node.input[3]:
            axes = [_axis(int(ax), rank) for ax in g.consts[node.input[3]]]
            full = [0] * (2 * rank)
            for k, ax in enumerate(axes):
                full[ax], full[ax + rank] = pads[k], pads[k + len(axes)]
            pads = full
        return pads, value

    def check(self, g: GraphView, node: onnx.NodeProto) -> None:
        if g.attrs(node).get("mode", "constant") != "constant":
            raise unsupported(g, node, f"mode={g.attrs(node)['mode']!r}")
        if any(i and not g.is_const(i) for i in node.input[1:]):
            raise unsupported(g, node, "non-constant pads")
        if any(p < 0 for p in self.pads_and_value(g, node)[0]):
            raise unsupported(g, node, "negative pads (cropping)")

    def emit(self, cv: Converter, node: onnx.NodeProto) -> None:
        out = node.output[0]
        v = cv.value(node.input[0])
        pads, value = self.pads_and_value(cv.g, node)
        rank = len(v.perm)
        paddings = [[pads[p], pads[p + rank]] for p in v.perm]
        y = cv.output(out, v.perm, self.natural(cv, node))
        inputs = [v.index, cv.int32(f"{out}/paddings", paddings)]
        version = _int_version(v.dtype, 2, 3)
        if value == 0.0:
            cv.add_op(OP.PAD, version, inputs, [y], opt.pad())
        else:
            fill = cv.const(f"{out}/pad_value", v.params.quantize(np.array([value], np.float32)), v.params)
            cv.add_op(OP.PADV2, version, [*inputs, fill], [y], opt.padv2())


HANDLERS: dict[str, OpHandler] = {h.op_type: h for h in (
    ConvOp(), ConvTransposeOp(),
    SigmoidOp(), SoftmaxOp(), MatMulOp(),
    BinaryOp(), SubOp(), MulOp(), DivOp(), PowOp(),
    ConcatOp(), SplitOp(), SliceOp(), MaxPoolOp(), ResizeOp(), PadOp(),
    ReshapeOp(), FlattenOp(), SqueezeOp(), UnsqueezeOp(), IdentityOp(), TransposeOp(),
)}
