"""Per-scale anchor-based heads (YOLOv5): ``encoding: anchor``, ``score_format: obj_x_class``.

Each level is one tensor ``[1, H, W, na*(5+nc)]`` (NHWC) or ``[1, na*(5+nc), H, W]`` (NCHW) of raw
logits, anchor-major per cell: ``a*(5+nc) + k`` for k = cx, cy, w, h, objectness, classes.
Decoding (YOLOv5 >= v4): ``xy = (2*sig(t_xy) - 0.5 + grid) * stride``,
``wh = (2*sig(t_wh))**2 * anchor`` (anchors in input pixels), score = sig(obj) * sig(cls).
Objectness is thresholded in the integer domain first: since sig(cls) <= 1, sig(obj) > conf is
necessary, so only those rows are ever dequantized.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edgeq.errors import ArtifactError
from edgeq.meta.schema import ModelMeta, Output, Quant
from edgeq.runtime.decode import (
    Arrays,
    Candidates,
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
    name: str
    fax: int
    stride: tuple[float, float]
    height: int
    width: int
    anchors: np.ndarray  # (na, 2) pixels
    offset: int
    quant: QParams | None

    def rows(self, outputs: Arrays) -> np.ndarray:
        """(H*W*na, 5+nc) view, row = (y*W + x)*na + a."""
        arr = np.moveaxis(outputs[self.name], self.fax, -1)[0]
        return arr.reshape(self.height * self.width * len(self.anchors), -1)


def is_anchor_head(meta: ModelMeta) -> bool:
    """True for a logical ``detection`` output with ``encoding: anchor`` and per-level children."""
    det = meta.output("detection")
    return det is not None and (det.encoding or "").lower() == "anchor" and bool(det.children)


class AnchorHead:
    """Decode YOLOv5 per-scale raw outputs; candidates only are dequantized."""

    has_coefs = False

    def __init__(self, meta: ModelMeta, quant: Mapping[str, Quant | None]) -> None:
        det = meta.output("detection")
        assert det is not None
        if not det.anchors or len(det.anchors) != len(det.children):
            raise ArtifactError("anchor-encoded 'detection' output needs one anchors list per child level")
        self.activation = (det.activation_required or "sigmoid").lower()
        # anchors are listed in the same order as the children; decode level by level by stride
        pairs = sorted(zip(det.children, det.anchors), key=lambda p: _stride_of(p[0])[0])
        self.levels: list[AnchorLevel] = []
        offset = 0
        for child, anchors in pairs:
            level = self._level(meta, child, np.asarray(anchors, np.float32), quant.get(child.name, child.quantization), offset)
            self.levels.append(level)
            offset += level.height * level.width * len(level.anchors)

    @staticmethod
    def _level(meta: ModelMeta, child: Output, anchors: np.ndarray, q: Quant | None, offset: int) -> AnchorLevel:
        stride = _stride_of(child)
        grid = (round(meta.imgsz[0] / stride[1]), round(meta.imgsz[1] / stride[0]))
        fax = feature_axis(child, None, grid)
        return AnchorLevel(
            name=child.name,
            fax=fax,
            stride=stride,
            height=grid[0],
            width=grid[1],
            anchors=anchors,
            offset=offset,
            quant=None if q is None else QParams.from_quant(q, fax, child.name),
        )

    def candidates(self, outputs: Arrays, conf: float, multi_label: bool) -> Candidates:
        parts = []
        raw_thr = _raw_threshold(conf, self.activation)
        for lv in self.levels:
            rows = lv.rows(outputs)
            obj = rows[:, 4]
            thr = lv.quant.threshold_code(raw_thr) if lv.quant is not None else raw_thr - 1e-3
            idx = np.flatnonzero(obj >= np.asarray(thr).reshape(-1)[0])
            if idx.size == 0:
                continue
            vals = rows[idx].astype(np.float32) if lv.quant is None else lv.quant.dequantize(rows[idx])
            sig = _activate(vals, self.activation)
            r, cls, s = select_scores(sig[:, 4:5] * sig[:, 5:], conf, multi_label)
            if r.size == 0:
                continue
            picked = idx[r]
            boxes = self._boxes(sig[r, :4], picked, lv)
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
