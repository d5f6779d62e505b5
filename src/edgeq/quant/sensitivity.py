"""Per-layer quantization sensitivity: how much head-output error one quantized tensor causes.

The float graph is run once per image with every activation kept (:class:`FloatActivations`).
Then, for each *unit* (a set of tensors that share one set of quantization parameters, e.g. a
Split and its input), only the part of the graph downstream of the unit is rebuilt as a small
ONNX model: its inputs are the cached float tensors it needs, a QuantizeLinear/DequantizeLinear
pair with the unit's int8 scale and zero point follows every member of the unit, and its outputs
are the head outputs the unit can reach. Running that model with onnxruntime gives the head
outputs with exactly this one unit quantized and everything else in float, at a fraction of a
full forward pass for late layers.

Errors are measured against the float head outputs (:func:`head_error`):

* ``raw``: relative noise power ``sum((q - f)^2) / sum(f^2)`` per output tensor;
* for YOLOv8-style heads, *decoded* errors that ignore what decode throws away: sigmoid scores,
  DFL-decoded box distances and mask coefficients, the last two weighted per anchor by the float
  top class score (background anchors do not count), and raw protos; for YOLOv5 anchor heads,
  objectness x class scores and pixel xywh boxes weighted the same way.

Raw score logits count from ``LOGIT_FLOOR`` up (below it nothing is a detection).

The ranking key, :attr:`HeadError.noise`, is the mean of the decoded relative noise per output
kind (the mean raw relative noise over outputs when the head is unknown). Quantization noise from
different tensors is nearly independent, so these noise powers approximately add: the sum of the
units' noises predicts the whole INT8 graph's head noise, and removing a unit's noise (int16)
predicts the gain.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from edgeq.graph.session import activation_names, expose_all, make_session
from edgeq.calib.preprocess import to_nchw_float
from edgeq.calib.ranges import LOGIT_FLOOR
from edgeq.graph.heads import HeadSpec
from edgeq.quant.constraints import as_dtype
from edgeq.quant.plan import QParams

#: A head family's decoded-error measure: (float outputs, test outputs, head) -> (kind, noise,
#: signal) per decoded kind (``edgeq.families.HeadFamily.decoded_errors``).
DecodedErrors = Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray], HeadSpec], Iterable[tuple[str, float, float]]]

#: Numerical floor for relative noise (SQNR is capped at 200 dB).
_TINY = 1e-20


def sqnr_db(noise: float, signal: float = 1.0) -> float:
    """Signal-to-quantization-noise ratio in dB (``inf`` for zero noise)."""
    if noise <= 0:
        return math.inf
    return 10.0 * math.log10(max(signal, _TINY) / noise)


# ----------------------------------------------------------------------------- head error


@dataclass
class ErrorAccumulator:
    """Noise and signal power summed over images, per output tensor and per decoded kind."""

    raw: dict[str, list[float]] = field(default_factory=dict)
    decoded: dict[str, list[float]] = field(default_factory=dict)

    @staticmethod
    def _add(table: dict[str, list[float]], key: str, noise: float, signal: float) -> None:
        acc = table.setdefault(key, [0.0, 0.0])
        acc[0] += noise
        acc[1] += signal

    def add(self, ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray], head: HeadSpec | None,
            decoded: DecodedErrors | None = None) -> None:
        """Accumulate one image's error of ``test`` against ``ref`` (both: output name -> NCHW).

        Score logits count from :data:`LOGIT_FLOOR` up: below it nothing is a detection, and
        the planner floors those outputs' ranges there.
        """
        floored = set() if head is None else head.score_logits()
        for name, f in ref.items():
            f, q = f.astype(np.float64), test.get(name, f).astype(np.float64)
            if name in floored:
                f, q = np.maximum(f, LOGIT_FLOOR), np.maximum(q, LOGIT_FLOOR)
            d = q - f
            self._add(self.raw, name, float(np.sum(d * d)), float(np.sum(f * f)))
        if head is not None and decoded is not None:
            for kind, noise, signal in decoded(ref, test, head):
                self._add(self.decoded, kind, noise, signal)

    def result(self) -> HeadError:
        raw = {k: v[0] / max(v[1], _TINY) for k, v in self.raw.items()}
        dec = {k: v[0] / max(v[1], _TINY) for k, v in self.decoded.items()}
        return HeadError(raw=raw, decoded=dec)


@dataclass(frozen=True)
class HeadError:
    """Relative noise power (noise / signal) of the head outputs.

    Attributes:
        raw: output tensor name -> relative noise of the raw (pre-decode) values.
        decoded: output kind (scores, boxes, mask_coefs, protos) -> relative noise after decode.
    """

    raw: Mapping[str, float]
    decoded: Mapping[str, float]

    @property
    def noise(self) -> float:
        """The ranking key: mean decoded relative noise over kinds (mean raw if not decoded)."""
        values = list(self.decoded.values()) or list(self.raw.values())
        return float(np.mean(values)) if values else 0.0

    @property
    def sqnr_db(self) -> float:
        return sqnr_db(self.noise)

    @property
    def raw_sqnr_db(self) -> float:
        values = list(self.raw.values())
        return sqnr_db(float(np.mean(values))) if values else math.inf

    def kind_sqnr_db(self) -> dict[str, float]:
        return {k: sqnr_db(v) for k, v in self.decoded.items()}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


# ----------------------------------------------------------------------------- float activations


class FloatActivations:
    """Every float activation of ``graph`` for a few images (the reference for all comparisons).

    Memory: one float32 copy of every activation per image (about 170 MB per 640x640 image for
    yolov8n, 270 MB for yolov8n-seg), so keep the image count small.
    """

    def __init__(self, graph: onnx.ModelProto, images: Iterable[np.ndarray], threads: int | None = None) -> None:
        self.graph = graph
        self.names = activation_names(graph)
        self.input_name = graph.graph.input[0].name
        self.outputs = [o.name for o in graph.graph.output]
        session = make_session(expose_all(graph, self.names), threads)
        self.images: list[dict[str, np.ndarray]] = []
        for rgb in images:
            values = session.run(self.names, {self.input_name: to_nchw_float(rgb)})
            self.images.append({n: v for n, v in zip(self.names, values) if v.dtype == np.float32})

    def __len__(self) -> int:
        return len(self.images)

    def head(self, i: int) -> dict[str, np.ndarray]:
        """The float head outputs of image ``i``."""
        return {n: self.images[i][n] for n in self.outputs}

    def elements(self, name: str) -> int:
        return int(self.images[0][name].size) if self.images else 0


# ----------------------------------------------------------------------------- units


@dataclass(frozen=True)
class UnitSensitivity:
    """The head error caused by quantizing one unit (and nothing else) to int8.

    Attributes:
        name: the unit's representative tensor (its first member in graph order).
        members: every tensor of the unit (they share quantization parameters).
        elements: activation elements in the unit (per image).
        op: the op type producing ``name``.
        error: the head error with only this unit quantized.
    """

    name: str
    members: tuple[str, ...]
    elements: int
    op: str
    error: HeadError

    @property
    def noise(self) -> float:
        return self.error.noise


def _qdq_nodes(name: str, src: str, params: QParams) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """QuantizeLinear -> DequantizeLinear from ``src`` into ``name`` with int8 ``params``."""
    p = params if params.dtype in ("int8", "uint8") else as_dtype(params, "int8")
    zp_dtype = np.int8 if p.dtype == "int8" else np.uint8
    s = numpy_helper.from_array(np.asarray(p.scale[0], np.float32), f"{name}__qs")
    z = numpy_helper.from_array(np.asarray(p.zero_point[0], zp_dtype), f"{name}__qz")
    nodes = [
        helper.make_node("QuantizeLinear", [src, s.name, z.name], [f"{name}__q"], name=f"{name}__Q"),
        helper.make_node("DequantizeLinear", [f"{name}__q", s.name, z.name], [name], name=f"{name}__DQ"),
    ]
    return nodes, [s, z]


class SubgraphBuilder:
    """Builds the downstream-of-a-unit ONNX models (see the module docstring)."""

    def __init__(self, graph: onnx.ModelProto) -> None:
        self.graph = graph
        g = graph.graph
        self.nodes = list(g.node)
        self.inits = {t.name: t for t in g.initializer}
        self.outputs = [o.name for o in g.output]
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for o in node.output:
                if o:
                    self.producer[o] = i
            for x in node.input:
                if x:
                    self.consumers.setdefault(x, []).append(i)

    def downstream(self, members: Iterable[str]) -> list[int]:
        """Indices (graph order) of the nodes that depend on any of ``members``."""
        seen: set[int] = set()
        stack = [c for m in members for c in self.consumers.get(m, [])]
        while stack:
            i = stack.pop()
            if i in seen:
                continue
            seen.add(i)
            stack.extend(c for o in self.nodes[i].output if o for c in self.consumers.get(o, []))
        return sorted(seen)

    def build(self, members: Sequence[str], params: Mapping[str, QParams]) -> tuple[onnx.ModelProto, list[str], list[str]]:
        """The model computing the head outputs reachable from ``members`` with them quantized.

        Returns the model, the float tensors to feed (from the cache, named as in the float
        graph but with ``__float`` appended for quantized members) and the head outputs it gives.
        """
        member_set = set(members)
        affected = self.downstream(members)
        affected_set = set(affected)
        produced = {o for i in affected for o in self.nodes[i].output if o}
        nodes: list[onnx.NodeProto] = []
        inits: list[onnx.TensorProto] = []
        feeds: list[str] = []
        # members produced upstream of the subgraph enter as inputs, quantized at the entry
        for m in members:
            if m not in produced:
                feeds.append(m)
                qn, qi = _qdq_nodes(m, f"{m}__float", params[m])
                nodes += qn
                inits += qi
        needed: set[str] = set()
        for i in affected:
            node = onnx.NodeProto()
            node.CopyFrom(self.nodes[i])
            for k, o in enumerate(node.output):
                if o in member_set:
                    node.output[k] = f"{o}__float"
            nodes.append(node)
            for o in self.nodes[i].output:
                if o in member_set:
                    qn, qi = _qdq_nodes(o, f"{o}__float", params[o])
                    nodes += qn
                    inits += qi
            needed.update(x for x in node.input if x)
        extra_nodes: list[onnx.NodeProto] = []
        for x in sorted(needed - produced - member_set):
            if x in self.inits:
                inits.append(self.inits[x])
            elif x in self.producer and self.nodes[self.producer[x]].op_type == "Constant" and self.producer[x] not in affected_set:
                extra_nodes.append(self.nodes[self.producer[x]])
            else:
                feeds.append(x)
        outputs = [o for o in self.outputs if o in produced or o in member_set]
        feed_names = [f"{f}__float" if f in member_set else f for f in feeds]
        graph = helper.make_graph(
            extra_nodes + nodes,
            "edgeq_sensitivity",
            [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in feed_names],
            [helper.make_empty_tensor_value_info(o) for o in outputs],
            initializer=inits,
        )
        model = helper.make_model(graph, opset_imports=list(self.graph.opset_import))
        model.ir_version = self.graph.ir_version
        return model, feeds, outputs


def unit_sensitivity(
    acts: FloatActivations,
    units: Sequence[Sequence[str]],
    params: Mapping[str, QParams],
    *,
    head: HeadSpec | None = None,
    decoded: DecodedErrors | None = None,
    threads: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[UnitSensitivity]:
    """The head error of each unit quantized alone to int8 (int16 parameters are narrowed to
    int8 covering the same range, so the result is always "what this unit costs in int8").

    Args:
        acts: cached float activations of the graph on a few images.
        units: tensor-name groups; each is quantized together (members missing from ``params``
            or from the cache are left in float).
        params: the quantization parameters to apply (a plan's, or an artifact's own).
        head: the head spec (None: raw output errors only).
        decoded: the head family's decoded-error measure (None: raw output errors only).
        threads: onnxruntime threads.
        progress: called with 1 after each unit.

    Returns:
        One :class:`UnitSensitivity` per unit, in the order given (sort by ``noise`` to rank).
    """
    builder = SubgraphBuilder(acts.graph)
    op_of = {o: n.op_type for n in acts.graph.graph.node for o in n.output}
    results = []
    for unit in units:
        members = [m for m in unit if m in params and acts.images and m in acts.images[0]]
        acc = ErrorAccumulator()
        if members:
            model, feeds, outputs = builder.build(members, params)
            # no fusions: a fused QDQ pair would not quantize
            session = make_session(model, threads, ort.GraphOptimizationLevel.ORT_DISABLE_ALL) if outputs else None
            for i, values in enumerate(acts.images):
                ref = acts.head(i)
                test = dict(ref)
                if session is not None:
                    feed = {(f"{f}__float" if f in members else f): values[f] for f in feeds}
                    test.update(zip(outputs, session.run(outputs, feed)))
                acc.add(ref, test, head, decoded)
        elif acts.images:
            for i in range(len(acts)):
                acc.add(acts.head(i), acts.head(i), head, decoded)
        first = unit[0]
        elements = sum(acts.elements(m) for m in members)
        results.append(UnitSensitivity(first, tuple(unit), elements, op_of.get(first, "input"), acc.result()))
        if progress is not None:
            progress(1)
    return results


def all_quantized_error(
    acts: FloatActivations,
    params: Mapping[str, QParams],
    *,
    head: HeadSpec | None = None,
    decoded: DecodedErrors | None = None,
    threads: int | None = None,
) -> HeadError:
    """The head error with every tensor in ``params`` fake-quantized at once (QDQ model in
    onnxruntime): the float-graph estimate of the whole INT8 model's activation error."""
    members = [n for n in acts.names if n in params and acts.images and n in acts.images[0]]
    return unit_sensitivity(acts, [members], params, head=head, decoded=decoded, threads=threads)[0].error


__all__ = [
    "DecodedErrors",
    "ErrorAccumulator",
    "FloatActivations",
    "HeadError",
    "SubgraphBuilder",
    "UnitSensitivity",
    "all_quantized_error",
    "sqnr_db",
    "unit_sensitivity",
]
