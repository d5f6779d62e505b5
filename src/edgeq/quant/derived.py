"""Tensors whose INT8 parameters a kernel derives from another tensor need no statistics.

A Sigmoid/Softmax output has parameters fixed by its kernel. A reshape, transpose or
nearest-neighbour resize output reuses its input's parameters and holds the same distribution of
values, so any range method would choose the input's range for it. On YOLOv8 these are a
quarter of all activation values (every SiLU's Sigmoid), so calibration observes only the others
and the planner gets the derived tensors' ranges from here.

Other data-movement outputs (MaxPool, Split, Slice, Pad) share their input's parameters too, but
hold a different distribution (a max-pool keeps the large values; a split keeps some channels),
so a clipping range method can want a wider range for them: they stay observed, and the planner
joins the two. Graph outputs are always observed.
"""
from __future__ import annotations

from collections.abc import Mapping

import onnx

from edgeq.graph.session import activation_names
from edgeq.graph.view import GraphView
from edgeq.quant.constraints import Constraints, Rule

Range = tuple[float, float]

#: Data-movement ops whose output has exactly the input's distribution of values.
SAME_DISTRIBUTION = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose", "Resize"})


def _derived(node: onnx.NodeProto, constraints: Constraints) -> bool:
    rule = constraints(node.op_type).rule
    return rule is Rule.FIXED or (rule is Rule.SAME_AS_INPUT and node.op_type in SAME_DISTRIBUTION)


def _derived_nodes(g: GraphView, constraints: Constraints) -> list[onnx.NodeProto]:
    return [n for n in g.nodes if _derived(n, constraints)]


def observed_tensors(model: onnx.ModelProto, constraints: Constraints) -> list[str]:
    """The activations calibration must measure: all but those a kernel derives from another."""
    g = GraphView(model)
    outputs = set(g.outputs)
    derived = {o for n in _derived_nodes(g, constraints) for o in n.output if o and o not in outputs}
    return [n for n in activation_names(model) if n not in derived]


def with_derived_ranges(model: onnx.ModelProto, ranges: Mapping[str, Range],
                        constraints: Constraints) -> tuple[dict[str, Range], list[str]]:
    """``ranges`` completed with the derived tensors' ranges, and the names that were filled in.

    A data-movement output gets its input's range (it joins the input's sharing group anyway);
    a fixed-parameter output gets the kernel's real interval (the planner pins it regardless).
    """
    g = GraphView(model)
    full, filled = dict(ranges), []
    for node in _derived_nodes(g, constraints):  # topological order: an input's range is known first
        c = constraints(node.op_type)
        for o in node.output:
            if not o or o in full:
                continue
            if c.rule is Rule.FIXED:
                lo, hi = c.fixed_params("int8").real_range()
                full[o] = (float(lo[0]), float(hi[0]))
            else:
                full[o] = full.get(node.input[0], (0.0, 0.0))
            filled.append(o)
    return full, filled


__all__ = ["SAME_DISTRIBUTION", "observed_tensors", "with_derived_ranges"]
