"""YOLOv8-style DFL heads (YOLOv8, YOLO11): detect and segment.

**Discovery.** An Ultralytics export ends in a *decode tail*: per-scale 4-D head tensors are
reshaped to rank 3 (``[1, C, H*W]``), concatenated, and decoded (DFL softmax, dist2bbox, sigmoid).
The endpoints are the 4-D tensors right before that first rank change, with channel-wise Concats
unpacked into their inputs. The DFL is recognised by its fixed ``arange(reg_max)`` 1x1 Conv after
a Softmax, which gives ``reg_max``. Each endpoint is typed by where its values flow (channel
ranges followed through Concat / Split / Reshape): into the DFL Softmax -> ``boxes``, into the
score Sigmoid -> ``scores``, neither -> ``mask_coefs``. This holds for Ultralytics 8.3 (one
box+class Concat per level) and 8.4 (each branch reshaped and concatenated on its own) and for
any exporter's node names (none are read).

**Metadata.** Logical ``boxes`` (``encoding: dfl``), ``scores`` (``per_class``, sigmoid) and
``mask_coefs``, each with one child per FPN level, plus ``protos``.

**Decoding** (:class:`PerScaleHead`). One child per FPN level for ``boxes`` (``encoding: dfl``: raw
DFL logits, 4*reg_max features, side-major ``[l0..l15, t0..t15, r.., b..]``; or ``ltrb``: 4
grid-unit distances), ``scores`` (``nc`` class logits with ``activation_required: sigmoid``, or
probabilities) and, for -seg, ``mask_coefs`` (32). Each child is NHWC ``[1,H,W,C]`` or NCHW
``[1,C,H,W]`` as its ``dshape`` says (inferred from the grid size when ``dshape`` is absent).
Anchor centres are ``(grid + 0.5) * stride``; boxes come out in input pixels whatever
``normalized`` says (HAL does the same on this path). Anchor order is level by level, row-major
inside a level.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from edgeq.decode.fields import (
    Arrays,
    Candidates,
    Field,
    activation_of,
    dfl_distances,
    dist2bbox,
    feature_axis,
    grid_of,
    make_field,
    pick,
    quant_of,
    stride_of,
)
from edgeq.errors import ArtifactError
from edgeq.families.base import DecodedError, HeadFamily, sigmoid
from edgeq.graph.heads import Endpoint, HeadSpec, grid_inputs, not_found, sort_endpoints
from edgeq.graph.load import ModelInfo
from edgeq.graph.topology import Topology
from edgeq.meta.build import TensorLike, physical_output
from edgeq.meta.schema import ModelMeta, Output, Quant


class YOLOv8(HeadFamily):
    """DFL heads: per-scale box DFL logits, class logits, mask coefficients and protos."""

    name = "yolov8"
    nms = "class_aware"
    iou = 0.7

    def discover(self, model: onnx.ModelProto, info: ModelInfo) -> HeadSpec | None:
        return _discover(model, info)

    def outputs(self, head: HeadSpec, tensors: Sequence[TensorLike], layout: str = "nhwc") -> list[Output]:
        return per_scale_outputs(head, tensors, layout)

    def decodes(self, meta: ModelMeta) -> bool:
        boxes = meta.output("boxes")
        return is_per_scale(meta) and (boxes.encoding or "dfl").lower() != "anchor"

    def decoder(self, meta: ModelMeta, quant: Mapping[str, Quant | None]) -> PerScaleHead:
        return PerScaleHead(meta, quant)

    def measure_decoded(self, ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                        head: HeadSpec) -> Iterable[DecodedError]:
        return _decoded_errors(ref, test, head)


# ----------------------------------------------------------------------------- discovery


def _dfl_conv(topo: Topology) -> tuple[onnx.NodeProto, int] | None:
    """The DFL's 1x1 Conv with ``arange(reg_max)`` weights, and reg_max."""
    for node in topo.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        w = topo.const(node.input[1])
        if w is None or w.ndim != 4 or w.shape[0] != 1 or w.shape[2:] != (1, 1):
            continue
        r = w.shape[1]
        if r > 1 and np.allclose(w.reshape(-1), np.arange(r)):
            return node, int(r)
    return None


def _find_reg_max(topo: Topology) -> int | None:
    """reg_max from the DFL: Softmax (maybe via Transpose) feeding a 1x1 Conv with arange weights."""
    found = _dfl_conv(topo)
    return None if found is None else found[1]


def _dfl_softmax(topo: Topology, conv: onnx.NodeProto) -> onnx.NodeProto | None:
    """The Softmax feeding the DFL Conv (through Transpose / Reshape)."""
    node = topo.producer.get(conv.input[0])
    while node is not None and node.op_type in ("Transpose", "Reshape", "Identity"):
        node = topo.producer.get(node.input[0])
    return node if node is not None and node.op_type == "Softmax" else None


def _is_silu_sigmoid(topo: Topology, node: onnx.NodeProto) -> bool:
    """A Sigmoid whose output multiplies its own input (SiLU), not a score activation."""
    return any(c.op_type == "Mul" and node.input[0] in c.input for c in topo.consumers.get(node.output[0], []))


def _grid_tensors(topo: Topology, info: ModelInfo) -> list[str]:
    """The per-scale 4-D tensors of the decode tail, channel Concats unpacked (from every rank-3
    graph output back to the Reshapes that flatten a per-scale grid)."""
    return grid_inputs(topo, [o.name for o in topo.graph.output if topo.rank(o.name) == 3], info.imgsz)


def _int_attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _split_sizes(topo: Topology, node: onnx.NodeProto, dim: int) -> list[int] | None:
    if len(node.input) > 1 and node.input[1]:
        sizes = topo.const(node.input[1])
        return None if sizes is None else [int(s) for s in sizes.reshape(-1)]
    attr = next((list(a.ints) for a in node.attribute if a.name == "split"), None)
    if attr:
        return [int(s) for s in attr]
    n = len(node.output)
    chunk = -(-dim // n)
    return [chunk] * (n - 1) + [dim - chunk * (n - 1)]


def _channel_flow(topo: Topology, node: onnx.NodeProto, t: str,
                  iv: tuple[int, int] | None) -> list[tuple[str, tuple[int, int] | None]]:
    """Where channels ``iv`` (axis 1) of ``t`` go through ``node``: (output, channels or None = all)."""
    out = [o for o in node.output if o]
    rank = topo.rank(t) or 0
    if iv is None or rank < 2:
        return [(o, None) for o in out]
    op = node.op_type
    if op == "Concat":
        axis = _int_attr(node, "axis", 0) % rank
        if axis != 1:
            return [(out[0], iv)]
        res = []
        offset = 0
        for i in node.input:
            if i == t:
                res.append((out[0], (iv[0] + offset, iv[1] + offset)))
            offset += (topo.shapes.get(i) or (0, 0))[1]
        return res
    if op == "Split":
        axis = _int_attr(node, "axis", 0) % rank
        if axis != 1:
            return [(o, iv) for o in out]
        sizes = _split_sizes(topo, node, topo.shapes[t][1])
        if sizes is None:
            return [(o, None) for o in out]
        res, start = [], 0
        for o, size in zip(node.output, sizes):
            lo, hi = max(iv[0], start), min(iv[1], start + size)
            if o and lo < hi:
                res.append((o, (lo - start, hi - start)))
            start += size
        return res
    if op in ("Sigmoid", "Identity"):
        return [(out[0], iv)]
    if op == "Reshape":
        shape_in, shape_out = topo.shapes.get(t), topo.shapes.get(out[0])
        if shape_in and shape_out and len(shape_out) >= 2 and shape_in[:2] == shape_out[:2]:
            return [(out[0], iv)]
    if op == "Transpose":
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        if perm and perm[:2] == [0, 1]:
            return [(out[0], iv)]
    return [(o, None) for o in out]


def _reached(topo: Topology, tensor: str, targets: set[int]) -> set[int]:
    """Which of the ``targets`` (node ids) the values of ``tensor`` flow into, following channel
    ranges through Concat / Split / Reshape so a per-level box+class Concat does not mix them."""
    hits: set[int] = set()
    seen: set[tuple[str, tuple[int, int] | None]] = set()
    stack: list[tuple[str, tuple[int, int] | None]] = [(tensor, (0, topo.shapes[tensor][1]))]
    while stack:
        t, iv = stack.pop()
        if (t, iv) in seen:
            continue
        seen.add((t, iv))
        for node in topo.consumers.get(t, []):
            if id(node) in targets:
                hits.add(id(node))
            stack.extend(_channel_flow(topo, node, t, iv))
    return hits


def _dfl_endpoints(topo: Topology, info: ModelInfo, reg_max: int) -> list[Endpoint]:
    """Per-scale endpoints typed by where their values go, whatever the export layout:
    into the DFL Softmax -> ``boxes``, into a score Sigmoid -> ``scores``, neither -> ``mask_coefs``."""
    h_in = info.imgsz[0]
    found = _dfl_conv(topo)
    softmax = _dfl_softmax(topo, found[0]) if found is not None else None
    dfl = {id(softmax)} if softmax is not None else set()
    sigmoids = {id(n) for n in topo.graph.node if n.op_type == "Sigmoid" and not _is_silu_sigmoid(topo, n)}
    by_level: dict[int, dict[str, str]] = {}
    for t in _grid_tensors(topo, info):
        hits = _reached(topo, t, dfl | sigmoids)
        to_dfl, to_sigmoid = bool(hits & dfl), bool(hits & sigmoids)
        if to_dfl and to_sigmoid:
            raise not_found(topo, f"{t!r} feeds both the DFL and the class sigmoid")
        kind = "boxes" if to_dfl else "scores" if to_sigmoid else "mask_coefs"
        if kind == "boxes" and topo.shapes[t][1] != 4 * reg_max:
            raise not_found(topo, f"box tensor {t!r} has {topo.shapes[t][1]} channels, not 4*reg_max = {4 * reg_max}")
        level = by_level.setdefault(topo.shapes[t][2], {})
        if kind in level:
            raise not_found(topo, f"two {kind} tensors at grid {topo.shapes[t][2:]}: {level[kind]!r}, {t!r}")
        level[kind] = t
    if not by_level:
        raise not_found(topo, "no per-scale tensors before the decode tail")
    endpoints = []
    for idx, h in enumerate(sorted(by_level, reverse=True)):
        for kind in ("boxes", "scores", "mask_coefs"):
            if kind in by_level[h]:
                t = by_level[h][kind]
                endpoints.append(Endpoint(t, kind, f"{kind}_{idx}", topo.shapes[t], h_in // h, idx))
    for kind in ("boxes", "scores", "mask_coefs"):
        widths = {e.shape[1] for e in endpoints if e.kind == kind}
        if len(widths) > 1:
            raise not_found(topo, f"{kind} tensors have different channel counts {sorted(widths)}")
    return endpoints


def _protos(topo: Topology, info: ModelInfo) -> list[Endpoint]:
    for out in topo.graph.output:
        shape = topo.shapes.get(out.name)
        if shape and len(shape) == 4:
            return [Endpoint(out.name, "protos", "protos", shape, info.imgsz[0] // shape[2], None)]
    return []


def _discover(model: onnx.ModelProto, info: ModelInfo) -> HeadSpec | None:
    """The DFL head of a normalized Ultralytics-style graph (None: no DFL in the graph)."""
    topo = Topology.of(model)
    reg_max = _find_reg_max(topo)
    if reg_max is None:
        return None
    endpoints = _dfl_endpoints(topo, info, reg_max)
    kinds = {e.kind for e in endpoints}
    if not {"boxes", "scores"} <= kinds:
        raise not_found(topo, f"found only {sorted(kinds)} per-scale tensors")
    protos = _protos(topo, info) if "mask_coefs" in kinds else []
    if "mask_coefs" in kinds and not protos:
        raise not_found(topo, "mask coefficients found but no 4-D protos output")
    coefs = [e for e in endpoints if e.kind == "mask_coefs"]
    if coefs and coefs[0].shape[1] != protos[0].shape[1]:
        raise not_found(topo, f"{coefs[0].shape[1]} mask coefficients but {protos[0].shape[1]} protos")
    scores = [e for e in endpoints if e.kind == "scores"]
    nc = scores[0].shape[1]
    if info.names and len(info.names) != nc:
        raise not_found(topo, f"class branch has {nc} channels but metadata names {len(info.names)} classes")
    strides = tuple(sorted({e.stride for e in endpoints if e.scale_index is not None}))
    return HeadSpec(
        family="yolov8",
        task="segment" if protos else "detect",
        nc=nc,
        reg_max=reg_max,
        strides=strides,
        endpoints=sort_endpoints(endpoints + protos),
        nm=protos[0].shape[1] if protos else 0,
    )



# ----------------------------------------------------------------------------- metadata


def per_scale_outputs(head: HeadSpec, tensors: Sequence[TensorLike], layout: str = "nhwc") -> list[Output]:
    """Logical outputs (boxes, scores, mask_coefs) with per-scale children, plus protos.

    Boxes are ``encoding: dfl`` with a DFL (``reg_max`` > 1), else ``ltrb`` grid distances
    (YOLO26); the YOLO26 and pose families write their box and score outputs with this too.
    """
    by_name = {t.name: t for t in tensors}
    total = sum(e.shape[2] * e.shape[3] for e in head.of_kind("boxes"))
    widths = {"boxes": 4, "scores": head.nc, "mask_coefs": head.nm}
    feature = {"boxes": "box_coords", "scores": "num_classes", "mask_coefs": "num_protos"}
    outputs = []
    for kind in ("boxes", "scores", "mask_coefs"):
        eps = head.of_kind(kind)
        if not eps:
            continue
        logical = Output(
            name=kind,
            type=kind,
            shape=[1, widths[kind], total],
            dshape=[("batch", 1), (feature[kind], widths[kind]), ("num_boxes", total)],
            decoder="ultralytics",
            children=[physical_output(by_name[e.name], kind, e.stride, e.scale_index, layout) for e in eps],
        )
        if kind == "boxes":
            logical.encoding, logical.normalized = ("dfl" if head.reg_max > 1 else "ltrb"), False
        if kind == "scores":
            logical.score_format, logical.activation_required = "per_class", "sigmoid"
        outputs.append(logical)
    for e in head.of_kind("protos"):
        outputs.append(physical_output(by_name[e.name], "protos", e.stride, None, layout))
    return outputs



# ----------------------------------------------------------------------------- decoding


def is_per_scale(meta: ModelMeta) -> bool:
    """True when the metadata describes a per-scale (smart) head."""
    boxes = meta.output("boxes")
    return boxes is not None and any(c.stride is not None for c in boxes.children)


@dataclass(frozen=True)
class Level:
    """One FPN level of a per-scale head; ``offset`` is its first global anchor index."""

    stride: tuple[float, float]
    height: int
    width: int
    offset: int
    boxes: Field
    scores: Field
    coefs: Field | None
    activation: str | None


# Box encodings of per-scale heads: (real box features of anchors ``idx``, idx, level) -> xyxy px.
# An anchor-based encoding (YOLOv5 per-scale, ``encoding: anchor``) plugs in here once Level
# carries its anchors and rows are split per anchor (H*W*na rows of 5+nc features).
BoxDecoder = Callable[[np.ndarray, np.ndarray, Level], np.ndarray]
_BOX_DECODERS: dict[str, BoxDecoder] = {
    "dfl": lambda v, idx, lv: dist2bbox(dfl_distances(v), idx, lv.width, lv.stride),
    "ltrb": lambda v, idx, lv: dist2bbox(v, idx, lv.width, lv.stride),  # YOLO26: grid-unit distances
}


class PerScaleHead:
    """Per-scale DFL/ltrb head: threshold each level's class scores, decode boxes of candidates only."""

    def __init__(self, meta: ModelMeta, quant: Mapping[str, Quant | None]) -> None:
        boxes, scores = meta.output("boxes"), meta.output("scores")
        if boxes is None or scores is None:
            raise ArtifactError("per-scale metadata needs logical 'boxes' and 'scores' outputs")
        self.encoding = (boxes.encoding or "dfl").lower()
        if self.encoding not in _BOX_DECODERS:
            raise ArtifactError(
                f"per-scale box encoding {self.encoding!r} is not supported (dfl, ltrb are)",
                "export the model with a DFL head, or use a combined 'detection' output",
            )
        coefs = meta.output("mask_coefs")
        self.levels: list[Level] = []
        offset = 0
        for b_out, s_out, c_out in _pair_levels(boxes, scores, coefs):
            level = _build_level(meta, quant, offset, (b_out, s_out, c_out), activation_of(scores, s_out))
            self.levels.append(level)
            offset += level.height * level.width
        self.num_anchors = offset
        self.has_coefs = coefs is not None and all(lv.coefs is not None for lv in self.levels)

    def candidates(self, outputs: Arrays, conf: float, multi_label: bool) -> Candidates:
        parts = []
        decode_boxes = _BOX_DECODERS[self.encoding]
        for level in self.levels:
            anchors, cls, s = pick(level.scores, level.scores.rows(outputs), conf, level.activation, multi_label)
            if anchors.size == 0:
                continue
            # Multi-label repeats anchors: decode each box once.
            uniq, inv = np.unique(anchors, return_inverse=True) if multi_label else (anchors, None)
            xyxy = decode_boxes(level.boxes.values(level.boxes.rows(outputs)[uniq]), uniq, level)
            boxes = xyxy if inv is None else xyxy[inv]
            parts.append(Candidates(boxes, s.astype(np.float32), cls, anchors + level.offset))
        return Candidates.concat(parts)

    def coefs(self, outputs: Arrays, rows: np.ndarray) -> np.ndarray | None:
        if not self.has_coefs:
            return None
        out = None
        for level in self.levels:
            assert level.coefs is not None
            sel = np.flatnonzero((rows >= level.offset) & (rows < level.offset + level.height * level.width))
            if sel.size == 0:
                continue
            crow = level.coefs.rows(outputs)
            vals = level.coefs.values(crow[rows[sel] - level.offset])
            if out is None:
                out = np.zeros((rows.shape[0], vals.shape[1]), np.float32)
            out[sel] = vals
        return out if out is not None else np.zeros((0, 0), np.float32)


def _build_level(
    meta: ModelMeta,
    quant: Mapping[str, Quant | None],
    offset: int,
    children: tuple[Output, Output, Output | None],
    activation: str | None,
) -> Level:
    """Bind one level's boxes/scores/coefs children (layout from dshape or the stride's grid)."""
    b_out, s_out, c_out = children
    in_h, in_w = meta.imgsz
    stride = stride_of(b_out)
    grid = (round(in_h / stride[1]), round(in_w / stride[0]))
    bfax = feature_axis(b_out, None, grid)
    h, w = grid_of(b_out, bfax)
    nc = len(meta.labels) or None
    return Level(
        stride=stride,
        height=h,
        width=w,
        offset=offset,
        boxes=make_field(b_out, quant_of(quant, b_out), bfax),
        scores=make_field(s_out, quant_of(quant, s_out), feature_axis(s_out, nc, grid)),
        coefs=None if c_out is None else make_field(c_out, quant_of(quant, c_out), feature_axis(c_out, None, grid)),
        activation=activation,
    )


def _pair_levels(boxes: Output, scores: Output, coefs: Output | None) -> list[tuple[Output, Output, Output | None]]:
    """Group per-scale children by stride (ascending): (boxes_i, scores_i, mask_coefs_i)."""

    def key(o: Output) -> float:
        s = o.stride if not isinstance(o.stride, (list, tuple)) else o.stride[0]
        if s is None:
            raise ArtifactError(f"per-scale output {o.name!r} has no stride in the metadata")
        return float(s)

    by = {k: {key(c): c for c in o.children} for k, o in (("b", boxes), ("s", scores))}
    by["c"] = {key(c): c for c in coefs.children} if coefs is not None else {}
    if set(by["b"]) != set(by["s"]) or (coefs is not None and set(by["c"]) != set(by["b"])):
        raise ArtifactError(
            "per-scale boxes/scores/mask_coefs children do not have the same strides",
            "fix the outputs[] section of edgefirst.json",
        )
    return [(by["b"][s], by["s"][s], by["c"].get(s)) for s in sorted(by["b"])]


# ----------------------------------------------------------------------------- sensitivity


def _dfl_expectation(x: np.ndarray, reg_max: int) -> np.ndarray:
    """(1, 4*R, H, W) DFL logits -> (4, H, W) expected distances in grid cells."""
    h, w = x.shape[2:]
    x = x.reshape(4, reg_max, h, w).astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    return np.einsum("arhw,r->ahw", p, np.arange(reg_max, dtype=np.float64))


def _decoded_errors(ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray], head: HeadSpec) -> Iterable[tuple[str, float, float]]:
    """(kind, noise, signal) per decoded output, summed over the levels of one image."""
    weights: dict[int | None, np.ndarray] = {}
    for e in head.of_kind("scores"):
        pf = sigmoid(ref[e.name].astype(np.float64))
        pq = sigmoid(test.get(e.name, ref[e.name]).astype(np.float64))
        weights[e.scale_index] = pf.max(axis=1)[0]  # (H, W): float top score per anchor
        yield "scores", float(np.sum((pq - pf) ** 2)), float(np.sum(pf * pf))
    for e in head.of_kind("boxes"):
        if e.name not in ref or head.reg_max <= 1:
            continue
        df = _dfl_expectation(ref[e.name], head.reg_max)
        dq = _dfl_expectation(test.get(e.name, ref[e.name]), head.reg_max)
        w = weights.get(e.scale_index, 1.0)
        yield "boxes", float(np.sum(w * (dq - df) ** 2)), float(np.sum(w * df * df))
    for e in head.of_kind("mask_coefs"):
        f = ref[e.name][0].astype(np.float64)
        q = test.get(e.name, ref[e.name])[0].astype(np.float64)
        w = weights.get(e.scale_index, 1.0)
        yield "mask_coefs", float(np.sum(w * (q - f) ** 2)), float(np.sum(w * f * f))
    for e in head.of_kind("protos"):
        f = ref[e.name].astype(np.float64)
        q = test.get(e.name, ref[e.name]).astype(np.float64)
        yield "protos", float(np.sum((q - f) ** 2)), float(np.sum(f * f))
