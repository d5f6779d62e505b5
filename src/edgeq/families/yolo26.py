"""YOLO26 heads (``reg_max`` 1, no DFL): detect and segment, end-to-end (NMS-free) or not.

**The two export forms.** YOLO26's box branch gives 4 ``ltrb`` grid-unit distances directly (no
DFL), its class branch ``nc`` logits, -seg adds 32 mask coefficients per anchor and protos.

* *End-to-end* (``yolo export``'s default, ``end2end: True``; ``models/yolo26n.onnx``): the
  one-to-one head (``one2one_cv2/cv3``) is decoded (dist2bbox, sigmoid) and an in-graph top-k
  picks the detections: TopK(300) over the anchors' best class score, then TopK(300) over those
  anchors' ``300 x nc`` (anchor, class) scores; output ``[1, 300, 6(+nm)]`` rows
  ``x1, y1, x2, y2, score, class(, coefs)``. No NMS anywhere.
* *Not end-to-end* (``end2end=False``; the ``*-u8.4.190`` fixtures): the ONE-TO-MANY head
  (``cv2/cv3``), decoded to ``[1, 4+nc(+nm), 8400]`` (``cx, cy, w, h`` px, sigmoid scores), which
  needs NMS like a YOLOv8 head.

**Discovery** (by structure only, never node names). Walking back from the graph outputs, the
per-scale 4-D tensors ``[1, C, H, W]`` flattened to ``[1, C, H*W]`` and joined across levels by a
Concat on the last axis are the endpoints. Each joined branch is typed by what consumes it: a
Sigmoid (not a SiLU's) -> ``scores``; Slice/Split of 4 channels (dist2bbox) -> ``boxes``; with a
4-D protos output, a branch of the protos' channel count -> ``mask_coefs``. A graph with a DFL
(``arange`` 1x1 Conv) is YOLOv8's; a graph with any other per-scale branch (keypoints, OBB angle)
or without both a box and a class branch is not claimed (None). The form is told apart by the
in-graph top-k: a ``TopK`` whose input depends on the class Sigmoid makes the head end-to-end,
and its ``k`` is the detection count. Only the branch that feeds the graph outputs (the top-k in
the end-to-end form) is ever reached, so a one-to-many branch left in an end-to-end graph is
dropped by the cut.

**Metadata.** Logical ``boxes`` (``encoding: ltrb``, per-scale children), ``scores``
(``per_class``, ``activation_required: sigmoid``), ``mask_coefs``, ``protos``; ``decoder_version``
``yolo26``, which EdgeFirst and HAL read as end-to-end unless ``model.end2end`` is ``false``.

**Decoding.** :class:`TopKHead` does in float on the CPU exactly what the end-to-end graph does
(the two top-k stages, no NMS: the Decoder's ``suppress`` hook); :class:`RowsHead` reads an
end-to-end model's own ``[1, K, 6(+nm)]`` rows (a float ONNX export described by
``edgeq.meta.read``). An artifact whose metadata says ``model.end2end: false`` is decoded with NMS
(:class:`edgeq.families.yolov8.PerScaleHead`), as HAL does.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from edgeq.decode.fields import Arrays, Candidates, feature_axis, make_field, quant_of
from edgeq.errors import ArtifactError
from edgeq.families.base import DecodedError, HeadFamily, sigmoid
from edgeq.families.yolov8 import PerScaleHead, is_per_scale, per_scale_outputs
from edgeq.graph.heads import Endpoint, HeadSpec, is_grid, not_found, sort_endpoints
from edgeq.graph.load import ModelInfo
from edgeq.graph.topology import Topology
from edgeq.meta.build import TensorLike
from edgeq.meta.schema import ModelMeta, Output, Quant

#: detections an end-to-end YOLO26 keeps (Ultralytics ``max_det``; the in-graph TopK's k)
TOPK = 300


@dataclass(frozen=True)
class YOLO26Head(HeadSpec):
    """A YOLO26 head: whether the source graph is end-to-end and its top-k ``k``."""

    end2end: bool = True
    topk: int = TOPK


class YOLO26(HeadFamily):
    """YOLO26 detect/segment: per-scale ltrb boxes, class logits, mask coefficients and protos."""

    name = "yolo26"
    #: the HAL NMS mode, used only when an artifact says ``model.end2end: false`` (the one-to-many
    #: head, validated like ``yolo val``: class-aware, IoU 0.7); HAL bypasses NMS for end-to-end
    #: ``yolo26`` and so does :class:`TopKHead`
    nms = "class_aware"
    iou = 0.7
    #: what a YOLO26 artifact is by default (EdgeFirst: ``validation.nms: none``)
    end2end = True
    validation_nms = "none"

    def discover(self, model: onnx.ModelProto, info: ModelInfo) -> HeadSpec | None:
        return _discover(model, info)

    def outputs(self, head: HeadSpec, tensors: Sequence[TensorLike], layout: str = "nhwc") -> list[Output]:
        return per_scale_outputs(head, tensors, layout)  # ltrb boxes: reg_max 1

    def decodes(self, meta: ModelMeta) -> bool:
        if meta.decoder_version != self.name:
            return False
        if meta.output("detections") is not None:
            return True
        boxes = meta.output("boxes")
        return is_per_scale(meta) and (boxes.encoding or "").lower() in ("ltrb", "direct")

    def decoder(self, meta: ModelMeta, quant: Mapping[str, Quant | None]) -> RowsHead | PerScaleHead:
        if meta.output("detections") is not None:
            return RowsHead(meta, quant)
        if not is_end2end(meta):
            return PerScaleHead(meta, quant)  # the runtime Decoder applies the declared NMS
        return TopKHead(meta, quant)

    def measure_decoded(self, ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                        head: HeadSpec) -> Iterable[DecodedError]:
        return _decoded_errors(ref, test, head)


def is_end2end(meta: ModelMeta) -> bool:
    """Whether ``meta`` describes an end-to-end model: ``yolo26`` unless ``model.end2end`` is false."""
    model = meta.raw.get("model") if isinstance(meta.raw.get("model"), dict) else {}
    return model.get("end2end") is not False


# ----------------------------------------------------------------------------- discovery


def _has_dfl(topo: Topology) -> bool:
    """A DFL's fixed ``arange(reg_max)`` 1x1 Conv (a YOLOv8/11 head, not ours)."""
    for node in topo.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        w = topo.const(node.input[1])
        if w is not None and w.ndim == 4 and w.shape[0] == 1 and w.shape[2:] == (1, 1) and w.shape[1] > 1 \
                and np.allclose(w.reshape(-1), np.arange(w.shape[1])):
            return True
    return False


def _is_silu(topo: Topology, node: onnx.NodeProto) -> bool:
    """A Sigmoid whose output multiplies its own input (SiLU), not a score activation."""
    return any(c.op_type == "Mul" and node.input[0] in c.input for c in topo.consumers.get(node.output[0], []))


def _flattened(topo: Topology, info: ModelInfo) -> list[tuple[str, str]]:
    """(4-D per-scale tensor, its level-joining tensor) for every grid flattened on the way to an output.

    Walks back from every graph output to the Reshapes ``[1, C, H, W] -> [1, C, H*W]``; the
    joining tensor is the Concat (last axis) that takes the flattened levels, or the flattened
    tensor itself when nothing joins it.
    """
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    stack = [o.name for o in topo.graph.output]
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        node = topo.producer.get(t)
        if node is None:
            continue
        if node.op_type == "Reshape" and topo.rank(node.input[0]) == 4 and topo.rank(node.output[0]) != 4:
            x = node.input[0]
            if any(x == f[0] for f in found):
                continue
            shape = topo.shapes.get(x)
            if shape is None or not is_grid(shape, info.imgsz):
                found.append((x, ""))  # a rank change we do not know (e.g. keypoints): not ours
                continue
            joined = node.output[0]
            for c in topo.consumers.get(joined, []):
                axis = next((a.i for a in c.attribute if a.name == "axis"), 0)
                if c.op_type == "Concat" and topo.rank(joined) == 3 and axis in (-1, 2):
                    joined = c.output[0]
                    break
            found.append((x, joined))
            continue
        stack.extend(i for i in node.input if i and i not in topo.constants)
    return found


def _branch_kind(topo: Topology, tensor: str, joined: str, nm: int) -> str | None:
    """boxes | scores | mask_coefs, by what consumes the joined levels; None: a branch we do not know."""
    if not joined:
        return None
    consumers = topo.consumers.get(joined, [])
    ops = {n.op_type for n in consumers}
    channels = topo.shapes[tensor][1]
    if ops and all(n.op_type == "Sigmoid" and not _is_silu(topo, n) for n in consumers):
        return "scores"
    if channels == 4 and ops and ops <= {"Slice", "Split"}:
        return "boxes"  # dist2bbox takes (l, t) and (r, b) apart
    if nm and channels == nm and "Sigmoid" not in ops:
        return "mask_coefs"
    return None


def _protos(topo: Topology, info: ModelInfo) -> list[Endpoint]:
    for out in topo.graph.output:
        shape = topo.shapes.get(out.name)
        if shape and len(shape) == 4 and is_grid(shape, info.imgsz):
            return [Endpoint(out.name, "protos", "protos", shape, info.imgsz[0] // shape[2], None)]
    return []


def _topk(topo: Topology, scores: list[str]) -> int | None:
    """k of the first in-graph TopK that the class scores feed (None: not an end-to-end graph)."""
    joined = set(scores)
    for node in topo.graph.node:
        if node.op_type != "TopK":
            continue
        upstream = {t for n in topo.ancestors([node.input[0]]) for t in n.output}
        if joined & upstream:
            k = topo.const(node.input[1]) if len(node.input) > 1 else None
            return int(k.reshape(-1)[0]) if k is not None and k.size else TOPK
    return None


def _discover(model: onnx.ModelProto, info: ModelInfo) -> HeadSpec | None:
    """The YOLO26 head of a normalized Ultralytics-style graph (None: not a YOLO26 detect/segment graph)."""
    topo = Topology.of(model)
    if _has_dfl(topo):
        return None
    flat = _flattened(topo, info)
    if not flat:
        return None
    protos = _protos(topo, info)
    nm = protos[0].shape[1] if protos else 0
    typed = [(t, j, _branch_kind(topo, t, j, nm)) for t, j in flat]
    kinds = {k for _, _, k in typed}
    if None in kinds or not {"boxes", "scores"} <= kinds:
        return None  # keypoints, angles, a DFL-less head of another kind: another family's
    h_in = info.imgsz[0]
    by_level: dict[int, dict[str, str]] = {}
    for t, _, kind in typed:
        level = by_level.setdefault(topo.shapes[t][2], {})
        if kind in level:
            raise not_found(topo, f"two YOLO26 {kind} tensors at grid {topo.shapes[t][2:]}: {level[kind]!r}, {t!r}")
        level[kind] = t
    wanted = {"boxes", "scores"} | ({"mask_coefs"} if "mask_coefs" in kinds else set())
    endpoints = []
    for idx, h in enumerate(sorted(by_level, reverse=True)):
        missing = wanted - set(by_level[h])
        if missing:
            raise not_found(topo, f"YOLO26 level {idx} (grid {h}) has no {sorted(missing)} tensor")
        for kind in ("boxes", "scores", "mask_coefs"):
            if kind in by_level[h]:
                t = by_level[h][kind]
                endpoints.append(Endpoint(t, kind, f"{kind}_{idx}", topo.shapes[t], h_in // h, idx))
    widths = {e.shape[1] for e in endpoints if e.kind == "scores"}
    if len(widths) != 1:
        raise not_found(topo, f"YOLO26 class tensors have different channel counts {sorted(widths)}")
    nc = widths.pop()
    if info.names and len(info.names) != nc:
        raise not_found(topo, f"class branch has {nc} channels but metadata names {len(info.names)} classes")
    if "mask_coefs" not in kinds:
        protos = []
    k = _topk(topo, [j for _, j, kind in typed if kind == "scores"])
    return YOLO26Head(
        family="yolo26",
        task="segment" if protos else "detect",
        nc=nc,
        reg_max=1,
        strides=tuple(sorted({e.stride for e in endpoints})),
        endpoints=sort_endpoints(endpoints + protos),
        nm=nm if protos else 0,
        end2end=k is not None,
        topk=k or TOPK,
    )


# ----------------------------------------------------------------------------- metadata


# ----------------------------------------------------------------------------- decoding


def topk_select(cand: Candidates, k: int, max_det: int) -> np.ndarray:
    """The end-to-end graph's selection on (anchor, class) candidates, best first.

    Stage 1 keeps the ``k`` anchors with the highest best-class score, stage 2 the ``k`` highest
    (anchor, class) scores among them; then at most ``max_det``. Thresholding first does not change
    the result (both stages rank by score), so ``cand`` may hold only the pairs above ``conf``.
    """
    n = cand.scores.shape[0]
    if n == 0:
        return np.zeros((0,), np.int64)
    anchors, inv = np.unique(cand.rows, return_inverse=True)
    if anchors.size > k:
        best = np.full(anchors.shape, -np.inf, np.float64)
        np.maximum.at(best, inv, cand.scores.astype(np.float64))
        top = np.zeros(anchors.shape, bool)
        top[np.argsort(-best, kind="stable")[:k]] = True
        sel = np.flatnonzero(top[inv])
    else:
        sel = np.arange(n)
    order = sel[np.argsort(-cand.scores[sel], kind="stable")]
    return order[: min(k, max_det)].astype(np.int64)


class TopKHead(PerScaleHead):
    """Per-scale ltrb head of an end-to-end YOLO26: the graph's own top-k in float, no NMS.

    Candidates are every (anchor, class) pair above ``conf`` whatever ``multi_label`` says, because
    the model's second top-k ranks pairs: one anchor may give several classes.
    """

    topk = TOPK

    def candidates(self, outputs: Arrays, conf: float, multi_label: bool) -> Candidates:
        return super().candidates(outputs, conf, True)

    def suppress(self, cand: Candidates, extras: Mapping[str, np.ndarray], iou: float, max_det: int,
                 agnostic: bool) -> np.ndarray:
        return topk_select(cand, self.topk, max_det)


class RowsHead:
    """An end-to-end model's own detections ``[1, K, 6(+nm)]``: ``x1, y1, x2, y2, score, class(, coefs)``.

    Boxes are model-input pixels, or ``[0, 1]`` when the output says ``normalized``. The rows are
    already the model's selection: nothing is suppressed, at most ``max_det`` are kept.
    """

    def __init__(self, meta: ModelMeta, quant: Mapping[str, Quant | None]) -> None:
        out = meta.output("detections")
        if out is None or len(out.shape) != 3:
            raise ArtifactError("end-to-end metadata needs one 3-D 'detections' output [1, K, 6(+nm)]")
        fax = feature_axis(out, None)
        self.field = make_field(out, quant_of(quant, out), fax)
        features = int(out.shape[fax])
        if features < 6:
            raise ArtifactError(f"'detections' output {out.name!r} has {features} features per row, fewer than 6")
        h, w = meta.imgsz
        self.gain = np.array([w, h, w, h], np.float32) if out.normalized else None
        self.has_coefs = features > 6 and meta.output("protos") is not None

    def _rows(self, outputs: Arrays) -> np.ndarray:
        return self.field.values(self.field.rows(outputs))

    def candidates(self, outputs: Arrays, conf: float, multi_label: bool) -> Candidates:
        rows = self._rows(outputs)
        keep = np.flatnonzero(rows[:, 4] > conf)
        boxes = rows[keep, :4].astype(np.float32)
        if self.gain is not None:
            boxes = boxes * self.gain
        classes = np.rint(rows[keep, 5]).astype(np.int64)
        return Candidates(boxes, rows[keep, 4].astype(np.float32), classes, keep.astype(np.int64))

    def suppress(self, cand: Candidates, extras: Mapping[str, np.ndarray], iou: float, max_det: int,
                 agnostic: bool) -> np.ndarray:
        return np.argsort(-cand.scores, kind="stable")[:max_det].astype(np.int64)

    def coefs(self, outputs: Arrays, rows: np.ndarray) -> np.ndarray | None:
        if not self.has_coefs:
            return None
        return np.ascontiguousarray(self._rows(outputs)[rows, 6:], np.float32)


# ----------------------------------------------------------------------------- sensitivity


def _decoded_errors(ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                    head: HeadSpec) -> Iterable[DecodedError]:
    """(kind, noise, signal) per decoded output of one image: sigmoid scores, ltrb distances and
    mask coefficients weighted by each anchor's float top score, protos."""
    weights: dict[int | None, np.ndarray] = {}
    for e in head.of_kind("scores"):
        pf = sigmoid(ref[e.name].astype(np.float64))
        pq = sigmoid(test.get(e.name, ref[e.name]).astype(np.float64))
        weights[e.scale_index] = pf.max(axis=1)[0]
        yield "scores", float(np.sum((pq - pf) ** 2)), float(np.sum(pf * pf))
    for kind in ("boxes", "mask_coefs"):
        for e in head.of_kind(kind):
            f = ref[e.name][0].astype(np.float64)
            q = test.get(e.name, ref[e.name])[0].astype(np.float64)
            w = weights.get(e.scale_index, 1.0)
            yield kind, float(np.sum(w * (q - f) ** 2)), float(np.sum(w * f * f))
    for e in head.of_kind("protos"):
        f = ref[e.name].astype(np.float64)
        q = test.get(e.name, ref[e.name]).astype(np.float64)
        yield "protos", float(np.sum((q - f) ** 2)), float(np.sum(f * f))


__all__ = ["RowsHead", "TOPK", "TopKHead", "YOLO26", "YOLO26Head", "is_end2end", "topk_select"]
