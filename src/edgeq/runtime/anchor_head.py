"""Per-scale anchor-based heads (YOLOv5): ``encoding: anchor``, ``score_format: obj_x_class``.

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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeq.errors import ArtifactError
from edgeq.meta.schema import ModelMeta, Output, Quant
from edgeq.runtime.decode import (
    Arrays,
    Candidates,
    Field,
    QParams,
    _activate,
    _raw_threshold,
    _stride_of,
    feature_axis,
    select_scores,
    xywh2xyxy,
)


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
                "obj": {_stride_of(c): c for c in obj.children},
                "cls": {_stride_of(c): c for c in cls.children},
            }
        self.activation = (main.activation_required or "sigmoid").lower()
        # anchors are listed in the same order as the children; decode level by level by stride
        pairs = sorted(zip(main.children, per_level), key=lambda p: _stride_of(p[0])[0])
        self.levels: list[AnchorLevel] = []
        offset = 0
        for child, anchors in pairs:
            anchors = np.asarray(anchors, np.float32)
            stride = _stride_of(child)
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
        raw_thr = _raw_threshold(conf, self.activation)
        for lv in self.levels:
            obj = lv.obj.rows(outputs)[:, 0]
            thr = lv.obj.quant.threshold_code(raw_thr) if lv.obj.quant is not None else raw_thr - 1e-3
            idx = np.flatnonzero(obj >= np.asarray(thr).reshape(-1)[0])
            if idx.size == 0:
                continue
            sig_obj = _activate(lv.obj.values(obj[idx]), self.activation)
            sig_cls = _activate(lv.cls.values(lv.cls.rows(outputs)[idx]), self.activation)
            r, cls, s = select_scores(sig_obj[:, None] * sig_cls, conf, multi_label)
            if r.size == 0:
                continue
            picked = idx[r]
            sig_box = _activate(lv.boxes.values(lv.boxes.rows(outputs)[picked]), self.activation)
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
