"""Oriented-box heads (OBB): YOLOv8-obb, YOLO11-obb (DFL boxes) and YOLO26-obb (ltrb boxes).

**Discovery** (by structure only, no node names). An Ultralytics OBB export ends in the same
decode tail as a detect head (per-scale box and class tensors reshaped to rank 3 and
concatenated; one box+class Concat per level in 8.3 exports, each branch reshaped on its own in
8.4), plus an angle branch: per-scale 1-channel tensors, reshaped, concatenated, turned into
radians, and fed to a ``Cos`` and a ``Sin`` (the rotation of ``dist2rbox``). That Cos/Sin pair on
one tensor marks an OBB graph; walking back from it gives the angle endpoints and the angle
formula, read off the tail as ``angle = (act(raw) - offset) * scale`` (``act``: Sigmoid or none;
the Mul / Sub / Add / Div by scalar constants composed). Two formulas are known and accepted
(:data:`ANGLE_ENCODINGS`): Ultralytics' OBB head ``(sigmoid(raw) - 0.25) * pi`` (YOLOv8/YOLO11,
angles in [-pi/4, 3pi/4)) and YOLO26's OBB26 head ``raw`` (radians as they come); any other tail is
not claimed (:class:`HeadNotFoundError`). The box and class endpoints are the other per-scale
tensors of the tail (Concats unpacked), typed by channel count: ``4 * reg_max`` is the box branch
(reg_max from the DFL's ``arange`` 1x1 Conv; 1 without a DFL, as in YOLO26), ``nc`` (the output's
features less 4 box and 1 angle row) the class branch. Should the two counts be equal, the box
tensor is the one whose values reach the rotation (the Muls by Cos/Sin), or the first part of a
box+class Concat.

**The cut.** Each level's angle branch is its own INT8 output (``angle_i``, 1 channel), next to
``boxes_i`` and ``scores_i``: angle logits, DFL logits and class logits each get their own scale.

**Float decode** (:class:`RotatedHead`), exactly the export's tail (Ultralytics ``dist2rbox``):
``angle`` as above; ``lt, rb`` the DFL expectations (or the raw ltrb distances) in grid cells;
``xf, yf = (rb - lt) / 2``; ``x = xf cos(angle) - yf sin(angle)``, ``y = xf sin(angle) + yf
cos(angle)``; ``cx, cy = ((x, y) + anchor) * stride`` with anchors at cell centres;
``w, h = (lt + rb) * stride``. The rotated boxes ``cx, cy, w, h, angle`` (model-input pixels, the
angle as the export emits it, not regularised) come out through the decoder's ``extras`` hook
as ``rotated``; ``Candidates.boxes`` hold their axis-aligned hulls. NMS is Ultralytics' OBB NMS
(probabilistic IoU, :func:`edgeq.decode.rotated.rotated_nms`) through the ``suppress`` hook.

**Metadata** (schema v2 where it has the types): logical ``boxes`` (``encoding: dfl`` or ``ltrb``),
``scores`` (``per_class``, ``activation_required: sigmoid``), each with one child per level, and
an edgeq extension, since schema v2 has no angle type:

* a logical output of ``type: "angle"`` (``decoder: ultralytics``, shape ``[1, 1, N]``) whose
  per-scale children ``angle_i`` (``[1, H, W, 1]``, ``stride``, ``scale_index``, quantization)
  hold the raw angle branch. Its ``encoding`` names the formula (``yolov8`` or ``yolo26``, see
  :data:`ANGLE_ENCODINGS`) and it carries the field ``"edgeq": {"angle": 1, "activation":
  "sigmoid" | "none", "offset": ..., "scale": ..., "units": "radians"}`` (``angle``: the version
  of this extension, 1) stating the formula numerically. The decoder reads the numbers when the
  field is there (version 1), and the ``encoding`` name otherwise (the field does not survive a
  re-serialisation by a reader that keeps only typed fields).

``decoder_version`` is the family name (``yolov8-obb``), as for every edgeq family; schema v2 lists
only detection decoders there, so EdgeFirst's HAL does not decode these artifacts (edgeq does).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from edgeq.decode.fields import (
    Arrays,
    Candidates,
    Field,
    activate,
    activation_of,
    dfl_distances,
    feature_axis,
    grid_of,
    make_field,
    pick,
    quant_of,
    stride_of,
)
from edgeq.decode.rotated import dist2rbox, rotated_hull, rotated_nms
from edgeq.errors import ArtifactError
from edgeq.families.base import DecodedError, HeadFamily, sigmoid
from edgeq.graph.heads import Endpoint, HeadSpec, grid_inputs, not_found
from edgeq.graph.load import ModelInfo
from edgeq.graph.topology import Topology
from edgeq.meta.build import TensorLike, physical_output
from edgeq.meta.schema import ModelMeta, Output, Quant

#: angle formulas ``angle = (act(raw) - offset) * scale``: name -> (act, offset, scale)
ANGLE_ENCODINGS: dict[str, tuple[str, float, float]] = {
    "yolov8": ("sigmoid", 0.25, math.pi),  # Ultralytics OBB head (YOLOv8, YOLO11)
    "yolo26": ("none", 0.0, 1.0),  # OBB26: the raw branch is the angle in radians
}
#: version of the ``edgeq`` field on the logical angle output
ANGLE_EXTENSION_VERSION = 1
ANGLE = "angle"
_ORDER = {"boxes": 0, "scores": 1, ANGLE: 2}
_BOX_ENCODINGS = ("dfl", "ltrb", "direct")


@dataclass(frozen=True)
class OBBHead(HeadSpec):
    """An OBB head: a :class:`HeadSpec` plus the angle formula read off the export's tail."""

    angle_encoding: str = "yolov8"

    def describe(self) -> str:
        act, off, scale = ANGLE_ENCODINGS[self.angle_encoding]
        formula = "raw" if act == "none" else f"({act}(raw) - {off:g}) * {scale:.6g}"
        return super().describe() + f"\n  angle = {formula} radians ({self.angle_encoding})"


class OBB(HeadFamily):
    """Detect heads with an angle branch: rotated boxes (cx, cy, w, h, angle)."""

    name = "yolov8-obb"
    nms = "class_aware"
    iou = 0.7
    metric = "rotated"

    def discover(self, model: onnx.ModelProto, info: ModelInfo) -> HeadSpec | None:
        return _discover(model, info, self.name)

    def outputs(self, head: HeadSpec, tensors: Sequence[TensorLike], layout: str = "nhwc") -> list[Output]:
        return _outputs(head, tensors, layout)

    def decodes(self, meta: ModelMeta) -> bool:
        boxes = meta.output("boxes")
        return (meta.output(ANGLE) is not None and boxes is not None
                and any(c.stride is not None for c in boxes.children))

    def decoder(self, meta: ModelMeta, quant: Mapping[str, Quant | None]) -> RotatedHead:
        return RotatedHead(meta, quant)

    def measure_decoded(self, ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                        head: HeadSpec) -> Iterable[DecodedError]:
        return _decoded_errors(ref, test, head)


# ----------------------------------------------------------------------------- discovery


def _reg_max(topo: Topology) -> int:
    """reg_max from the DFL's 1x1 Conv with ``arange(reg_max)`` weights; 1 without a DFL."""
    for node in topo.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        w = topo.const(node.input[1])
        if w is None or w.ndim != 4 or w.shape[0] != 1 or w.shape[2:] != (1, 1):
            continue
        r = w.shape[1]
        if r > 1 and np.allclose(w.reshape(-1), np.arange(r)):
            return int(r)
    return 1


def _rotation_input(topo: Topology) -> str | None:
    """The tensor that feeds both a Cos and a Sin (the angle of ``dist2rbox``), if any."""
    for node in topo.graph.node:
        if node.op_type == "Cos" and any(c.op_type == "Sin" for c in topo.consumers.get(node.input[0], [])):
            return node.input[0]
    return None


def _grid_tensors(topo: Topology, start: str, imgsz: tuple[int, int]) -> list[str]:
    """Per-scale 4-D tensors flattened by the tail on the way to ``start`` (Concats unpacked)."""
    return grid_inputs(topo, [start], imgsz)


def _scalar(topo: Topology, name: str) -> float | None:
    v = topo.const(name)
    return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None


def _angle_formula(topo: Topology, angle: str) -> tuple[str, float, float] | str:
    """(act, offset, scale) of ``angle = (act(raw) - offset) * scale`` up to the level Concat,
    or why the chain is not one (a string)."""
    a, b = 1.0, 0.0  # angle = a * inner + b
    act = "none"
    t = angle
    while True:
        node = topo.producer.get(t)
        if node is None:
            return "the angle comes from no node"
        op = node.op_type
        if op in ("Concat", "Reshape"):
            break
        if op == "Identity":
            t = node.input[0]
            continue
        if op == "Sigmoid":
            if act != "none":
                return "two Sigmoids on the angle branch"
            act, t = "sigmoid", node.input[0]
            continue
        if op not in ("Mul", "Div", "Add", "Sub") or len(node.input) != 2:
            return f"unexpected {op} on the angle branch"
        c0, c1 = _scalar(topo, node.input[0]), _scalar(topo, node.input[1])
        if (c0 is None) == (c1 is None):
            return f"{op} on the angle branch is not by a scalar constant"
        if act != "none":
            return f"{op} before the angle Sigmoid"
        if op == "Mul":
            a *= c0 if c0 is not None else c1
        elif op == "Div":
            if c1 is None or c1 == 0:
                return "Div of a constant by the angle"
            a /= c1
        elif op == "Add":
            b += a * (c0 if c0 is not None else c1)
        elif c1 is not None:  # Sub(x, c)
            b -= a * c1
        else:  # Sub(c, x)
            b, a = b + a * c0, -a
        t = node.input[0] if c0 is None else node.input[1]
    if a == 0:
        return "the angle does not depend on the branch"
    return act, -b / a, a


def _encoding_name(formula: tuple[str, float, float]) -> str | None:
    act, off, scale = formula
    for name, (a, o, s) in ANGLE_ENCODINGS.items():
        if act == a and math.isclose(off, o, abs_tol=1e-6) and math.isclose(scale, s, rel_tol=1e-6):
            return name
    return None


def _reaches(topo: Topology, src: str, targets: set[str], limit: int = 200) -> bool:
    """Whether values of ``src`` flow into any node output in ``targets`` (bounded forward walk)."""
    seen, stack = set(), [src]
    while stack and len(seen) < limit:
        t = stack.pop()
        if t in targets:
            return True
        if t in seen:
            continue
        seen.add(t)
        for n in topo.consumers.get(t, []):
            stack.extend(n.output)
    return False


def _discover(model: onnx.ModelProto, info: ModelInfo, family: str) -> HeadSpec | None:
    """The OBB head of a normalized Ultralytics-style graph (None: no Cos/Sin rotation)."""
    topo = Topology.of(model)
    angle = _rotation_input(topo)
    if angle is None:
        return None
    outs = [o.name for o in topo.graph.output if topo.rank(o.name) == 3]
    if len(outs) != 1:
        raise not_found(topo, f"an OBB rotation but {len(outs)} rank-3 outputs (one [1, 4+nc+1, N] expected)")
    out = outs[0]
    formula = _angle_formula(topo, angle)
    if isinstance(formula, str):
        raise not_found(topo, f"OBB angle branch not understood: {formula}")
    encoding = _encoding_name(formula)
    if encoding is None:
        act, off, scale = formula
        raise not_found(topo, f"OBB angle formula ({act}(raw) - {off:g}) * {scale:g} is none of the known ones "
                        f"({', '.join(ANGLE_ENCODINGS)})")
    angle_eps = _grid_tensors(topo, angle, info.imgsz)
    if not angle_eps or any(topo.shapes[t][1] != 1 for t in angle_eps):
        raise not_found(topo, "the OBB angle branch has no per-scale 1-channel tensors")
    reg_max = _reg_max(topo)
    nc = topo.shapes[out][1] - 5
    cos_users = {o for c in topo.graph.node if c.op_type in ("Cos", "Sin")
                 for u in topo.consumers.get(c.output[0], []) for o in u.output}
    by_level: dict[int, dict[str, str]] = {}
    for t in angle_eps:
        by_level.setdefault(topo.shapes[t][2], {})[ANGLE] = t
    for t in _grid_tensors(topo, out, info.imgsz):
        if t in angle_eps:
            continue
        c, h = topo.shapes[t][1], topo.shapes[t][2]
        if c == 4 * reg_max and c != nc:
            kind = "boxes"
        elif c == nc and c != 4 * reg_max:
            kind = "scores"
        elif c == nc:  # equal counts: the box branch is the one the rotation reads
            producer = topo.producer.get(t)
            in_concat = any(n.op_type == "Concat" and n.input and n.input[0] == t for n in topo.consumers.get(t, []))
            first = in_concat or (producer is not None and _reaches(topo, t, cos_users))
            kind = "boxes" if first and "boxes" not in by_level.get(h, {}) else "scores"
        else:
            raise not_found(topo, f"OBB head tensor {t} has {c} channels: neither boxes ({4 * reg_max}) nor classes ({nc})")
        by_level.setdefault(h, {})[kind] = t
    endpoints = []
    h_in = info.imgsz[0]
    for idx, h in enumerate(sorted(by_level, reverse=True)):
        level = by_level[h]
        missing = {"boxes", "scores", ANGLE} - set(level)
        if missing:
            raise not_found(topo, f"OBB level {h}x{h} has no {', '.join(sorted(missing))} tensor")
        for kind in ("boxes", "scores", ANGLE):
            t = level[kind]
            endpoints.append(Endpoint(t, kind, f"{kind}_{idx}", topo.shapes[t], h_in // h, idx))
    if info.names and len(info.names) != nc:
        raise not_found(topo, f"class branch has {nc} channels but metadata names {len(info.names)} classes")
    strides = tuple(sorted({e.stride for e in endpoints}))
    return OBBHead(
        family=family,
        task="obb",
        nc=nc,
        reg_max=reg_max,
        strides=strides,
        endpoints=tuple(sorted(endpoints, key=lambda e: (_ORDER[e.kind], e.scale_index or 0))),
        angle_encoding=encoding,
    )


# ----------------------------------------------------------------------------- metadata


class _AngleOutput(Output):
    """The logical angle output, written with its ``edgeq`` extension field."""

    def to_json(self) -> dict[str, Any]:
        d = super().to_json()
        act, off, scale = ANGLE_ENCODINGS[self.encoding or "yolov8"]
        d["edgeq"] = {"angle": ANGLE_EXTENSION_VERSION, "activation": act, "offset": off, "scale": scale,
                      "units": "radians", "formula": "(activation(raw) - offset) * scale"}
        return d


def _outputs(head: HeadSpec, tensors: Sequence[TensorLike], layout: str = "nhwc") -> list[Output]:
    """Logical boxes, scores and angle outputs, each with one child per level."""
    if not isinstance(head, OBBHead):
        raise ArtifactError("the OBB family writes metadata only for heads it discovered (an OBBHead)")
    by_name = {t.name: t for t in tensors}
    total = sum(e.shape[2] * e.shape[3] for e in head.of_kind("boxes"))
    widths = {"boxes": 4, "scores": head.nc, ANGLE: 1}
    feature = {"boxes": "box_coords", "scores": "num_classes", ANGLE: "num_features"}
    outputs: list[Output] = []
    for kind in ("boxes", "scores", ANGLE):
        children = [physical_output(by_name[e.name], kind, e.stride, e.scale_index, layout,
                                    feature="num_features") for e in head.of_kind(kind)]
        cls = _AngleOutput if kind == ANGLE else Output
        logical = cls(
            name=kind, type=kind, shape=[1, widths[kind], total],
            dshape=[("batch", 1), (feature[kind], widths[kind]), ("num_boxes", total)],
            decoder="ultralytics", children=children,
        )
        if kind == "boxes":
            logical.encoding, logical.normalized = ("dfl" if head.reg_max > 1 else "ltrb"), False
        elif kind == "scores":
            logical.score_format, logical.activation_required = "per_class", "sigmoid"
        else:
            logical.encoding = head.angle_encoding
        outputs.append(logical)
    return outputs


def angle_formula(meta: ModelMeta) -> tuple[str, float, float]:
    """(act, offset, scale) of an artifact's angle: its ``edgeq`` field (version 1), else its encoding."""
    out = meta.output(ANGLE)
    if out is None:
        raise ArtifactError("OBB metadata has no logical 'angle' output")
    raw = next((o for o in meta.raw.get("outputs", []) if isinstance(o, dict) and o.get("name") == out.name), None)
    ext = raw.get("edgeq") if isinstance(raw, dict) else None
    if isinstance(ext, dict) and ext.get("angle") is not None:
        if ext.get("angle") != ANGLE_EXTENSION_VERSION:
            raise ArtifactError(f"angle extension version {ext.get('angle')!r} is not supported "
                                f"(edgeq reads version {ANGLE_EXTENSION_VERSION})", "update edgeq")
        act, off, scale = ext.get("activation"), ext.get("offset"), ext.get("scale")
        if act not in ("sigmoid", "none") or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      for v in (off, scale)):
            raise ArtifactError(f"the angle output's edgeq field is malformed: {ext!r}",
                                "re-export the model with edgeq convert")
        return str(act), float(off), float(scale)
    if (out.encoding or "") not in ANGLE_ENCODINGS:
        raise ArtifactError(f"angle encoding {out.encoding!r} is not supported ({', '.join(ANGLE_ENCODINGS)} are)",
                            "re-export the model with edgeq convert")
    return ANGLE_ENCODINGS[out.encoding or ""]


# ----------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class Level:
    """One FPN level of an OBB head; ``offset`` is its first global anchor index."""

    stride: tuple[float, float]
    height: int
    width: int
    offset: int
    boxes: Field
    scores: Field
    angle: Field
    activation: str | None


class RotatedHead:
    """Per-scale OBB head: threshold class scores, decode rotated boxes of the candidates only."""

    has_coefs = False

    def __init__(self, meta: ModelMeta, quant: Mapping[str, Quant | None]) -> None:
        boxes, scores, angle = meta.output("boxes"), meta.output("scores"), meta.output(ANGLE)
        if boxes is None or scores is None or angle is None:
            raise ArtifactError("OBB metadata needs logical 'boxes', 'scores' and 'angle' outputs")
        self.encoding = (boxes.encoding or "dfl").lower()
        if self.encoding not in _BOX_ENCODINGS:
            raise ArtifactError(f"OBB box encoding {self.encoding!r} is not supported (dfl, ltrb are)")
        act, self.angle_offset, self.angle_scale = angle_formula(meta)
        self.angle_activation = None if act == "none" else act
        in_h, in_w = meta.imgsz
        nc = len(meta.labels) or None
        self.levels: list[Level] = []
        offset = 0
        for b_out, s_out, a_out in _pair_levels(boxes, scores, angle):
            stride = stride_of(b_out)
            grid = (round(in_h / stride[1]), round(in_w / stride[0]))
            bfax = feature_axis(b_out, None, grid)
            h, w = grid_of(b_out, bfax)
            self.levels.append(Level(
                stride=stride, height=h, width=w, offset=offset,
                boxes=make_field(b_out, quant_of(quant, b_out), bfax),
                scores=make_field(s_out, quant_of(quant, s_out), feature_axis(s_out, nc, grid)),
                angle=make_field(a_out, quant_of(quant, a_out), feature_axis(a_out, 1, grid)),
                activation=activation_of(scores, s_out),
            ))
            offset += h * w
        self.num_anchors = offset

    def _rotated(self, outputs: Arrays, level: Level, idx: np.ndarray) -> np.ndarray:
        """(M, 5) rotated boxes of the level-local anchors ``idx`` in model-input pixels."""
        v = level.boxes.values(level.boxes.rows(outputs)[idx])
        ltrb = dfl_distances(v) if self.encoding == "dfl" else v.astype(np.float32)
        raw = level.angle.values(level.angle.rows(outputs)[idx])[:, 0]
        theta = ((activate(raw, self.angle_activation) - np.float32(self.angle_offset))
                 * np.float32(self.angle_scale)).astype(np.float32)
        anchors = np.stack([(idx % level.width) + 0.5, (idx // level.width) + 0.5], axis=1).astype(np.float32)
        return dist2rbox(ltrb, theta, anchors, level.stride)

    def candidates(self, outputs: Arrays, conf: float, multi_label: bool) -> Candidates:
        parts = []
        for level in self.levels:
            anchors, cls, s = pick(level.scores, level.scores.rows(outputs), conf, level.activation, multi_label)
            if anchors.size == 0:
                continue
            uniq, inv = np.unique(anchors, return_inverse=True) if multi_label else (anchors, None)
            hull = rotated_hull(self._rotated(outputs, level, uniq))
            parts.append(Candidates(hull if inv is None else hull[inv], s.astype(np.float32), cls, anchors + level.offset))
        return Candidates.concat(parts)

    def coefs(self, outputs: Arrays, rows: np.ndarray) -> np.ndarray | None:
        return None

    def extras(self, outputs: Arrays, rows: np.ndarray) -> dict[str, np.ndarray]:
        """``rotated``: (N, 5) cx, cy, w, h, angle of the global anchor ``rows`` (model-input px)."""
        out = np.zeros((rows.shape[0], 5), np.float32)
        for level in self.levels:
            sel = np.flatnonzero((rows >= level.offset) & (rows < level.offset + level.height * level.width))
            if sel.size:
                out[sel] = self._rotated(outputs, level, rows[sel] - level.offset)
        return {"rotated": out}

    def suppress(self, cand: Candidates, extras: Mapping[str, np.ndarray], iou: float, max_det: int,
                 agnostic: bool) -> np.ndarray:
        """Ultralytics' OBB NMS (probabilistic IoU) on the rotated boxes."""
        return rotated_nms(extras["rotated"], cand.scores, iou, max_det, None if agnostic else cand.class_ids)


def _pair_levels(boxes: Output, scores: Output, angle: Output) -> list[tuple[Output, Output, Output]]:
    """Group per-scale children by stride (ascending): (boxes_i, scores_i, angle_i)."""

    def key(o: Output) -> float:
        return stride_of(o)[0]

    by = [{key(c): c for c in o.children} for o in (boxes, scores, angle)]
    if not by[0] or any(set(b) != set(by[0]) for b in by[1:]):
        raise ArtifactError("per-scale boxes/scores/angle children do not have the same strides",
                            "fix the outputs[] section of edgefirst.json")
    return [(by[0][s], by[1][s], by[2][s]) for s in sorted(by[0])]


# ----------------------------------------------------------------------------- sensitivity


def _decoded_errors(ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                    head: HeadSpec) -> Iterable[DecodedError]:
    """(kind, noise, signal): scores as probabilities, box distances, angles in radians
    (the latter two weighted by the float top score of each anchor)."""
    weights: dict[int | None, np.ndarray] = {}
    for e in head.of_kind("scores"):
        pf = sigmoid(ref[e.name].astype(np.float64))
        pq = sigmoid(test.get(e.name, ref[e.name]).astype(np.float64))
        weights[e.scale_index] = pf.max(axis=1)[0]
        yield "scores", float(np.sum((pq - pf) ** 2)), float(np.sum(pf * pf))
    for e in head.of_kind("boxes"):
        f, q = ref[e.name].astype(np.float64), test.get(e.name, ref[e.name]).astype(np.float64)
        if head.reg_max > 1:
            f, q = (_expectation(x, head.reg_max) for x in (f, q))
        else:
            f, q = f[0], q[0]
        w = weights.get(e.scale_index, 1.0)
        yield "boxes", float(np.sum(w * (q - f) ** 2)), float(np.sum(w * f * f))
    act, off, scale = ANGLE_ENCODINGS[getattr(head, "angle_encoding", "yolov8")]
    for e in head.of_kind(ANGLE):
        f, q = (ref[e.name][0, 0].astype(np.float64), test.get(e.name, ref[e.name])[0, 0].astype(np.float64))
        if act == "sigmoid":
            f, q = sigmoid(f), sigmoid(q)
        f, q = (f - off) * scale, (q - off) * scale
        w = weights.get(e.scale_index, 1.0)
        yield ANGLE, float(np.sum(w * (q - f) ** 2)), float(np.sum(w * f * f))


def _expectation(x: np.ndarray, reg_max: int) -> np.ndarray:
    """(1, 4*R, H, W) DFL logits -> (4, H, W) expected distances in grid cells."""
    h, w = x.shape[2:]
    x = x.reshape(4, reg_max, h, w)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return np.einsum("arhw,r->ahw", e / e.sum(axis=1, keepdims=True), np.arange(reg_max, dtype=np.float64))


__all__ = ["ANGLE_ENCODINGS", "OBB", "OBBHead", "RotatedHead", "angle_formula"]
