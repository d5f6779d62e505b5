"""YOLOv5 anchor heads: ``encoding: anchor``, ``score_format: obj_x_class``.

**Discovery.** Per level a conv ``[1, na*(5+nc), H, W]`` reshaped to ``[1, na, 5+nc, H, W]``,
with the anchors read off the ``(2*sigmoid(twh))**2 * anchor_grid`` Mul of the decode tail.

**Metadata and decoding.**

Two layouts, both raw logits, anchor-major per cell:

* split (what edgeq writes): logical ``boxes`` (``encoding: anchor``, ``anchors``), ``objectness``
  and ``scores``, a child per level each: ``[1, H, W, na*4]`` (cx, cy, w, h), ``[1, H, W, na]``
  and ``[1, H, W, na*nc]`` (NHWC, or the NCHW equivalents), channel ``a*F + k``; each tensor has
  its own quantization.
* single tensor: a logical ``detection`` (``encoding: anchor``) with one child per level
  ``[1, H, W, na*(5+nc)]``, channel ``a*(5+nc) + k`` for k = cx, cy, w, h, objectness, classes.

Decoding (YOLOv5 >= v4): ``xy = (2*sig(t_xy) - 0.5 + grid) * stride``,
``wh = (2*sig(t_wh))**2 * anchor`` (anchors in input pixels), score = sig(obj) * sig(cls).
Objectness is thresholded in the integer domain first: since sig(cls) <= 1, sig(obj) > conf is
necessary, so only those rows are ever dequantized.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from edgeq.decode.fields import (
    Arrays,
    Candidates,
    Field,
    QParams,
    activate,
    feature_axis,
    raw_threshold,
    select_scores,
    stride_of,
    xywh2xyxy,
)
from edgeq.errors import ArtifactError
from edgeq.families.base import DecodedError, HeadFamily, sigmoid
from edgeq.graph.heads import Endpoint, HeadSpec, is_grid, not_found, sort_endpoints, tail_inputs
from edgeq.graph.load import ModelInfo
from edgeq.graph.topology import Topology
from edgeq.meta.build import TensorLike, physical_output
from edgeq.meta.schema import ModelMeta, Output, Quant


class YOLOv5(HeadFamily):
    """Anchor heads: per level box logits, objectness and class logits (score = obj x cls)."""

    name = "yolov5"
    nms = "class_aware"
    iou = 0.6  # YOLOv5's own val.py default, which its published mAP uses

    def discover(self, model: onnx.ModelProto, info: ModelInfo) -> HeadSpec | None:
        return _discover(model, info)

    def outputs(self, head: HeadSpec, tensors: Sequence[TensorLike], layout: str = "nhwc") -> list[Output]:
        return _outputs(head, tensors, layout)

    def decodes(self, meta: ModelMeta) -> bool:
        return is_anchor_head(meta)

    def decoder(self, meta: ModelMeta, quant: Mapping[str, Quant | None]) -> AnchorHead:
        return AnchorHead(meta, quant)

    def measure_decoded(self, ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                        head: HeadSpec) -> Iterable[DecodedError]:
        return _decoded_anchor_errors(ref, test, head)


# ----------------------------------------------------------------------------- discovery


def _descendants(topo: Topology, tensor: str, depth: int) -> list[onnx.NodeProto]:
    found, frontier = [], [tensor]
    for _ in range(depth):
        nxt = []
        for t in frontier:
            for n in topo.consumers.get(t, []):
                found.append(n)
                nxt.extend(n.output)
        frontier = nxt
    return found


def _anchor_grid(topo: Topology, head_5d: str, na: int) -> tuple[tuple[float, float], ...] | None:
    """Anchor (w, h) in pixels from the ``(2*sigmoid(twh))**2 * anchor_grid`` Mul of the tail."""
    for node in _descendants(topo, head_5d, 8):
        if node.op_type != "Mul":
            continue
        for a, b in (node.input, node.input[::-1]):
            grid = topo.const(b)
            src = topo.producer.get(a)
            if grid is None or src is None or src.op_type != "Pow" or grid.shape[-1] != 2 or grid.size < 2 * na:
                continue
            per_anchor = grid.reshape(na, -1, 2)[:, 0]  # [1, na, H, W, 2]: same (w, h) on every cell
            return tuple((float(w), float(h)) for w, h in per_anchor)
    return None


def _splittable_conv(topo: Topology, tensor: str, channels: int) -> bool:
    """``tensor`` is the only output of a Conv with constant weights (and bias) of ``channels`` rows."""
    node = topo.producer.get(tensor)
    if node is None or node.op_type != "Conv" or len(node.output) != 1 or len(node.input) < 2:
        return False
    w = topo.const(node.input[1])
    if w is None or w.ndim != 4 or w.shape[0] != channels:
        return False
    return len(node.input) < 3 or not node.input[2] or topo.const(node.input[2]) is not None


def _discover(model: onnx.ModelProto, info: ModelInfo) -> HeadSpec | None:
    """A YOLOv5-style head: per level a conv ``[1, na*(5+nc), H, W]`` reshaped to ``[1, na, 5+nc, H, W]``.

    Each level's conv is described as three endpoints (``boxes_i`` with the na*4 box logits,
    ``objectness_i`` na*1, ``scores_i`` na*nc, anchor-major) that the cut gives their own convs,
    so each gets its own quantization scale. If any level's tensor is not a plain Conv output,
    every level stays one ``detection_i`` endpoint (the metadata describes one form per head).
    """
    topo = Topology.of(model)
    levels = []
    for out in topo.graph.output:
        for t in tail_inputs(topo, out.name):
            reshape = next((n for n in topo.consumers.get(t, []) if n.op_type == "Reshape"), None)
            shape5 = topo.shapes.get(reshape.output[0]) if reshape is not None else None
            if not shape5 or len(shape5) != 5 or not is_grid(topo.shapes[t], info.imgsz):
                continue
            na, no = shape5[1], shape5[2]
            anchors = _anchor_grid(topo, reshape.output[0], na)
            if anchors is None or no < 6:
                continue
            levels.append((topo.shapes[t][2], t, anchors, no))
    if not levels:
        return None
    levels.sort(key=lambda lv: -lv[0])
    nc = levels[0][3] - 5
    if info.names and len(info.names) != nc:
        raise not_found(topo, f"anchor head has {nc} classes but metadata names {len(info.names)}")
    na = len(levels[0][2])
    split = all(_splittable_conv(topo, t, na * no) for _, t, _, no in levels)
    endpoints: list[Endpoint] = []
    for i, (h, t, _, no) in enumerate(levels):
        shape = topo.shapes[t]
        stride = info.imgsz[0] // h
        if not split:
            endpoints.append(Endpoint(t, "detection", f"detection_{i}", shape, stride, i))
            continue
        # channel a*no + k: k 0-3 box logits (xy, wh), 4 objectness, 5.. classes; anchor-major
        for kind, ks in (("boxes", range(4)), ("objectness", range(4, 5)), ("scores", range(5, no))):
            ch = tuple(a * no + k for a in range(na) for k in ks)
            endpoints.append(Endpoint(t, kind, f"{kind}_{i}", (shape[0], len(ch), *shape[2:]), stride, i, ch))
    return HeadSpec(
        family="yolov5",
        task="detect",
        nc=nc,
        reg_max=0,
        strides=tuple(info.imgsz[0] // h for h, _, _, _ in levels),
        endpoints=sort_endpoints(endpoints),
        anchors=tuple(a for _, _, a, _ in levels),
    )



# ----------------------------------------------------------------------------- metadata


def _outputs(head: HeadSpec, tensors: Sequence[TensorLike], layout: str = "nhwc") -> list[Output]:
    """YOLOv5 per-scale raw head (``encoding: anchor``, ``score_format: obj_x_class``).

    ``anchors`` is a flat list of ``[w, h]`` pairs in input pixels, ``na`` per level in the
    children's order (the type EdgeFirst HAL's schema parses).

    Split form (each level's conv cut in three): logical ``boxes`` (anchor encoding, anchors),
    ``objectness`` and ``scores``, each with a child per level:
    ``[1, H, W, na*4]`` box logits (cx, cy, w, h), ``[1, H, W, na]`` objectness logits and
    ``[1, H, W, na*nc]`` class logits, anchor-major (``a*F + k``). Decoded as
    ``xy = (2*sig - 0.5 + grid) * stride``, ``wh = (2*sig)**2 * anchor``, score ``sig(obj)*sig(cls)``.

    Single-tensor form (a level that could not be split): one logical ``detection`` whose
    children are ``[1, H, W, na*(5+nc)]``: cx, cy, w, h, objectness, classes per anchor.
    """
    by_name = {t.name: t for t in tensors}
    na = len(head.anchors[0])
    anchors = [list(a) for level in head.anchors for a in level]
    if head.of_kind("detection"):
        eps = head.of_kind("detection")
        total = sum(e.shape[2] * e.shape[3] * na for e in eps)
        no = 5 + head.nc
        return [
            Output(
                name="detection",
                type="detection",
                shape=[1, total, no],
                dshape=[("batch", 1), ("num_boxes", total), ("num_features", no)],
                decoder="ultralytics",
                encoding="anchor",
                score_format="obj_x_class",
                normalized=False,
                anchors=anchors,
                activation_required="sigmoid",
                children=[physical_output(by_name[e.name], "detection", e.stride, e.scale_index, layout) for e in eps],
            )
        ]
    total = sum(e.shape[2] * e.shape[3] * na for e in head.of_kind("boxes"))
    widths = {"boxes": 4, "objectness": 1, "scores": head.nc}
    feature = {"boxes": "box_coords", "objectness": "num_features", "scores": "num_classes"}
    outputs = []
    for kind in ("boxes", "objectness", "scores"):
        logical = Output(
            name=kind,
            type=kind,
            shape=[1, widths[kind], total],
            dshape=[("batch", 1), (feature[kind], widths[kind]), ("num_boxes", total)],
            decoder="ultralytics",
            activation_required="sigmoid",
            children=[
                physical_output(by_name[e.name], kind, e.stride, e.scale_index, layout, "num_anchors_x_features")
                for e in head.of_kind(kind)
            ],
        )
        if kind == "boxes":
            logical.encoding, logical.normalized, logical.anchors = "anchor", False, anchors
        else:
            logical.score_format = "obj_x_class"
        outputs.append(logical)
    return outputs



# ----------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class AnchorLevel:
    stride: tuple[float, float]
    height: int
    width: int
    anchors: np.ndarray  # (na, 2) pixels
    offset: int
    boxes: Field  # per-anchor rows (``Field.anchors`` = na)
    obj: Field
    cls: Field

    @property
    def size(self) -> int:
        return self.height * self.width * len(self.anchors)


def _anchor_outputs(meta: ModelMeta) -> Output | None:
    """The logical output that carries ``encoding: anchor`` and the per-level children."""
    for name in ("boxes", "detection"):
        out = meta.output(name)
        if out is not None and (out.encoding or "").lower() == "anchor" and out.children:
            return out
    return None


def is_anchor_head(meta: ModelMeta) -> bool:
    """True for a logical ``boxes`` (split form) or ``detection`` (single tensor) output with
    ``encoding: anchor`` and per-level children."""
    return _anchor_outputs(meta) is not None


def _anchors_per_level(anchors: Any, levels: int) -> list[np.ndarray] | None:
    """Anchors grouped by level: a flat list of ``[w, h]`` pairs (what edgeq writes, HAL's type)
    split evenly in level order, or one list of pairs per level (older edgeq artifacts)."""
    try:
        a = np.asarray(anchors, np.float32)
    except (TypeError, ValueError):
        return None
    if a.ndim == 3 and a.shape[0] == levels and a.shape[2] == 2:
        return list(a)
    if a.ndim == 2 and a.shape[1] == 2 and levels and len(a) % levels == 0:
        return list(a.reshape(levels, -1, 2))
    return None


class AnchorHead:
    """Decode YOLOv5 per-scale raw outputs; candidates only are dequantized."""

    has_coefs = False

    def __init__(self, meta: ModelMeta, quant: Mapping[str, Quant | None]) -> None:
        main = _anchor_outputs(meta)
        assert main is not None
        per_level = _anchors_per_level(main.anchors, len(main.children))
        if per_level is None:
            raise ArtifactError(
                f"anchor-encoded {main.name!r} output: cannot share its anchors among {len(main.children)} levels",
                "give 'anchors' as [w, h] pairs, the same number per level in the children's order",
            )
        split = main.type == "boxes"
        if split:
            obj, cls = meta.output("objectness"), meta.output("scores")
            if obj is None or cls is None or len(obj.children) != len(main.children) or len(cls.children) != len(main.children):
                raise ArtifactError("anchor-encoded 'boxes' needs 'objectness' and 'scores' outputs with one child per level")
            by_stride = {
                "obj": {stride_of(c): c for c in obj.children},
                "cls": {stride_of(c): c for c in cls.children},
            }
        self.activation = (main.activation_required or "sigmoid").lower()
        # anchors are listed in the same order as the children; decode level by level by stride
        pairs = sorted(zip(main.children, per_level), key=lambda p: stride_of(p[0])[0])
        self.levels: list[AnchorLevel] = []
        offset = 0
        for child, anchors in pairs:
            anchors = np.asarray(anchors, np.float32)
            stride = stride_of(child)
            grid = (round(meta.imgsz[0] / stride[1]), round(meta.imgsz[1] / stride[0]))
            if split:
                try:
                    o, c = by_stride["obj"][stride], by_stride["cls"][stride]
                except KeyError:
                    raise ArtifactError(f"no objectness/scores child with the stride of {child.name!r}") from None
                parts = tuple(self._field(x, grid, quant, len(anchors)) for x in (child, o, c))
            else:
                parts = tuple(self._field(child, grid, quant, len(anchors), cols)
                              for cols in (slice(0, 4), slice(4, 5), slice(5, None)))
            level = AnchorLevel(stride, grid[0], grid[1], anchors, offset, *parts)
            self.levels.append(level)
            offset += level.size

    @staticmethod
    def _field(child: Output, grid: tuple[int, int], quant: Mapping[str, Quant | None], na: int,
               cols: slice = slice(None)) -> Field:
        """Per-anchor rows of ``child`` (columns ``cols`` of each anchor's features)."""
        fax = feature_axis(child, None, grid)
        q = quant.get(child.name, child.quantization)
        return Field(child.name, fax, cols, None if q is None else QParams.from_quant(q, fax, child.name).columns(cols), na)

    def candidates(self, outputs: Arrays, conf: float, multi_label: bool) -> Candidates:
        parts = []
        raw_thr = raw_threshold(conf, self.activation)
        for lv in self.levels:
            obj = lv.obj.rows(outputs)[:, 0]
            thr = lv.obj.quant.threshold_code(raw_thr) if lv.obj.quant is not None else raw_thr - 1e-3
            idx = np.flatnonzero(obj >= np.asarray(thr).reshape(-1)[0])
            if idx.size == 0:
                continue
            sig_obj = activate(lv.obj.values(obj[idx]), self.activation)
            sig_cls = activate(lv.cls.values(lv.cls.rows(outputs)[idx]), self.activation)
            r, cls, s = select_scores(sig_obj[:, None] * sig_cls, conf, multi_label)
            if r.size == 0:
                continue
            picked = idx[r]
            sig_box = activate(lv.boxes.values(lv.boxes.rows(outputs)[picked]), self.activation)
            boxes = self._boxes(sig_box, picked, lv)
            parts.append(Candidates(boxes, s.astype(np.float32), cls, picked + lv.offset))
        return Candidates.concat(parts)

    @staticmethod
    def _boxes(sig: np.ndarray, rows: np.ndarray, lv: AnchorLevel) -> np.ndarray:
        na = len(lv.anchors)
        cell, a = np.divmod(rows, na)
        gy, gx = np.divmod(cell, lv.width)
        sx, sy = lv.stride
        cx = (sig[:, 0] * 2 - 0.5 + gx) * sx
        cy = (sig[:, 1] * 2 - 0.5 + gy) * sy
        wh = (sig[:, 2:4] * 2) ** 2 * lv.anchors[a]
        return xywh2xyxy(np.stack([cx, cy, wh[:, 0], wh[:, 1]], axis=1).astype(np.float32))

    def coefs(self, outputs: Arrays, rows: np.ndarray) -> np.ndarray | None:
        return None


# ----------------------------------------------------------------------------- sensitivity


def _per_anchor(x: np.ndarray, na: int) -> np.ndarray:
    """(1, na*F, H, W) anchor-major channels -> (na, F, H, W) float64."""
    v = x[0].astype(np.float64)
    return v.reshape(na, -1, *v.shape[1:])


def _anchor_xywh(t: np.ndarray, stride: float, wh: np.ndarray | float) -> np.ndarray:
    """YOLOv5 box logits (na, 4, H, W) -> pixel offsets/sizes: (2 sig - 0.5) * stride, (2 sig)^2 * anchor."""
    sig = sigmoid(t)
    return np.concatenate([(2 * sig[:, :2] - 0.5) * stride, (2 * sig[:, 2:4]) ** 2 * wh], axis=1)


def _decoded_anchor_errors(ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray], head: HeadSpec) -> Iterable[tuple[str, float, float]]:
    """YOLOv5 per-level heads: obj x class scores, and pixel xywh weighted by the float top score.

    Channels are anchor-major (``boxes_i`` a*4+k, ``objectness_i`` a, ``scores_i`` a*nc+c).
    """
    levels: dict[int, dict[str, Endpoint]] = {}
    for e in head.endpoints:
        if e.scale_index is not None:
            levels.setdefault(e.scale_index, {})[e.kind] = e
    for i, parts in sorted(levels.items()):
        if not {"boxes", "objectness", "scores"} <= set(parts):
            continue
        na = len(head.anchors[i]) if head.anchors else parts["objectness"].shape[1]
        box, obj, cls = (parts[k].name for k in ("boxes", "objectness", "scores"))
        sf = sigmoid(_per_anchor(ref[obj], na)) * sigmoid(_per_anchor(ref[cls], na))
        sq = sigmoid(_per_anchor(test.get(obj, ref[obj]), na)) * sigmoid(_per_anchor(test.get(cls, ref[cls]), na))
        yield "scores", float(np.sum((sq - sf) ** 2)), float(np.sum(sf * sf))
        stride = float(head.strides[i])
        wh = np.asarray(head.anchors[i], np.float64).reshape(na, 2, 1, 1) if head.anchors else stride
        bf = _anchor_xywh(_per_anchor(ref[box], na), stride, wh)
        bq = _anchor_xywh(_per_anchor(test.get(box, ref[box]), na), stride, wh)
        w = sf.max(axis=1, keepdims=True)  # (na, 1, H, W): float top score per anchor
        yield "boxes", float(np.sum(w * (bq - bf) ** 2)), float(np.sum(w * bf * bf))
