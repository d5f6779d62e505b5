"""Greedy non-maximum suppression, exact and vectorised.

Semantics are those of ``torchvision.ops.nms`` as Ultralytics uses it: candidates are visited in
descending score order; one is kept unless its IoU (``inter / (area_a + area_b - inter)``, no +1)
with an already kept box *of the same class* (class-aware) or of any class (agnostic) is
``> iou``. At most ``max_det`` boxes are returned, best first.

Why chunks: a greedy decision for a candidate depends only on higher-scored candidates, so the
sorted list can be processed in blocks of ``CHUNK``: each block is first suppressed by the boxes
kept so far (one matrix), then resolved internally with its own IoU matrix, and we stop as soon
as ``max_det`` boxes are kept. The result is exactly the full greedy result truncated to
``max_det``; Python-level work is proportional to the number of *kept* boxes. Class-aware NMS runs
this per class. ``cv2.dnn.NMSBoxes`` is equally exact but cannot stop at ``max_det`` and compares
every candidate with every kept box, which is orders of magnitude slower at conf 0.001 (see
``tests/test_runtime_nms.py``); :func:`nms_cv2` is kept as a cross-check.
"""
from __future__ import annotations

import numpy as np

CHUNK = 512


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes ``a`` (N, 4) and ``b`` (M, 4) -> (N, M) float32."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    # In-place arithmetic: this matrix is the hot spot of NMS at low confidence thresholds.
    iw = np.minimum(a[:, None, 2], b[None, :, 2])
    iw -= np.maximum(a[:, None, 0], b[None, :, 0])
    np.maximum(iw, 0, out=iw)
    ih = np.minimum(a[:, None, 3], b[None, :, 3])
    ih -= np.maximum(a[:, None, 1], b[None, :, 1])
    np.maximum(ih, 0, out=ih)
    iw *= ih  # intersection
    union = area_a[:, None] + area_b[None, :]
    union -= iw
    # Degenerate (zero-area) pairs have union 0 and intersection 0: define their IoU as 0.
    return np.divide(iw, union, out=np.zeros_like(iw), where=union > 0)


def _resolve_chunk(hit: np.ndarray, alive: np.ndarray, budget: int) -> list[int]:
    """Greedy pass over one chunk given its internal overlap matrix; returns kept local indices."""
    kept: list[int] = []
    survivors = np.flatnonzero(alive)
    while survivors.size and len(kept) < budget:
        i = int(survivors[0])
        kept.append(i)
        # Later survivors that overlap i are suppressed (earlier ones are already decided).
        rest = survivors[1:]
        survivors = rest[~hit[i, rest]]
    return kept


def _greedy(boxes: np.ndarray, iou: float, budget: int) -> np.ndarray:
    """Class-agnostic greedy NMS of boxes already sorted by descending score (local indices)."""
    n = boxes.shape[0]
    kept_parts: list[np.ndarray] = []
    kept_boxes = boxes[:0]
    for start in range(0, n, CHUNK):
        cb = boxes[start : start + CHUNK]
        alive = np.ones(cb.shape[0], bool)
        if kept_boxes.shape[0]:
            alive &= ~(box_iou(cb, kept_boxes) > iou).any(axis=1)
        if not alive.any():
            continue
        idx = np.asarray(_resolve_chunk(box_iou(cb, cb) > iou, alive, budget - kept_boxes.shape[0]), np.int64)
        kept_parts.append(idx + start)
        kept_boxes = np.concatenate([kept_boxes, cb[idx]])
        if kept_boxes.shape[0] >= budget:
            break
    return np.concatenate(kept_parts) if kept_parts else np.zeros((0,), np.int64)


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou: float,
    max_det: int = 300,
    class_ids: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy NMS; returns indices into ``boxes`` of the kept boxes, best score first.

    Class-aware NMS runs independently per class (suppression never crosses classes, so this is
    exactly the global greedy result) and merges by score; it avoids the all-pairs matrix.

    Args:
        boxes: (N, 4) xyxy boxes (any consistent unit).
        scores: (N,) scores; higher is better.
        iou: suppress a box whose IoU with a kept box is greater than this.
        max_det: keep at most this many boxes.
        class_ids: (N,) class of each box for class-aware NMS; ``None`` for class-agnostic.
    """
    if scores.shape[0] == 0 or max_det <= 0:
        return np.zeros((0,), np.int64)
    order = np.argsort(-scores, kind="stable")
    sorted_boxes = np.asarray(boxes, np.float32)[order]
    if class_ids is None:
        return order[_greedy(sorted_boxes, iou, max_det)]
    cls = np.asarray(class_ids)[order]
    by_class = np.argsort(cls, kind="stable")  # score order is kept inside each class
    bounds = np.flatnonzero(np.diff(cls[by_class])) + 1
    kept = [g[_greedy(sorted_boxes[g], iou, max_det)] for g in np.split(by_class, bounds)]
    # Positions in the score-sorted list: ascending position == descending score (ties stable).
    positions = np.sort(np.concatenate(kept))[:max_det]
    return order[positions]


def nms_cv2(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou: float,
    max_det: int = 300,
    class_ids: np.ndarray | None = None,
) -> np.ndarray:
    """The same contract as :func:`nms` via ``cv2.dnn.NMSBoxes[Batched]`` (kept for comparison)."""
    import cv2

    if scores.shape[0] == 0:
        return np.zeros((0,), np.int64)
    xywh = np.asarray(boxes, np.float64).copy()
    xywh[:, 2:] -= xywh[:, :2]
    s = np.asarray(scores, np.float32)
    if class_ids is None:
        keep = cv2.dnn.NMSBoxes(xywh, s, 0.0, float(iou))
    else:
        keep = cv2.dnn.NMSBoxesBatched(xywh, s, np.asarray(class_ids, np.int32), 0.0, float(iou))
    return np.asarray(keep, np.int64).reshape(-1)[:max_det]
