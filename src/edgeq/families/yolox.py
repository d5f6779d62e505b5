"""Megvii YOLOX heads: ``encoding: yolox`` (an edgeq value), ``score_format: obj_x_class``.

**Discovery** (by structure, no node names). YOLOX's decoupled head has, per level, three
separate 1x1 Convs: ``reg_preds`` (4 channels), ``obj_preds`` (1) and ``cls_preds`` (nc); the
export concatenates them on channels (objectness and classes through a Sigmoid when the export
has it inside, as Megvii's ``decode_in_inference=False`` export does), reshapes each level to
``[1, 5+nc, H*W]``, concatenates the levels and transposes to ``[1, N, 5+nc]``. The endpoints are
the three Conv outputs of each level (pre-sigmoid logits), each its own INT8 output.

**Preprocessing** (:attr:`YOLOX.input_convention`). Megvii's ``preproc``: BGR, 0..255 (no
``/255``, no mean/std), resized keeping the aspect ratio and padded with 114 at the bottom/right.
Artifacts take uint8 BGR pixels with input scale 1 (``input.cameraadaptor: bgr``,
``edgeq.input_convention``).

**Metadata.** Split form (what edgeq writes): logical ``boxes`` (``encoding: yolox``),
``objectness`` and ``scores`` (``obj_x_class``, ``activation_required: sigmoid``), one child per
level ``[1, H, W, 4 | 1 | nc]`` (NHWC, or NCHW) with ``stride``. A plain ONNX export (read by
:mod:`edgeq.meta.read`) is one logical ``detection`` ``[1, N, 5+nc]`` (``encoding: yolox``, levels
at strides 8/16/32 in order, row-major), objectness and classes already sigmoided
(``activation_applied``) unless ``activation_required`` says otherwise.

**Decoding** (Megvii's): ``xy = (t_xy + grid) * stride``, ``wh = exp(t_wh) * stride``, score =
obj x cls; class-aware NMS at IoU 0.65 (Megvii's COCO evaluation). EdgeFirst's HAL has no YOLOX
decoder, so it cannot decode these files.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from edgeq.calib.preprocess import InputConvention
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
from edgeq.graph.heads import Endpoint, HeadSpec, is_grid, not_found, sort_endpoints, tail_inputs, unpack_concat
from edgeq.graph.load import ModelInfo
from edgeq.graph.topology import Topology
from edgeq.meta.build import TensorLike, physical_output
from edgeq.meta.schema import ModelMeta, Output, Quant

#: the ``encoding`` (and ``decoder``) value of YOLOX boxes: EdgeFirst's schema has none for them
ENCODING = "yolox"
#: strides of a flat ``[1, N, 5+nc]`` YOLOX output, in row order
FLAT_STRIDES = ((8, 16, 32), (8, 16, 32, 64))


class YOLOX(HeadFamily):
    """Megvii YOLOX: per level box regressions, objectness and class logits (score = obj x cls)."""

    name = "yolox"
    nms = "class_aware"
    iou = 0.65  # Megvii's COCO evaluation (yolox/exp/yolox_base.py: nmsthre = 0.65)
    input_convention = InputConvention(pad="bottom_right", channels="bgr", pixel_scale=1.0)

    def discover(self, model: onnx.ModelProto, info: ModelInfo) -> HeadSpec | None:
        return _discover(model, info)

    def outputs(self, head: HeadSpec, tensors: Sequence[TensorLike], layout: str = "nhwc") -> list[Output]:
        return _outputs(head, tensors, layout)

    def decodes(self, meta: ModelMeta) -> bool:
        return _main_output(meta) is not None

    def decoder(self, meta: ModelMeta, quant: Mapping[str, Quant | None]) -> GridHead:
        return GridHead(meta, quant)

    def measure_decoded(self, ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                        head: HeadSpec) -> Iterable[DecodedError]:
        return _decoded_errors(ref, test, head)


# ----------------------------------------------------------------------------- discovery


def _conv_output(topo: Topology, tensor: str) -> str | None:
    """The Conv output behind ``tensor``: itself, or the input of the Sigmoid producing it."""
    node = topo.producer.get(tensor)
    if node is not None and node.op_type == "Sigmoid":
        tensor = node.input[0]
        node = topo.producer.get(tensor)
    if node is None or node.op_type != "Conv" or len(node.output) != 1:
        return None
    w = topo.const(node.input[1]) if len(node.input) > 1 else None
    return tensor if w is not None and w.ndim == 4 else None


def _level(topo: Topology, t: str, info: ModelInfo) -> tuple[int, tuple[str, str, str], int] | None:
    """(H, (reg, obj, cls) conv outputs, nc) of one level's ``[1, 5+nc, H, W]`` tensor, or None."""
    shape = topo.shapes.get(t)
    if not shape or len(shape) != 4 or not is_grid(tuple(shape), info.imgsz):
        return None
    parts = unpack_concat(topo, t)
    if len(parts) != 3:
        return None
    widths = [topo.shapes.get(p, (0, 0))[1] for p in parts]
    if widths[0] != 4 or widths[1] != 1 or widths[2] < 1:
        return None
    convs = [_conv_output(topo, p) for p in parts]
    if any(c is None for c in convs) or len({id(topo.producer[c]) for c in convs}) != 3:
        return None
    return int(shape[2]), (convs[0], convs[1], convs[2]), int(widths[2])  # type: ignore[return-value]


def _discover(model: onnx.ModelProto, info: ModelInfo) -> HeadSpec | None:
    """A YOLOX head: per level a channel Concat of three Convs' outputs (4 box, 1 objectness, nc
    class channels; objectness and classes possibly through a Sigmoid) reshaped to rank 3."""
    topo = Topology.of(model)
    levels = []
    for out in topo.graph.output:
        for t in tail_inputs(topo, out.name):
            lv = _level(topo, t, info)
            if lv is None:
                return None  # a tail tensor that is not a YOLOX level: another family's head
            levels.append(lv)
    if not levels:
        return None
    levels.sort(key=lambda lv: -lv[0])
    nc = levels[0][2]
    if any(lv[2] != nc for lv in levels):
        return None
    if info.names and len(info.names) != nc:
        raise not_found(topo, f"YOLOX head has {nc} classes but metadata names {len(info.names)}")
    endpoints: list[Endpoint] = []
    for i, (h, convs, _) in enumerate(levels):
        stride = info.imgsz[0] // h
        for kind, t in zip(("boxes", "objectness", "scores"), convs):
            endpoints.append(Endpoint(t, kind, f"{kind}_{i}", tuple(topo.shapes[t]), stride, i))
    return HeadSpec(
        family="yolox",
        task="detect",
        nc=nc,
        reg_max=0,
        strides=tuple(info.imgsz[0] // h for h, _, _ in levels),
        endpoints=sort_endpoints(endpoints),
    )


# ----------------------------------------------------------------------------- metadata


def _outputs(head: HeadSpec, tensors: Sequence[TensorLike], layout: str = "nhwc") -> list[Output]:
    """Logical ``boxes`` (``encoding: yolox``), ``objectness`` and ``scores`` (``obj_x_class``),
    a child per level each: ``[1, H, W, 4]`` (t_x, t_y, t_w, t_h), ``[1, H, W, 1]`` and
    ``[1, H, W, nc]`` logits (NHWC, or the NCHW equivalents)."""
    by_name = {t.name: t for t in tensors}
    total = sum(e.shape[2] * e.shape[3] for e in head.of_kind("boxes"))
    widths = {"boxes": 4, "objectness": 1, "scores": head.nc}
    feature = {"boxes": "box_coords", "objectness": "num_features", "scores": "num_classes"}
    outputs = []
    for kind in ("boxes", "objectness", "scores"):
        logical = Output(
            name=kind,
            type=kind,
            shape=[1, widths[kind], total],
            dshape=[("batch", 1), (feature[kind], widths[kind]), ("num_boxes", total)],
            decoder=ENCODING,
            children=[physical_output(by_name[e.name], kind, e.stride, e.scale_index, layout, feature[kind])
                      for e in head.of_kind(kind)],
        )
        if kind == "boxes":
            logical.encoding, logical.normalized = ENCODING, False
        else:
            logical.score_format, logical.activation_required = "obj_x_class", "sigmoid"
        outputs.append(logical)
    return outputs


def _main_output(meta: ModelMeta) -> Output | None:
    """The logical ``boxes`` (split form) or ``detection`` (flat form) with ``encoding: yolox``."""
    for name in ("boxes", "detection"):
        out = meta.output(name)
        if out is not None and (out.encoding or "").lower() == ENCODING:
            return out
    return None


# ----------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class GridLevel:
    stride: tuple[float, float]
    height: int
    width: int
    offset: int  # first global row
    rows: slice  # this level's rows of its fields (all of them in the split form)
    boxes: Field
    obj: Field
    cls: Field

    @property
    def size(self) -> int:
        return self.height * self.width


class GridHead:
    """Decode YOLOX outputs (split per level, or one flat tensor); candidates only are dequantized."""

    has_coefs = False

    def __init__(self, meta: ModelMeta, quant: Mapping[str, Quant | None]) -> None:
        main = _main_output(meta)
        assert main is not None
        self.levels: list[GridLevel] = []
        if main.type == "boxes":
            self._split(meta, main, quant)
        else:
            self._flat(meta, main, quant)

    def _split(self, meta: ModelMeta, main: Output, quant: Mapping[str, Quant | None]) -> None:
        obj, cls = meta.output("objectness"), meta.output("scores")
        if obj is None or cls is None or not main.children or len(obj.children) != len(main.children) \
                or len(cls.children) != len(main.children):
            raise ArtifactError("YOLOX 'boxes' needs 'objectness' and 'scores' outputs with one child per level")
        self.activation = _activation(obj), _activation(cls)
        by_stride = {"obj": {stride_of(c): c for c in obj.children}, "cls": {stride_of(c): c for c in cls.children}}
        offset = 0
        for child in sorted(main.children, key=lambda c: stride_of(c)[0]):
            stride = stride_of(child)
            grid = (round(meta.imgsz[0] / stride[1]), round(meta.imgsz[1] / stride[0]))
            try:
                o, c = by_stride["obj"][stride], by_stride["cls"][stride]
            except KeyError:
                raise ArtifactError(f"no objectness/scores child with the stride of {child.name!r}") from None
            fields = [_field(x, quant, feature_axis(x, None, grid)) for x in (child, o, c)]
            self.levels.append(GridLevel(stride, grid[0], grid[1], offset, slice(None), *fields))
            offset += grid[0] * grid[1]

    def _flat(self, meta: ModelMeta, det: Output, quant: Mapping[str, Quant | None]) -> None:
        if len(det.shape) != 3:
            raise ArtifactError(f"YOLOX 'detection' output {det.name!r} has shape {det.shape}, expected [1, N, 5+nc]")
        fax = feature_axis(det)
        n = det.shape[3 - fax]
        h, w = meta.imgsz
        strides = next((s for s in FLAT_STRIDES if sum((h // k) * (w // k) for k in s) == n), None)
        if strides is None:
            raise ArtifactError(f"YOLOX 'detection' output {det.name!r}: {n} rows match no strides "
                                f"{[list(s) for s in FLAT_STRIDES]} at input {[h, w]}")
        act = _activation(det)
        self.activation = act, act
        fields = [_field(det, quant, fax, cols) for cols in (slice(0, 4), slice(4, 5), slice(5, None))]
        offset = 0
        for k in strides:
            gh, gw = h // k, w // k
            self.levels.append(GridLevel((float(k), float(k)), gh, gw, offset, slice(offset, offset + gh * gw), *fields))
            offset += gh * gw

    def candidates(self, outputs: Arrays, conf: float, multi_label: bool) -> Candidates:
        act_obj, act_cls = self.activation
        raw_thr = raw_threshold(conf, act_obj)
        parts = []
        for lv in self.levels:
            obj = lv.obj.rows(outputs)[lv.rows][:, 0]
            # score = obj x cls <= obj: only rows whose objectness passes can score above conf
            thr = lv.obj.quant.threshold_code(raw_thr) if lv.obj.quant is not None else raw_thr - 1e-6
            idx = np.flatnonzero(obj >= np.asarray(thr).reshape(-1)[0])
            if idx.size == 0:
                continue
            p_obj = activate(lv.obj.values(obj[idx]), act_obj)
            p_cls = activate(lv.cls.values(lv.cls.rows(outputs)[lv.rows][idx]), act_cls)
            r, cls, s = select_scores(p_obj[:, None] * p_cls, conf, multi_label)
            if r.size == 0:
                continue
            picked = idx[r]
            t = lv.boxes.values(lv.boxes.rows(outputs)[lv.rows][picked]).astype(np.float32)
            parts.append(Candidates(_boxes(t, picked, lv.width, lv.stride), s.astype(np.float32), cls, picked + lv.offset))
        return Candidates.concat(parts)

    def coefs(self, outputs: Arrays, rows: np.ndarray) -> np.ndarray | None:
        return None


def _activation(out: Output) -> str | None:
    """``sigmoid`` unless the file says it was applied (``activation_applied``) or is not needed."""
    for o in (out, *out.children[:1]):
        if o.activation_required:
            return None if o.activation_required.lower() in ("none", "identity") else o.activation_required.lower()
    if any(o.activation_applied for o in (out, *out.children)):
        return None
    return "sigmoid"


def _field(out: Output, quant: Mapping[str, Quant | None], fax: int, cols: slice = slice(None)) -> Field:
    q = quant.get(out.name, out.quantization)
    return Field(out.name, fax, cols, None if q is None else QParams.from_quant(q, fax, out.name).columns(cols))


def _boxes(t: np.ndarray, rows: np.ndarray, width: int, stride: tuple[float, float]) -> np.ndarray:
    """YOLOX regressions (M, 4) of grid cells ``rows`` -> xyxy input pixels."""
    gy, gx = np.divmod(rows, width)
    sx, sy = stride
    cx = (t[:, 0] + gx) * sx
    cy = (t[:, 1] + gy) * sy
    wh = np.exp(np.minimum(t[:, 2:4], 30.0)) * np.array([sx, sy], np.float32)
    return xywh2xyxy(np.stack([cx, cy, wh[:, 0], wh[:, 1]], axis=1).astype(np.float32))


# ----------------------------------------------------------------------------- sensitivity


def _decoded_errors(ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                    head: HeadSpec) -> Iterable[DecodedError]:
    """obj x class scores, and pixel xywh weighted by the float top score, per level."""
    levels: dict[int, dict[str, Endpoint]] = {}
    for e in head.endpoints:
        if e.scale_index is not None:
            levels.setdefault(e.scale_index, {})[e.kind] = e
    for i, parts in sorted(levels.items()):
        if not {"boxes", "objectness", "scores"} <= set(parts):
            continue
        box, obj, cls = (parts[k].name for k in ("boxes", "objectness", "scores"))
        f64 = lambda x: x[0].astype(np.float64)  # noqa: E731  (C, H, W)
        sf = sigmoid(f64(ref[obj])) * sigmoid(f64(ref[cls]))
        sq = sigmoid(f64(test.get(obj, ref[obj]))) * sigmoid(f64(test.get(cls, ref[cls])))
        yield "scores", float(np.sum((sq - sf) ** 2)), float(np.sum(sf * sf))
        stride = float(head.strides[i])
        bf, bq = (np.concatenate([b[:2] * stride, np.exp(np.minimum(b[2:4], 30.0)) * stride])
                  for b in (f64(ref[box]), f64(test.get(box, ref[box]))))
        w = sf.max(axis=0, keepdims=True)
        yield "boxes", float(np.sum(w * (bq - bf) ** 2)), float(np.sum(w * bf * bf))
