"""Greedy non-maximum suppression, exact and vectorised.

Semantics are those of ``torchvision.ops.nms`` as Ultralytics uses it: candidates are visited in
descending score order; one is kept unless its IoU (``inter / (area_a + area_b - inter)``, no +1)
with an already kept box *of the same class* (class-aware) or of any class (agnostic) is
``> iou``. At most ``max_det`` boxes are returned, best first.

Two exact implementations; :func:`nms` picks one:

* **Near pairs** (the usual case). ``IoU > t`` needs the left edges within ``(1-t)/t`` of either
  box's width, so one sort by (class, x1) and a window search list every pair that can overlap
  enough, across all classes at once; their IoUs are one vector op. Greedy keeps box j unless a
  kept, higher-scored box hits it; iterating ``keep = not any(keep[i] for hitters i)`` from
  "all kept" fixes every box whose longest chain of hitters is shorter than the round number, so
  it reaches the greedy result exactly, typically in 3-7 rounds. No Python loop over classes
  or kept boxes, which is what dominated class-aware NMS of a few hundred candidates.
* **Chunked** (many candidates, dense overlaps, or ``iou <= 0``). A greedy decision for a
  candidate depends only on higher-scored candidates, so the sorted list is processed in blocks
  of ``CHUNK``: each block is first suppressed by the boxes kept so far (one matrix), then
  resolved internally with its own IoU matrix, stopping as soon as ``max_det`` boxes are kept.
  Python-level work is proportional to the number of *kept* boxes; class-aware runs per class.

``cv2.dnn.NMSBoxes`` is equally exact but cannot stop at ``max_det`` and compares every
candidate with every kept box, which is orders of magnitude slower at conf 0.001 (see
``tests/test_runtime_nms.py``); :func:`nms_cv2` is kept as a cross-check.
"""
from __future__ import annotations

import numpy as np

CHUNK = 512
# Near-pair budget: beyond it (dense clusters, huge candidate sets) the chunked greedy, which can
# stop at max_det, is cheaper and needs far less memory.
PAIR_BUDGET = 1_000_000
# Fixed-point rounds before giving up on near pairs (a pathological chain of hitters).
MAX_ROUNDS = 64


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


def _pair_iou(boxes: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """IoU of the pairs (boxes[i], boxes[j]): the same float32 operations as :func:`box_iou`."""
    a, b = boxes[i], boxes[j]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    iw = np.minimum(a[:, 2], b[:, 2])
    iw -= np.maximum(a[:, 0], b[:, 0])
    np.maximum(iw, 0, out=iw)
    ih = np.minimum(a[:, 3], b[:, 3])
    ih -= np.maximum(a[:, 1], b[:, 1])
    np.maximum(ih, 0, out=ih)
    iw *= ih
    union = area[i] + area[j]
    union -= iw
    return np.divide(iw, union, out=np.zeros_like(iw), where=union > 0)


def _near_pairs(
    boxes: np.ndarray, class_ids: np.ndarray | None, iou: float, budget: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Every (i, j) pair of the same class whose IoU may exceed ``iou`` (a superset), or None.

    For x-extents a, b with left edges d apart: IoU <= 1 - d / max(w) and IoU <= min(w) / max(w),
    so IoU > t implies d < (1 - t) / t * w for both widths. A sort by (class, x1) turns that into
    one window per box. None when ``iou <= 0`` (no bound) or the pairs would exceed ``budget``.
    """
    if not iou > 0:
        return None
    n = boxes.shape[0]
    x1 = boxes[:, 0].astype(np.float64)
    # Widened a little: a prefilter must not lose a pair to rounding; exact IoU follows.
    win = (boxes[:, 2] - boxes[:, 0]).astype(np.float64) * ((1 - iou) / iou * (1 + 1e-6)) + 1e-6
    x1 -= x1.min()
    if class_ids is not None:
        # Classes side by side on one axis, far enough apart that no window crosses a class.
        span = x1.max() + 2 * max(float(win.max()), 0.0) + 1
        x1 += np.asarray(class_ids, np.float64) * span
    order = np.argsort(x1, kind="stable")
    keys = x1[order]
    lo = np.searchsorted(keys, x1 - win, "left")
    count = np.maximum(np.searchsorted(keys, x1 + win, "right") - lo, 0)
    total = int(count.sum())
    if total > budget:
        return None
    # Expand the windows: box k pairs with keys[lo[k] : lo[k] + count[k]].
    first = np.repeat(np.arange(n), count)
    pos = np.arange(total) - np.repeat(np.cumsum(count) - count - lo, count)
    return first, order[pos]


def _nms_pairs(
    boxes: np.ndarray, scores: np.ndarray, iou: float, max_det: int, pairs: tuple[np.ndarray, np.ndarray]
) -> np.ndarray | None:
    """Greedy NMS from the near pairs by fixed-point rounds; None if it does not settle in time."""
    n = scores.shape[0]
    order = np.argsort(-scores, kind="stable")  # the greedy visiting order
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    i, j = pairs
    forward = rank[i] < rank[j]  # i is visited before j (also drops i == j)
    i, j = i[forward], j[forward]
    hit = _pair_iou(boxes, i, j) > iou
    hitter, hit_box = i[hit], j[hit]
    keep = np.ones(n, bool)
    for _ in range(MAX_ROUNDS):
        suppressed = np.zeros(n, bool)
        suppressed[hit_box[keep[hitter]]] = True
        if np.array_equal(suppressed, ~keep):
            kept = np.flatnonzero(keep)
            return kept[np.argsort(-scores[kept], kind="stable")][:max_det]
        keep = ~suppressed
    return None


def _nms_chunked(
    boxes: np.ndarray, scores: np.ndarray, iou: float, max_det: int, class_ids: np.ndarray | None
) -> np.ndarray:
    """Greedy NMS in score-sorted chunks (per class when class-aware); stops at ``max_det``."""
    order = np.argsort(-scores, kind="stable")
    sorted_boxes = boxes[order]
    if class_ids is None:
        return order[_greedy(sorted_boxes, iou, max_det)]
    cls = np.asarray(class_ids)[order]
    by_class = np.argsort(cls, kind="stable")  # score order is kept inside each class
    bounds = np.flatnonzero(np.diff(cls[by_class])) + 1
    kept = [g[_greedy(sorted_boxes[g], iou, max_det)] for g in np.split(by_class, bounds)]
    # Positions in the score-sorted list: ascending position == descending score (ties stable).
    positions = np.sort(np.concatenate(kept))[:max_det]
    return order[positions]


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou: float,
    max_det: int = 300,
    class_ids: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy NMS; returns indices into ``boxes`` of the kept boxes, best score first.

    Class-aware NMS never suppresses across classes, which both implementations exploit (near
    pairs never pair two classes; the chunked fallback runs per class). Ties in score are
    visited in index order.

    Args:
        boxes: (N, 4) xyxy boxes (any consistent unit).
        scores: (N,) scores; higher is better.
        iou: suppress a box whose IoU with a kept box is greater than this.
        max_det: keep at most this many boxes.
        class_ids: (N,) class of each box for class-aware NMS; ``None`` for class-agnostic.
    """
    if scores.shape[0] == 0 or max_det <= 0:
        return np.zeros((0,), np.int64)
    boxes = np.asarray(boxes, np.float32)
    pairs = _near_pairs(boxes, class_ids, iou, PAIR_BUDGET)
    kept = _nms_pairs(boxes, scores, iou, max_det, pairs) if pairs is not None else None
    return kept if kept is not None else _nms_chunked(boxes, scores, iou, max_det, class_ids)


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
