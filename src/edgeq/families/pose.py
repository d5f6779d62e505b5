"""Pose heads (keypoints): YOLOv8-pose, YOLO11-pose (DFL boxes) and YOLO26-pose (ltrb boxes).

**Discovery** (by structure only). An Ultralytics pose export decodes its keypoint branch in its
own tail: the per-scale keypoint tensors (``cv4``: ``nk*ndim`` channels, keypoint-major
``[x0, y0, v0, x1, y1, v1, ...]``) are reshaped to rank 3, concatenated, and reshaped to
``[1, nk, ndim, N]``; a Slice takes ``x, y`` (then ``*gain + anchor``, ``*stride``) and, when
``ndim == 3``, another takes the visibility logits (then Sigmoid). That rank-3 -> 4-D Reshape
(``ndim`` 2 or 3, consumed by Slices) marks a pose graph and gives ``nk`` and ``ndim``; the 4-D
tensors entering the rank changes before it are the keypoint endpoints. The box and class
endpoints come from the same decode tail as a detect head's (per-scale channel Concats of
``[box, cls]`` in 8.3 exports, separately reshaped branches in 8.4), typed by channel count:
``4 * reg_max`` (reg_max from the DFL's ``arange`` Conv; 1 without a DFL, as in YOLO26) is the
box branch, the other one the class branch (``nc`` channels).

The keypoint formula is read off the tail and checked, never assumed: ``x = (raw * gain + g +
offset) * stride`` (``g`` the integer grid column; likewise ``y`` with the row), where YOLOv8 and
YOLO11 export ``gain 2, offset 0`` (``(raw * 2 + (anchor - 0.5)) * stride``, anchors at cell
centres) and YOLO26 ``gain 1, offset 0.5`` (``(raw + anchor) * stride``); visibility is
``sigmoid(raw)``. Any other tail is not claimed (:class:`HeadNotFoundError`).

**The cut.** Each level's keypoint Conv is split (:attr:`Endpoint.channels`) into an ``x, y``
output (``2*nk`` channels, ``[x0, y0, x1, y1, ...]``) and a visibility output (``nk`` logits):
offsets in grid cells and logits have very different ranges, so each gets its own INT8 scale.

**Metadata** (schema v2). ``boxes`` (``encoding: dfl`` or ``ltrb``) and ``scores`` as for a detect
head, plus one logical ``landmarks`` output (``decoder: ultralytics``, shape ``[1, nk*ndim, N]``)
whose per-scale children are typed with edgeq's physical subtypes, after ARA-2's
``boxes_xy``/``boxes_wh``:

* ``landmarks_xy``: ``[1, H, W, 2*nk]`` raw offsets, pairs ``x, y`` per keypoint;
* ``landmarks_visibility``: ``[1, H, W, nk]`` logits, ``activation_required: sigmoid`` (absent
  for ``ndim == 2`` models).

edgeq extension: the logical ``landmarks`` ``encoding`` names the keypoint formula, ``yolov8``
(gain 2, offset 0) or ``yolo26`` (gain 1, offset 0.5), see :data:`KEYPOINT_ENCODINGS`. Keypoints
come out in model-input pixels through the decoder's ``extras`` hook as ``keypoints`` (K, nk, 3):
``x, y, visibility`` (visibility 1 when the model has none).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx

from edgeq.decode.fields import (
    Arrays,
    Field,
    activate,
    activation_of,
    feature_axis,
    make_field,
    quant_of,
    stride_of,
)
from edgeq.errors import ArtifactError
from edgeq.families.base import DecodedError, HeadFamily
from edgeq.families.yolov8 import (
    PerScaleHead,
    _decoded_errors,
    _find_reg_max,
    is_per_scale,
    per_scale_outputs,
)
from edgeq.graph.heads import Endpoint, HeadSpec, grid_inputs, not_found, unpack_concat
from edgeq.graph.load import ModelInfo
from edgeq.graph.topology import Topology
from edgeq.graph.view import GraphView
from edgeq.meta.build import TensorLike, physical_output
from edgeq.meta.schema import ModelMeta, Output, Quant

#: keypoint encodings: name -> (gain, offset) in ``x = (raw * gain + grid_x + offset) * stride``
KEYPOINT_ENCODINGS: dict[str, tuple[float, float]] = {"yolov8": (2.0, 0.0), "yolo26": (1.0, 0.5)}
#: endpoint kinds of the keypoint branch
KEYPOINTS, VISIBILITY = "keypoints", "keypoint_visibility"
#: physical subtypes of the ``landmarks`` children (edgeq extension)
LANDMARKS_XY, LANDMARKS_VIS = "landmarks_xy", "landmarks_visibility"
_ORDER = {"boxes": 0, "scores": 1, KEYPOINTS: 2, VISIBILITY: 3}


class Pose(HeadFamily):
    """Detect heads with a keypoint branch: boxes, class logits, keypoint offsets and visibility."""

    name = "yolov8-pose"
    nms = "class_aware"
    iou = 0.7

    def discover(self, model: onnx.ModelProto, info: ModelInfo) -> HeadSpec | None:
        return _discover(model, info, self.name)

    def outputs(self, head: HeadSpec, tensors: Sequence[TensorLike], layout: str = "nhwc") -> list[Output]:
        return _outputs(head, tensors, layout)

    def decodes(self, meta: ModelMeta) -> bool:
        return is_per_scale(meta) and meta.output("landmarks") is not None

    def decoder(self, meta: ModelMeta, quant: Mapping[str, Quant | None]) -> PoseHead:
        return PoseHead(meta, quant)

    def measure_decoded(self, ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                        head: HeadSpec) -> Iterable[DecodedError]:
        yield from _decoded_errors(ref, test, head)
        yield from _keypoint_errors(ref, test, head)


def encoding_of(head: HeadSpec) -> str:
    """The keypoint encoding of a discovered pose head (DFL heads: yolov8; no DFL: yolo26)."""
    return "yolo26" if head.reg_max == 1 else "yolov8"


# ----------------------------------------------------------------------------- discovery


def _keypoint_reshape(topo: Topology) -> tuple[onnx.NodeProto, int, int] | None:
    """(node, nk, ndim) of the Reshape ``[1, nk*ndim, N] -> [1, nk, ndim, N]`` read by Slices."""
    for node in topo.graph.node:
        if node.op_type != "Reshape" or topo.rank(node.input[0]) != 3:
            continue
        shape = topo.shapes.get(node.output[0])
        if shape is None or len(shape) != 4 or shape[2] not in (2, 3):
            continue
        _, nk, ndim, n = shape
        if topo.shapes[node.input[0]][1:] != (nk * ndim, n):
            continue
        users = topo.consumers.get(node.output[0], [])
        if users and all(u.op_type == "Slice" for u in users):
            return node, nk, ndim
    return None


def _axis2_slice(view: GraphView, node: onnx.NodeProto) -> tuple[int, int] | None:
    """(start, end) of a Slice over axis 2 (the keypoint dimension), else None."""
    ins = list(node.input) + [""] * (5 - len(node.input))
    starts, ends, axes = (view.consts.get(i) if i else None for i in ins[1:4])
    if starts is None or ends is None or axes is None or axes.size != 1 or int(axes.reshape(-1)[0]) not in (2, -2):
        return None
    return int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0])


def _keypoint_formula(model: onnx.ModelProto, kpt4d: str, stride_min: int) -> tuple[float, float] | None:
    """(gain, offset) of ``(raw * gain + grid + offset) * stride`` as the export's tail computes x, y.

    Follows the ``x, y`` Slice of the ``[1, nk, ndim, N]`` tensor: an optional Mul by a scalar
    (gain), an Add of the ``(2, N)`` anchor grid (offset = its first x, the grid starting at
    column 0) and a Mul by the strides (checked to start at the smallest stride).
    """
    view = GraphView(model)
    sl = next((n for n in view.consumers.get(kpt4d, []) if n.op_type == "Slice" and _axis2_slice(view, n) == (0, 2)), None)
    if sl is None:
        return None
    t, gain = sl.output[0], 1.0
    nxt = view.consumers.get(t, [])
    if len(nxt) == 1 and nxt[0].op_type == "Mul":
        c = next((view.consts[i] for i in nxt[0].input if i in view.consts), None)
        if c is None or c.size != 1:
            return None
        gain, t = float(c.reshape(-1)[0]), nxt[0].output[0]
        nxt = view.consumers.get(t, [])
    if len(nxt) != 1 or nxt[0].op_type != "Add":
        return None
    grid = next((view.consts[i] for i in nxt[0].input if i in view.consts), None)
    if grid is None or grid.ndim < 2 or grid.shape[-2] != 2:
        return None
    grid = grid.reshape(2, -1)
    offset = float(grid[0, 0])
    if not (np.isclose(grid[0, 1] - grid[0, 0], 1.0) and np.isclose(grid[1, 0], offset)):
        return None
    mul = view.consumers.get(nxt[0].output[0], [])
    strides = next((view.consts[i] for n in mul if n.op_type == "Mul" for i in n.input if i in view.consts), None)
    if strides is None or not np.isclose(float(strides.reshape(-1)[0]), stride_min):
        return None
    return gain, offset


def _grid_inputs(topo: Topology, start: str, imgsz: tuple[int, int]) -> list[str]:
    """Per-scale 4-D tensors flattened on the way to ``start`` (the first grid on each path)."""
    return grid_inputs(topo, [start], imgsz, unpack=False)


def _type_parts(topo: Topology, grouped: str, reg_max: int, nc: int) -> list[tuple[str, str]]:
    """(kind, tensor) of one 4-D tensor before the tail: a [box, cls] Concat or one branch."""
    parts = unpack_concat(topo, grouped)
    if len(parts) > 1:
        return [("boxes" if pos == 0 and topo.shapes[t][1] == 4 * reg_max else "scores", t) for pos, t in enumerate(parts)]
    c = topo.shapes[grouped][1]
    if c == 4 * reg_max and c != nc:
        return [("boxes", grouped)]
    if c == nc or not nc:
        return [("scores", grouped)]
    return []


def _discover(model: onnx.ModelProto, info: ModelInfo, family: str) -> HeadSpec | None:
    """The pose head of a normalized Ultralytics pose graph (None: no keypoint decode tail)."""
    topo = Topology.of(model)
    found = _keypoint_reshape(topo)
    if found is None:
        return None
    reshape, nk, ndim = found
    h_in = info.imgsz[0]
    kpts = _grid_inputs(topo, reshape.input[0], info.imgsz)
    if not kpts or any(topo.shapes[t][1] != nk * ndim for t in kpts):
        raise not_found(topo, f"keypoint tail [1, {nk}, {ndim}, N] found but no per-scale {nk * ndim}-channel tensors")
    reg_max = _find_reg_max(topo) or 1
    nc = len(info.names)
    by_level: dict[int, dict[str, str]] = {}
    for out in topo.graph.output:
        if topo.rank(out.name) != 3:
            continue
        for grouped in _grid_inputs(topo, out.name, info.imgsz):
            if grouped in kpts:
                continue
            for kind, t in _type_parts(topo, grouped, reg_max, nc):
                by_level.setdefault(topo.shapes[t][2], {})[kind] = t
    for t in kpts:
        by_level.setdefault(topo.shapes[t][2], {})[KEYPOINTS] = t
    levels = sorted(by_level, reverse=True)
    if not levels or any(set(by_level[h]) != {"boxes", "scores", KEYPOINTS} for h in levels):
        raise not_found(topo, f"pose tail found, but not boxes, scores and keypoints at every level "
                        f"({ {h_in // h: sorted(by_level[h]) for h in levels} })")
    formula = _keypoint_formula(model, reshape.output[0], h_in // levels[0])
    expected = KEYPOINT_ENCODINGS["yolo26" if reg_max == 1 else "yolov8"]
    if formula is None or not np.allclose(formula, expected):
        raise not_found(topo, f"the keypoint decode computes (raw * gain + grid + offset) * stride with (gain, offset) "
                        f"{formula}, not the {expected} of Ultralytics' {'YOLO26' if reg_max == 1 else 'YOLOv8/11'} pose head")
    endpoints: list[Endpoint] = []
    for idx, h in enumerate(levels):
        stride = h_in // h
        for kind in ("boxes", "scores"):
            t = by_level[h][kind]
            endpoints.append(Endpoint(t, kind, f"{kind}_{idx}", topo.shapes[t], stride, idx))
        t = by_level[h][KEYPOINTS]
        shape = topo.shapes[t]
        if ndim == 3:
            conv = topo.producer.get(t)
            if conv is None or conv.op_type != "Conv" or topo.const(conv.input[1]) is None:
                raise not_found(topo, f"keypoint tensor {t} is not a Conv output, so visibility cannot be split off")
            xy = tuple(k * 3 + d for k in range(nk) for d in (0, 1))
            vis = tuple(k * 3 + 2 for k in range(nk))
            endpoints.append(Endpoint(t, KEYPOINTS, f"keypoints_{idx}", (1, 2 * nk, *shape[2:]), stride, idx, xy))
            endpoints.append(Endpoint(t, VISIBILITY, f"keypoint_vis_{idx}", (1, nk, *shape[2:]), stride, idx, vis))
        else:
            endpoints.append(Endpoint(t, KEYPOINTS, f"keypoints_{idx}", shape, stride, idx))
    scores = [e for e in endpoints if e.kind == "scores"]
    nc_found = scores[0].shape[1]
    if nc and nc != nc_found:
        raise not_found(topo, f"class branch has {nc_found} channels but metadata names {nc} classes")
    return HeadSpec(
        family=family,
        task="pose",
        nc=nc_found,
        reg_max=reg_max,
        strides=tuple(h_in // h for h in levels),
        endpoints=tuple(sorted(endpoints, key=lambda e: (_ORDER[e.kind], e.scale_index or 0))),
    )


# ----------------------------------------------------------------------------- metadata


def _outputs(head: HeadSpec, tensors: Sequence[TensorLike], layout: str = "nhwc") -> list[Output]:
    """Logical boxes, scores and landmarks outputs, each with one child (or two) per level."""
    by_name = {t.name: t for t in tensors}
    total = sum(e.shape[2] * e.shape[3] for e in head.of_kind("boxes"))
    kpts, vis = head.of_kind(KEYPOINTS), head.of_kind(VISIBILITY)
    nk = vis[0].shape[1] if vis else kpts[0].shape[1] // 2
    ndim = 3 if vis else 2
    outputs = per_scale_outputs(head, tensors, layout)  # boxes and scores, as detect heads write them
    children = []
    for e in sorted(kpts + vis, key=lambda e: (e.scale_index or 0, _ORDER[e.kind])):
        child = physical_output(by_name[e.name], LANDMARKS_XY if e.kind == KEYPOINTS else LANDMARKS_VIS,
                                e.stride, e.scale_index, layout, feature="num_features")
        if e.kind == VISIBILITY:
            child.activation_required = "sigmoid"
        children.append(child)
    outputs.append(Output(
        name="landmarks", type="landmarks", shape=[1, nk * ndim, total],
        dshape=[("batch", 1), ("num_features", nk * ndim), ("num_boxes", total)], decoder="ultralytics",
        encoding=encoding_of(head), normalized=False, children=children,
    ))
    return outputs


# ----------------------------------------------------------------------------- decoding


class PoseHead(PerScaleHead):
    """A per-scale head plus keypoints: ``extras`` gives (K, nk, 3) ``x, y, visibility`` per kept row."""

    def __init__(self, meta: ModelMeta, quant: Mapping[str, Quant | None]) -> None:
        super().__init__(meta, quant)
        lm = meta.output("landmarks")
        if lm is None or not lm.children:
            raise ArtifactError("pose metadata needs a logical 'landmarks' output with per-scale children")
        enc = (lm.encoding or "yolov8").lower()
        if enc not in KEYPOINT_ENCODINGS:
            raise ArtifactError(f"landmarks encoding {enc!r} is not supported ({', '.join(KEYPOINT_ENCODINGS)} are)",
                                "fix the outputs[] section of edgefirst.json")
        self.gain, self.offset = KEYPOINT_ENCODINGS[enc]
        in_h, in_w = meta.imgsz
        xy: dict[float, tuple[Field, Output]] = {}
        vis: dict[float, tuple[Field, str | None]] = {}
        for c in lm.children:
            sx, sy = stride_of(c)
            grid = (round(in_h / sy), round(in_w / sx))
            field = make_field(c, quant_of(quant, c), feature_axis(c, None, grid))
            if c.type == LANDMARKS_VIS:
                vis[sx] = (field, activation_of(lm, c))
            else:
                xy[sx] = (field, c)
        strides = sorted(lv.stride[0] for lv in self.levels)
        if sorted(xy) != strides or (vis and sorted(vis) != strides):
            raise ArtifactError("landmarks children do not have the strides of the boxes and scores",
                                "fix the outputs[] section of edgefirst.json")
        self.kpt_xy = [xy[lv.stride[0]][0] for lv in self.levels]
        self.kpt_vis = [vis[lv.stride[0]] for lv in self.levels] if vis else None
        field0, child0 = xy[self.levels[0].stride[0]]
        self.nk = int(child0.shape[field0.fax]) // 2

    def extras(self, outputs: Arrays, rows: np.ndarray) -> dict[str, np.ndarray]:
        out = np.zeros((rows.shape[0], self.nk, 3), np.float32)
        out[..., 2] = 1.0
        for i, level in enumerate(self.levels):
            sel = np.flatnonzero((rows >= level.offset) & (rows < level.offset + level.height * level.width))
            if sel.size == 0:
                continue
            local = rows[sel] - level.offset
            f = self.kpt_xy[i]
            raw = f.values(f.rows(outputs)[local]).reshape(-1, self.nk, 2)
            gx = (local % level.width).astype(np.float32)[:, None]
            gy = (local // level.width).astype(np.float32)[:, None]
            sx, sy = level.stride
            g, o = np.float32(self.gain), np.float32(self.offset)
            out[sel, :, 0] = (raw[..., 0] * g + gx + o) * np.float32(sx)
            out[sel, :, 1] = (raw[..., 1] * g + gy + o) * np.float32(sy)
            if self.kpt_vis is not None:
                vf, act = self.kpt_vis[i]
                out[sel, :, 2] = activate(vf.values(vf.rows(outputs)[local]), act)
        return {"keypoints": out}


# ----------------------------------------------------------------------------- sensitivity


def _keypoint_errors(ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                     head: HeadSpec) -> Iterable[DecodedError]:
    """Keypoint offsets (grid units) weighted by the float top score of their anchor."""
    weights = {}
    for e in head.of_kind("scores"):
        x = ref[e.name].astype(np.float64)
        weights[e.scale_index] = (1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))).max(axis=1)[0]
    for e in head.of_kind(KEYPOINTS):
        f = ref[e.name][0].astype(np.float64)
        q = test.get(e.name, ref[e.name])[0].astype(np.float64)
        w = weights.get(e.scale_index, 1.0)
        yield "keypoints", float(np.sum(w * (q - f) ** 2)), float(np.sum(w * f * f))
