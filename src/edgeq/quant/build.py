"""Build a :class:`QuantPlan` from per-tensor float ranges, honouring TFLite kernel constraints.

The planner works on *sharing groups*: sets of tensors that get one set of parameters so that
no requantization is needed between them.

1. Every activation starts alone with its calibrated range; outputs of ``Rule.FIXED`` ops
   (Sigmoid, Softmax) and the graph input are *pinned* to their imposed parameters.
2. Data-movement ops (``Rule.SAME_AS_INPUT``: MaxPool, Reshape, Split, Resize, ...) always join
   their output to their input's group: their kernels cannot rescale.
3. Concat (``Rule.SHARED``) needs all inputs at the output's parameters. An input joins the
   output's group only when that costs little: same dtype, compatible pins, and the joined range
   at most :data:`MAX_SHARE_WIDENING` times wider than either group's. Otherwise the input keeps
   its own parameters and the writer inserts a requantize (QUANTIZE int8 -> int8) in front of
   the concat; this is also how a tensor feeding two different concats is handled.
4. Each group gets the pinned parameters, or asymmetric int8 (symmetric int16) covering the union
   of its members' ranges.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from edgeq.errors import CalibrationError
from edgeq.graph.view import GraphView
from edgeq.quant.constraints import Constraints, Rule, as_dtype
from edgeq.quant.plan import QDType, QParams, QuantPlan, activation_params, symmetric_weight_params

#: A concat input joins the output's parameters only if that widens neither range by more than
#: this factor (2 = at most one bit of resolution lost); otherwise it is requantized.
MAX_SHARE_WIDENING = 2.0

#: ONNX weight layouts: the output-channel axis per op type (OIHW for Conv, IOHW for ConvTranspose).
WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 1}

DEFAULT_INPUT_PARAMS = QParams(np.float32(1.0 / 255.0), 0, "uint8")


@dataclass
class _Group:
    lo: float
    hi: float
    dtype: QDType
    pinned: QParams | None = None

    @property
    def width(self) -> float:
        return max(self.hi - self.lo, 1e-12)


class _SharingGroups:
    """Union-find over tensor names; each root holds the group's range, dtype and pin."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}
        self._group: dict[str, _Group] = {}

    def add(self, name: str, lo: float, hi: float, dtype: QDType) -> None:
        self._parent[name] = name
        self._group[name] = _Group(min(lo, 0.0), max(hi, 0.0), dtype)

    def root(self, name: str) -> str:
        while self._parent[name] != name:
            self._parent[name] = self._parent[self._parent[name]]
            name = self._parent[name]
        return name

    def group(self, name: str) -> _Group:
        return self._group[self.root(name)]

    def pin(self, name: str, params: QParams) -> None:
        g = self.group(name)
        g.pinned = params
        lo, hi = params.real_range()
        g.lo, g.hi = float(lo[0]), float(hi[0])

    def can_join(self, a: str, b: str, widening: float | None = MAX_SHARE_WIDENING) -> bool:
        """Whether ``a`` and ``b`` may share parameters (``widening=None``: at any range cost)."""
        ga, gb = self.group(a), self.group(b)
        if ga is gb:
            return True
        if ga.dtype != gb.dtype:
            return False
        if ga.pinned is not None and gb.pinned is not None:
            return ga.pinned.same_as(gb.pinned)
        if ga.pinned is not None or gb.pinned is not None:
            pinned, free = (ga, gb) if ga.pinned is not None else (gb, ga)
            step = float(pinned.pinned.scale[0])
            return free.lo >= pinned.lo - step and free.hi <= pinned.hi + step
        if widening is None:
            return True
        width = max(ga.hi, gb.hi) - min(ga.lo, gb.lo)
        return width <= widening * min(ga.width, gb.width)

    def join(self, a: str, b: str) -> None:
        """Merge the groups of ``a`` and ``b`` (the caller checked dtype and pins)."""
        ra, rb = self.root(a), self.root(b)
        if ra == rb:
            return
        ga, gb = self._group[ra], self._group.pop(rb)
        self._parent[rb] = ra
        if ga.pinned is None and gb.pinned is not None:
            ga.pinned, ga.lo, ga.hi = gb.pinned, gb.lo, gb.hi
        elif ga.pinned is None:
            ga.lo, ga.hi = min(ga.lo, gb.lo), max(ga.hi, gb.hi)

    def params(self, name: str) -> QParams:
        g = self.group(name)
        return g.pinned if g.pinned is not None else activation_params(g.lo, g.hi, g.dtype)


def plan_from_ranges(
    model: onnx.ModelProto,
    ranges: Mapping[str, tuple[float, float]],
    *,
    constraints: Constraints,
    input_name_params: QParams | None = None,
    int16: Iterable[str] = frozenset(),
    methods: Mapping[str, str] | None = None,
    int8_views: Mapping[str, QParams] | None = None,
) -> QuantPlan:
    """Turn calibrated float ranges into an INT8 (or 16x8) quantization plan that meets ``constraints``.

    Args:
        model: the float ONNX graph (static shapes, NCHW) the plan is for.
        ranges: ``(lo, hi)`` for every activation (graph inputs and float node outputs).
        constraints: the target's op constraints (``edgeq.export.<target>``'s table).
        input_name_params: parameters of the graph input(s); default uint8 scale 1/255, zp 0
            (raw 0..255 pixels: the model's ``/255`` is folded into the input quantization).
        int16: activations to quantize as int16 (symmetric, zero point 0: TFLite 16x8).
        methods: tensor -> range-setting method name, recorded as provenance.
        int8_views: parameters int8 consumers read an int16 tensor with (the plain int8 plan's);
            default: int8 over the tensor's own range.

    Returns:
        A plan with per-channel symmetric int8 weights for every Conv/ConvTranspose weight and
        per-tensor activation parameters satisfying the target's kernel ``constraints``.

    Raises:
        CalibrationError: a range is missing or not finite.
    """
    g = GraphView(model)
    int16 = set(int16)
    methods = dict(methods or {})
    input_params = input_name_params or DEFAULT_INPUT_PARAMS
    groups = _initial_groups(g, ranges, int16, input_params, constraints)
    _share(g, groups, constraints)

    plan = QuantPlan()
    sizes = Counter(groups.root(n) for n in g.activations())
    for name in g.activations():
        plan.activations[name] = groups.params(name)
        group = groups.group(name)
        if group.dtype == "int16" and group.pinned is None:
            view = (int8_views or {}).get(name)
            plan.int8_views[name] = view if view is not None else activation_params(group.lo, group.hi, "int8")
        base = methods.get(name, "range")
        plan.methods[name] = base if sizes[groups.root(name)] == 1 else f"{base}+shared"
    for name in g.inputs:
        plan.activations[name] = input_params
        plan.methods[name] = "input"
    for node in g.nodes:
        c = constraints(node.op_type)
        if c.rule is Rule.FIXED:
            for o in node.output:
                plan.methods[o] = f"fixed:{node.op_type}"
    plan.weights = _weight_params(g)
    plan.notes["planner"] = {
        "max_share_widening": MAX_SHARE_WIDENING,
        "int16_tensors": sorted(int16 & set(plan.activations)),
        "concat_inputs_requantized": _count_requantized_concat_inputs(g, plan, constraints),
    }
    return plan


def _dtype(name: str, int16: set[str]) -> QDType:
    return "int16" if name in int16 else "int8"


def _initial_groups(
    g: GraphView, ranges: Mapping[str, tuple[float, float]], int16: set[str], input_params: QParams,
    constraints: Constraints,
) -> _SharingGroups:
    groups = _SharingGroups()
    for name in g.activations():
        if name in g.inputs:
            # The writer turns a uint8 input into int8 right away (zero point - 128).
            pinned = as_dtype(input_params, "int8") if input_params.dtype == "uint8" else input_params
            groups.add(name, 0.0, 0.0, pinned.dtype)
            groups.pin(name, pinned)
            continue
        if name not in ranges:
            raise CalibrationError(
                f"no calibration range for tensor {name!r}",
                "collect ranges for every graph input and float node output",
            )
        lo, hi = (float(v) for v in ranges[name])
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
            raise CalibrationError(f"invalid range ({lo}, {hi}) for tensor {name!r}", "re-run calibration")
        groups.add(name, lo, hi, _dtype(name, int16))
    for node in g.nodes:
        c = constraints(node.op_type)
        if c.rule is Rule.FIXED:
            for o in node.output:
                if o:
                    groups.pin(o, c.fixed_params(groups.group(o).dtype))
    return groups


def _data_inputs(g: GraphView, node: onnx.NodeProto, constraints: Constraints) -> list[str]:
    """The activation inputs whose parameters the op's rule constrains."""
    if constraints(node.op_type).rule is Rule.SAME_AS_INPUT:
        return [node.input[0]] if not g.is_const(node.input[0]) else []
    return [i for i in node.input if i and not g.is_const(i)]


def _share(g: GraphView, groups: _SharingGroups, constraints: Constraints) -> None:
    # Data-movement ops first: their groups are what concats then decide to join.
    for node in g.nodes:
        if constraints(node.op_type).rule is Rule.SAME_AS_INPUT:
            for x in _data_inputs(g, node, constraints):
                for o in node.output:
                    if o and groups.can_join(x, o, widening=None):
                        groups.join(x, o)
    for node in g.nodes:
        if constraints(node.op_type).rule is Rule.SHARED:
            out = node.output[0]
            for x in _data_inputs(g, node, constraints):
                if groups.can_join(x, out):
                    groups.join(out, x)


def _weight_params(g: GraphView) -> dict[str, QParams]:
    weights = {}
    for node in g.nodes:
        axis = WEIGHT_AXIS.get(node.op_type)
        if axis is not None and len(node.input) > 1 and g.is_const(node.input[1]):
            w = g.consts[node.input[1]].astype(np.float32)
            weights[node.input[1]] = symmetric_weight_params(w, axis)
    return weights


def _count_requantized_concat_inputs(g: GraphView, plan: QuantPlan, constraints: Constraints) -> int:
    count = 0
    for node in g.nodes:
        if constraints(node.op_type).rule is Rule.SHARED:
            out = plan.activations[node.output[0]]
            count += sum(
                not as_dtype(plan.activations[x], out.dtype).same_as(out) for x in _data_inputs(g, node, constraints)
            )
    return count
