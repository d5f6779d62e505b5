"""Mixed precision: keep the activations that cost the most accuracy in int16 (TFLite 16x8).

**Units.** A unit is the set of activations that share one set of quantization parameters, so
one dtype: a data-movement op (Split, MaxPool, Resize, ...) and its input, or a Concat and the
inputs that joined its parameters (:func:`promotion_units`).

**Promoting a unit** removes its int8 rounding only for consumers that read it in int16. A TFLite
op computes in its output's type, so an op reading an int16 tensor runs in 16x8 only if its own
output is int16 as well; an int8 op reads an int16 input through a requantize to int8 (the
plan's ``int8_views``: the same parameters plain int8 would have had), which brings the rounding
back. Promoting a unit therefore promotes its *closure*: the unit plus the units of every
output of the ops that read it (:func:`closure`). Those consumer outputs reach *their* int8
consumers with their usual int8 parameters, so they neither gain nor lose. An int16 op whose
input is int8 reads it through a lossless int8 -> int16 requantize.

**Budget.** ``--int16-budget 5`` lets at most 5 % of all activation *elements* of the cut float
graph (every activation tensor except the graph input, summed) be int16, closures included.
Elements are the currency because int16 doubles a tensor's memory and the 16x8 kernels' cost
grows with the elements they produce. The graph input is never promoted (the artifact keeps
its uint8 input); outputs may be (int16 outputs, as in Hailo's ``balanced``/``accurate``
presets; the metadata records each output's dtype).

**Selection** (:func:`choose_int16`): the head outputs come first when they fit in the budget
(YOLOv8n: 2.2 % of elements). Their rounding reaches the decoded scores and boxes unaveraged
and reorders near-tied candidates, which the noise-power measure below does not see (the float
YOLOv8n graph with only its outputs rounded to int8: coco-val-dev 0.4438 against 0.4561). With
``--int16-budget 5`` on YOLOv8n, outputs first measured +0.11 / -0.16 mAP points against float
(coco-val-dev / person set), the sensitivity fill alone -0.98 / -0.24. The rest of the budget
goes to the units whose int8 quantization alone causes the most head-output noise, measured by
:mod:`edgeq.quant.sensitivity` on a few calibration images. Two greedy fills of the budget are
compared, by noise per (incremental) element and by noise alone; the one removing more predicted
noise wins.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from edgeq.errors import EdgeqError
from edgeq.graph.heads import HeadSpec
from edgeq.graph.view import GraphView
from edgeq.quant.constraints import Constraints, Rule
from edgeq.quant.plan import QParams
from edgeq.quant.sensitivity import DecodedErrors, FloatActivations, unit_sensitivity

#: Calibration images the sensitivity pass of ``--int16-budget`` runs on (each costs about one
#: partial float forward pass per candidate layer).
SENSITIVITY_IMAGES = 2


def promotion_units(graph: onnx.ModelProto, params: Mapping[str, QParams], constraints: Constraints) -> list[list[str]]:
    """Group the activations of ``graph`` that have ``params`` into units (graph order).

    Two tensors are in one unit when a data-movement op connects them with identical parameters,
    or when a Concat input has exactly the Concat output's parameters.
    """
    g = GraphView(graph)
    order = [n for n in g.activations() if n in params]
    index = {n: i for i, n in enumerate(order)}
    parent = list(range(len(order)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(a: str, b: str) -> None:
        if a in index and b in index and params[a].same_as(params[b]):
            ra, rb = root(index[a]), root(index[b])
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)

    for node in g.nodes:
        rule = constraints(node.op_type).rule
        if rule is Rule.SAME_AS_INPUT and node.input and not g.is_const(node.input[0]):
            for o in node.output:
                join(node.input[0], o)
        elif rule is Rule.SHARED and node.output:
            for x in node.input:
                if x and not g.is_const(x):
                    join(node.output[0], x)
    groups: dict[int, list[str]] = {}
    for n in order:
        groups.setdefault(root(index[n]), []).append(n)
    return [groups[r] for r in sorted(groups)]


def interface(graph: onnx.ModelProto) -> set[str]:
    """The tensors that keep their dtype: the graph inputs (the artifact takes uint8 pixels)."""
    return {i.name for i in graph.graph.input}


def promotable(unit: Sequence[str], graph: onnx.ModelProto) -> bool:
    """Whether a unit itself may become int16 (it holds no graph input)."""
    return not interface(graph).intersection(unit)


def closure(unit: Sequence[str], graph: onnx.ModelProto, units: Sequence[Sequence[str]]) -> list[str]:
    """Every tensor to make int16 so that all readers of ``unit`` compute in 16x8: the unit and
    the units of the outputs of the ops consuming any of its members (graph order)."""
    unit_of = {m: i for i, u in enumerate(units) for m in u}
    chosen = {unit_of[m] for m in unit if m in unit_of}
    members = set(unit)
    for node in graph.graph.node:
        if members.intersection(node.input):
            chosen.update(unit_of[o] for o in node.output if o in unit_of)
    return [m for i in sorted(chosen) for m in units[i]]


@dataclass(frozen=True)
class Candidate:
    """A unit that may be promoted.

    Attributes:
        members: the unit (first member names it).
        noise: head noise power its int8 quantization alone causes (the benefit).
        tensors: its closure: every tensor promoting it makes int16.
    """

    members: tuple[str, ...]
    noise: float
    tensors: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.members[0]


@dataclass(frozen=True)
class Selection:
    """The units chosen for int16 and what they were predicted to gain.

    Attributes:
        units: chosen candidates, most sensitive first.
        tensors: every int16 tensor (the union of their closures).
        elements: activation elements promoted.
        total_elements: all activation elements (the budget's denominator).
        removed_noise: sum of the chosen units' noise (the predicted noise removed).
        rule: ``density`` (noise per incremental element) or ``noise`` greedy fill.
    """

    units: tuple[Candidate, ...]
    tensors: tuple[str, ...]
    elements: int
    total_elements: int
    removed_noise: float
    rule: str

    @property
    def percent(self) -> float:
        return 100.0 * self.elements / max(self.total_elements, 1)


def _greedy(
    cands: Sequence[Candidate], elements: Mapping[str, int], budget: float, chosen: set[str],
    score: Callable[[Candidate, int], tuple],
) -> tuple[list[Candidate], set[str]]:
    picked: list[Candidate] = []
    chosen = set(chosen)
    used = sum(elements.get(t, 0) for t in chosen)
    left = [c for c in cands if c.noise > 0]
    while left:
        costs = {c.name: sum(elements.get(t, 0) for t in c.tensors if t not in chosen) for c in left}
        fits = [c for c in left if used + costs[c.name] <= budget]
        if not fits:
            break
        best = max(fits, key=lambda c: score(c, costs[c.name]))
        picked.append(best)
        chosen.update(best.tensors)
        used += costs[best.name]
        left = [c for c in left if c is not best]
    return picked, chosen


def choose_int16(
    candidates: Sequence[Candidate],
    budget_percent: float,
    elements: Mapping[str, int],
    *,
    already: Iterable[str] = (),
) -> Selection:
    """The candidates to promote within ``budget_percent`` of all activation elements.

    Args:
        candidates: promotable units with their measured noise and closures.
        budget_percent: the share of ``sum(elements.values())`` that may be int16 (``already``
            counts against it).
        elements: activation name -> element count, for every activation but the graph input.
        already: tensors promoted anyway (explicit ``--int16`` names).
    """
    if budget_percent < 0 or not math.isfinite(budget_percent):
        raise EdgeqError(f"--int16-budget must be a percentage >= 0, got {budget_percent}")
    total = sum(elements.values())
    budget = budget_percent / 100.0 * total
    already = set(already)
    fills = {
        "noise": _greedy(candidates, elements, budget, already, lambda c, cost: (c.noise, -cost)),
        "density": _greedy(candidates, elements, budget, already, lambda c, cost: (c.noise / max(cost, 1), c.noise)),
    }
    removed = {rule: sum(c.noise for c in picked) for rule, (picked, _) in fills.items()}
    rule = "density" if removed["density"] > removed["noise"] else "noise"
    picked, chosen = fills[rule]
    return Selection(
        units=tuple(sorted(picked, key=lambda c: -c.noise)),
        tensors=tuple(sorted(chosen - already)),
        elements=sum(elements.get(t, 0) for t in chosen),
        total_elements=total,
        removed_noise=removed[rule],
        rule=rule,
    )


def output_units(graph: onnx.ModelProto, units: Sequence[Sequence[str]]) -> list[set[str]]:
    """The units holding a graph output (each is its own closure: nothing reads an output)."""
    outputs = {o.name for o in graph.graph.output}
    return [set(u) for u in units if outputs.intersection(u) and promotable(u, graph)]


def expand_names(names: Iterable[str], units: Sequence[Sequence[str]], graph: onnx.ModelProto) -> list[str]:
    """Explicit ``--int16`` names -> their closures (minus the graph input, which stays uint8).

    Raises:
        EdgeqError: a name is not an activation of the graph, or is the graph input.
    """
    unit_of = {m: tuple(u) for u in units for m in u}
    keep = interface(graph)
    chosen: set[str] = set()
    for name in names:
        if name not in unit_of:
            close = [m for m in unit_of if name in m][:3]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise EdgeqError(
                f"--int16 {name!r} is not an activation tensor of the converted graph{hint}",
                "run `edgeq analyze` for the tensor names, or `edgeq inspect` on the artifact",
            )
        unit = unit_of[name]
        if not promotable(unit, graph):
            raise EdgeqError(
                f"--int16 {name!r} is (or shares parameters with) the graph input",
                "the artifact keeps its uint8 input; promote the layers after it",
            )
        chosen.update(t for t in closure(unit, graph, units) if t not in keep)
    return [m for u in units for m in u if m in chosen]


def check_names(graph: onnx.ModelProto, names: Iterable[str]) -> None:
    """Fail early (before calibration) on ``--int16`` names that no plan could promote.

    Raises:
        EdgeqError: a name is not an activation of ``graph``, or is its input.
    """
    g = GraphView(graph)
    acts = set(g.activations())
    for name in names:
        if name in g.inputs:
            raise EdgeqError(f"--int16 {name!r} is the graph input",
                             "the artifact keeps its uint8 input; promote the layers after it")
        if name not in acts:
            close = [m for m in acts if name in m][:3]
            hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
            raise EdgeqError(f"--int16 {name!r} is not an activation tensor of the converted graph{hint}",
                             "run `edgeq analyze` for the tensor names, or `edgeq inspect` on the artifact")


def activation_elements(graph: onnx.ModelProto) -> dict[str, int]:
    """Elements of every activation of ``graph`` except its inputs (static shapes)."""
    g = GraphView(graph)
    return {n: int(np.prod(g.shapes[n])) for n in g.activations() if n not in g.inputs}


# ----------------------------------------------------------------------------- conversion


def mixed_precision(
    graph: onnx.ModelProto,
    params: Mapping[str, QParams],
    *,
    constraints: Constraints,
    names: Sequence[str] = (),
    budget_percent: float | None = None,
    images: Iterable[np.ndarray] | None = None,
    head: HeadSpec | None = None,
    decoded: DecodedErrors | None = None,
    threads: int | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """The activations to make int16 for ``--int16 NAMES`` and/or ``--int16-budget PERCENT``.

    Args:
        graph: the float graph being converted.
        params: its int8 plan's activation parameters (what the sensitivity pass applies).
        constraints: the target's op constraints (which tensors share parameters).
        names: explicit tensors (each promotes its closure; counted against the budget).
        budget_percent: share of activation elements that may be int16 (None: explicit only).
        images: letterboxed RGB calibration images for the sensitivity pass (budget only).
        head: the :class:`~edgeq.graph.heads.HeadSpec`, or None.
        decoded: the head family's decoded-error measure (None: raw output errors).
        threads: onnxruntime threads.

    Returns:
        The int16 tensor names (graph order) and the ``mixed_precision`` provenance record.
    """
    units = promotion_units(graph, params, constraints)
    explicit = expand_names(names, units, graph)
    elements = activation_elements(graph)
    total = sum(elements.values())
    chosen = set(explicit)
    record: dict[str, Any] = {"explicit": list(names), "budget_unit": "activation elements"}
    if budget_percent is not None:
        budget = budget_percent / 100.0 * total
        heads = output_units(graph, units)
        if sum(elements.get(t, 0) for t in chosen.union(*heads)) <= budget:
            chosen.update(*heads)
        record["outputs_int16"] = all(chosen.issuperset(u) for u in heads)
        keep = interface(graph)
        todo = []
        for u in units:
            tensors = closure(u, graph, units)
            if keep.intersection(tensors) or chosen.intersection(u):
                continue
            if sum(elements.get(t, 0) for t in tensors) <= budget:
                todo.append((u, tensors))
        acts = FloatActivations(graph, images or [], threads)
        sens = unit_sensitivity(acts, [u for u, _ in todo], params, head=head, decoded=decoded, threads=threads)
        cands = [Candidate(tuple(u), s.noise, tuple(t)) for (u, t), s in zip(todo, sens)]
        selection = choose_int16(cands, budget_percent, elements, already=chosen)
        chosen.update(selection.tensors)
        record.update({
            "budget_percent": budget_percent,
            "selection": "sensitivity",
            "sensitivity_images": len(acts),
            "candidates": len(cands),
            "rule": selection.rule,
            "units": [
                {"name": c.name, "tensors": len(c.tensors), "head_sqnr_db_alone": round(-10.0 * math.log10(max(c.noise, 1e-30)), 2)}
                for c in selection.units
            ],
        })
    record["elements_percent"] = round(100.0 * sum(elements.get(t, 0) for t in chosen) / max(total, 1), 3)
    order = [m for u in units for m in u if m in chosen]
    record["int16"] = order
    return order, record


__all__ = [
    "SENSITIVITY_IMAGES", "Candidate", "Selection", "activation_elements", "check_names", "choose_int16", "closure",
    "expand_names", "interface", "mixed_precision", "output_units", "promotable", "promotion_units",
]
