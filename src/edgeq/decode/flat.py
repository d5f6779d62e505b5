"""The flat head layout, which belongs to no family: every anchor's features in N rows.

One ``detection`` tensor ``[1, F, N]`` or ``[1, N, F]`` (the upstream "combined" export), or
separate flat ``boxes``, ``scores``, ``objectness``, ``mask_coefs`` tensors. Features are
``cx, cy, w, h`` (input pixels, or ``[0, 1]`` when ``normalized``), then (``obj_x_class`` only)
objectness, then ``nc`` class scores (already activated unless ``activation_required``), then mask
coefficients, then (pose) keypoint columns ``x0, y0(, v0), x1, ...`` already decoded (input pixels, or
``[0, 1]`` like the boxes; visibility activated). The keypoint layout is ``edgeq.kpt_shape`` (written
for plain Ultralytics pose exports), else, for ``task: pose``, the columns left after the classes
(3 values per keypoint when they divide by 3). Keypoints come out through :meth:`FlatHead.extras`.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edgeq.errors import ArtifactError
from edgeq.decode.fields import (
    QRANGE,
    Arrays,
    Candidates,
    Field,
    activate,
    activation_of,
    candidate_anchors,
    feature_axis,
    make_field,
    num_protos,
    pick,
    quant_of,
    select_scores,
    xywh2xyxy,
)
from edgeq.meta.schema import ModelMeta, Output, Quant


class FlatHead:
    """Flat head: every anchor's boxes, (objectness,) class scores and coefficients in N rows."""

    def __init__(self, meta: ModelMeta, quant: Mapping[str, Quant | None]) -> None:
        in_h, in_w = meta.imgsz
        self.size = np.array([in_w, in_h, in_w, in_h], np.float32)
        protos = meta.output("protos")
        nm = num_protos(protos) if protos is not None else 0
        det = meta.output("detection")
        self.kpt_field: Field | None = None
        self.kpt_shape: tuple[int, int] | None = None
        self.score_format = "per_class"
        self.obj: Field | None = None
        self.obj_activation: str | None = None
        if det is not None:
            self._init_combined(meta, det, nm, quant)
        else:
            self._init_split(meta, quant)
        self.normalized = self._normalized_flag()
        self.has_coefs = self.coef_field is not None

    def _init_combined(self, meta: ModelMeta, det: Output, nm: int, quant: Mapping[str, Quant | None]) -> None:
        if det.children:
            raise ArtifactError(f"'detection' output {det.name!r} with children is not supported")
        self.score_format = det.score_format or ("obj_x_class" if meta.decoder_version == "yolov5" else "per_class")
        n_obj = 1 if self.score_format == "obj_x_class" else 0
        nc = len(meta.labels)
        explicit = _kpt_shape(meta)
        nkf = explicit[0] * explicit[1] if explicit else 0
        fax = feature_axis(det, 4 + n_obj + nc + nm + nkf if nc and (explicit or meta.task != "pose") else None)
        nf = int(det.shape[fax])
        self.kpt_shape = explicit or (_inferred_kpt_shape(nf - 4 - n_obj - nc - nm) if nc and meta.task == "pose" else None)
        nkf = self.kpt_shape[0] * self.kpt_shape[1] if self.kpt_shape else 0
        nc = nc or nf - 4 - n_obj - nm - nkf
        if 4 + n_obj + nc + nm + nkf != nf:
            raise ArtifactError(
                f"output {det.name!r} has {nf} features; expected 4 box + {n_obj} objectness + {nc} classes"
                f" + {nm} mask coefficients + {nkf} keypoint values = {4 + n_obj + nc + nm + nkf}",
                "check the labels and the protos output in the metadata",
            )
        nf_kpt = nf - nkf
        self.kpt_field = make_field(det, quant_of(quant, det), fax, slice(nf_kpt, nf)) if nkf else None
        q = quant_of(quant, det)
        self.det_out = det
        self.boxes = make_field(det, q, fax, slice(0, 4))
        if n_obj:
            self.obj = make_field(det, q, fax, slice(4, 5))
            self.obj_activation = activation_of(det)
        self.scores = make_field(det, q, fax, slice(4 + n_obj, 4 + n_obj + nc))
        self.activation = activation_of(det)
        self.coef_field = make_field(det, q, fax, slice(4 + n_obj + nc, nf_kpt)) if nm else None

    def _init_split(self, meta: ModelMeta, quant: Mapping[str, Quant | None]) -> None:
        boxes, scores = meta.output("boxes"), meta.output("scores")
        if boxes is None or scores is None:
            raise ArtifactError(
                "the metadata has neither a 'detection' output nor 'boxes' + 'scores' outputs",
                "describe the model outputs in edgefirst.json (outputs[])",
            )
        b, s = boxes.physical[0], scores.physical[0]
        self.det_out = boxes
        self.boxes = make_field(b, quant_of(quant, b), feature_axis(b, 4))
        nc = len(meta.labels) or None
        self.scores = make_field(s, quant_of(quant, s), feature_axis(s, nc))
        self.activation = activation_of(scores, s)
        obj = meta.output("objectness")
        if obj is not None:
            o = obj.physical[0]
            self.score_format = "obj_x_class"
            self.obj = make_field(o, quant_of(quant, o), feature_axis(o, 1))
            self.obj_activation = activation_of(obj, o)
        coefs = meta.output("mask_coefs")
        self.coef_field = None
        if coefs is not None:
            c = coefs.physical[0]
            self.coef_field = make_field(c, quant_of(quant, c), feature_axis(c, num_protos(meta.output("protos"))))

    def _normalized_flag(self) -> bool | None:
        flag = self.det_out.normalized
        if flag is None and self.boxes.quant is not None:
            # Infer from the representable range: codes cannot exceed ~1 => normalized boxes.
            q = self.boxes.quant
            lo, hi = QRANGE.get(q.dtype, (-128, 127))
            flag = bool(np.max(q.scale * (hi - q.zero_point)) <= 2.0)
        return flag

    def _obj_x_class(self, outputs: Arrays, conf: float, multi_label: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(anchor, class, obj x cls score) picks of an ``obj_x_class`` head."""
        assert self.obj is not None
        # cls <= 1, so obj > conf is necessary (the YOLOv5 pre-filter).
        orows = self.obj.rows(outputs)
        idx = candidate_anchors(self.obj, orows, conf, self.obj_activation)
        obj = activate(self.obj.values(orows[idx]), self.obj_activation)
        cls = activate(self.scores.values(self.scores.rows(outputs)[idx]), self.activation)
        r, c, s = select_scores(obj * cls, conf, multi_label)
        return idx[r], c, s

    def candidates(self, outputs: Arrays, conf: float, multi_label: bool) -> Candidates:
        if self.obj is not None:
            anchors, cls, s = self._obj_x_class(outputs, conf, multi_label)
        else:
            anchors, cls, s = pick(self.scores, self.scores.rows(outputs), conf, self.activation, multi_label)
        b = self.boxes.values(self.boxes.rows(outputs)[anchors])
        normalized = self.normalized
        if normalized is None:  # float output without a declaration: the HAL's "infer" rule
            normalized = bool(b.size) and float(np.abs(b).max()) <= 2.0
        xyxy = xywh2xyxy(b)
        if normalized:
            xyxy *= self.size
        return Candidates(xyxy, s.astype(np.float32), cls, anchors)

    def coefs(self, outputs: Arrays, rows: np.ndarray) -> np.ndarray | None:
        if self.coef_field is None:
            return None
        return self.coef_field.values(self.coef_field.rows(outputs)[rows])

    def extras(self, outputs: Arrays, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Pose: ``keypoints`` (len(rows), nk, 3) x, y, visibility in input pixels (v 1 when absent)."""
        if self.kpt_field is None or self.kpt_shape is None:
            return {}
        nk, ndim = self.kpt_shape
        vals = self.kpt_field.values(self.kpt_field.rows(outputs)[rows]).reshape(-1, nk, ndim)
        out = np.ones((rows.shape[0], nk, 3), np.float32)
        out[..., :ndim] = vals
        normalized = self.normalized
        if normalized is None:  # the boxes' "infer" rule, on the same rows
            b = self.boxes.values(self.boxes.rows(outputs)[rows])
            normalized = bool(b.size) and float(np.abs(b).max()) <= 2.0
        if normalized:
            out[..., 0] *= self.size[0]
            out[..., 1] *= self.size[1]
        return {"keypoints": out}


def _kpt_shape(meta: ModelMeta) -> tuple[int, int] | None:
    """``edgeq.kpt_shape`` (keypoints, values per keypoint) when the metadata declares it."""
    v = meta.edgeq.get("kpt_shape") if isinstance(meta.edgeq, dict) else None
    if (isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
            and v[0] > 0 and v[1] in (2, 3)):
        return int(v[0]), int(v[1])
    return None


def _inferred_kpt_shape(columns: int) -> tuple[int, int] | None:
    """The keypoint layout of ``columns`` trailing values: x, y, visibility when they divide by 3."""
    if columns <= 0:
        return None
    ndim = 3 if columns % 3 == 0 else 2 if columns % 2 == 0 else 0
    return (columns // ndim, ndim) if ndim else None
