"""How sure is a mAP difference? A paired bootstrap over images.

Two models validated on the same images differ by a mAP delta, but a small set decides it with a
few boxes: on the 69 images of coco-val-dev a model whose outputs match float to 60 dB still moves
by half a point. Resampling the images (with replacement, the same resample for both models)
and recomputing both mAPs gives the spread of the delta that the choice of images alone causes;
its 2.5 and 97.5 percentiles bound the delta at 95 %.

Recomputing COCO mAP a thousand times is cheap because COCOeval's matching is per image: one
``evaluate()`` (pycocotools, the reference implementation) gives, per category and image, each
detection's score and whether it is a true positive at each IoU threshold. A resample is then
image weights (how often each image was drawn), and COCO's ``accumulate()`` over weighted
detections: precision/recall curves by cumulative weighted sums, the precision envelope, 101
recall points, the mean over IoU thresholds and categories. With unit weights it reproduces
COCOeval's mAP50-95 exactly.
"""
from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Resamples drawn by :func:`paired_bootstrap`.
ITERATIONS = 1000
#: COCO's recall points (0, 0.01, ..., 1).
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class CategoryMatches:
    """One category's detections over all images, sorted by score (COCOeval's order).

    Attributes:
        image: index of each detection's image (into :attr:`MatchTable.image_ids`).
        tp: ``[T, D]`` true positive at each IoU threshold (matched, not ignored).
        fp: ``[T, D]`` false positive (unmatched, not ignored).
        gt: non-ignored ground truths per image ``[I]``.
    """

    image: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    gt: np.ndarray


@dataclass(frozen=True)
class MatchTable:
    """Per-image COCO matching of one model on one set, for one iou type (``bbox``/``segm``)."""

    iou_type: str
    image_ids: tuple[int, ...]
    categories: tuple[CategoryMatches, ...]


def match_table(gt_data: Mapping[str, Any], results: Sequence[Mapping[str, Any]], image_ids: Sequence[int],
                iou_type: str = "bbox") -> MatchTable:
    """Run COCOeval's per-image matching (area ``all``, 100 detections) and keep what mAP needs.

    Args:
        gt_data: the COCO instances json, as a dict.
        results: detections in COCO results format.
        image_ids: the evaluated images, in order.
        iou_type: ``bbox`` or ``segm``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ids = [int(i) for i in image_ids]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(dict(gt_data))  # COCO adds fields (and an earlier eval may have left RLE bytes)
        gt.createIndex()
        dt = gt.loadRes(copy.deepcopy(list(results))) if results else None
        if dt is None:
            return MatchTable(iou_type, tuple(ids), ())
        ev = COCOeval(gt, dt, iou_type)
        ev.params.imgIds = ids
        ev.evaluate()
    n_img, n_area = len(ids), len(ev.params.areaRng)
    max_det = ev.params.maxDets[-1]
    cats = []
    for k in range(len(ev.params.catIds)):
        per_image = ev.evalImgs[k * n_area * n_img: k * n_area * n_img + n_img]  # area "all" comes first
        cats.append(_category(per_image, len(ev.params.iouThrs), max_det))
    return MatchTable(iou_type, tuple(ids), tuple(cats))


def _category(per_image: Sequence[dict[str, Any] | None], thresholds: int, max_det: int) -> CategoryMatches:
    gt = np.array([0 if e is None else int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)) for e in per_image])
    scores, image, matched, ignored = [], [], [], []
    for i, e in enumerate(per_image):
        if e is None or not len(e["dtScores"]):
            continue
        scores.append(np.asarray(e["dtScores"][:max_det], float))
        image.append(np.full(len(scores[-1]), i))
        matched.append(np.asarray(e["dtMatches"])[:, :max_det] > 0)
        ignored.append(np.asarray(e["dtIgnore"])[:, :max_det].astype(bool))
    if not scores:
        empty = np.zeros((thresholds, 0), bool)
        return CategoryMatches(np.zeros(0, int), empty, empty, gt)
    order = np.argsort(-np.concatenate(scores), kind="mergesort")  # as COCOeval.accumulate
    m, ig = np.concatenate(matched, axis=1)[:, order], np.concatenate(ignored, axis=1)[:, order]
    return CategoryMatches(np.concatenate(image)[order], m & ~ig, ~m & ~ig, gt)


def _category_ap(c: CategoryMatches, weights: np.ndarray) -> float | None:
    """Mean over IoU thresholds of the 101-point interpolated AP; None without ground truth."""
    n_gt = float(weights @ c.gt)
    if n_gt <= 0:
        return None
    if c.tp.shape[1] == 0:
        return 0.0
    w = weights[c.image]
    tp, fp = np.cumsum(c.tp * w, axis=1), np.cumsum(c.fp * w, axis=1)
    recall = tp / n_gt
    precision = tp / (tp + fp + np.spacing(1))  # as COCOeval
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    aps = []
    for rc, pr in zip(recall, envelope):
        at = np.searchsorted(rc, RECALL_POINTS, side="left")
        aps.append(np.where(at < len(pr), pr[np.minimum(at, len(pr) - 1)], 0.0).mean())
    return float(np.mean(aps))


def average_precision(table: MatchTable, weights: np.ndarray | None = None) -> float:
    """mAP50-95 of ``table`` with each image counted ``weights[i]`` times (default: once).

    Exactly COCOeval's arithmetic, one category at a time (see :class:`_Stacked` for the fast one).
    """
    w = np.ones(len(table.image_ids)) if weights is None else np.asarray(weights, float)
    aps = [ap for c in table.categories if (ap := _category_ap(c, w)) is not None]
    return float(np.mean(aps)) if aps else 0.0


class _Stacked:
    """Every category of a table in one array, so a resample's mAP is a few vectorised passes.

    Each category is a segment along the detection axis. Segmented running sums come from one
    cumulative sum minus its value at each segment start (exact: the weights are counts).
    The precision envelope and the recall search run on values shifted by twice the segment's
    index (precision and recall lie in [0, 1]), so one running maximum and one sorted search
    cover every segment; the shift rounds the last bits (~1e-14), which moves a resampled mAP by
    ~1e-6 at most, far inside any interval it feeds.
    """

    def __init__(self, table: MatchTable) -> None:
        cats = list(table.categories)
        k = len(cats)
        self.gt = np.stack([c.gt for c in cats], axis=1).astype(np.float32) if cats else np.zeros((len(table.image_ids), 0), np.float32)
        self.sizes = np.array([c.tp.shape[1] for c in cats], int)
        self.image = np.concatenate([c.image for c in cats]) if cats else np.zeros(0, int)
        self.tp = np.concatenate([c.tp for c in cats], axis=1).astype(np.float32) if cats else np.zeros((0, 0), np.float32)
        self.fp = np.concatenate([c.fp for c in cats], axis=1).astype(np.float32) if cats else np.zeros((0, 0), np.float32)
        self.segment = np.repeat(np.arange(k), self.sizes)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(int)
        t, d = self.tp.shape
        # reversed, the segments come last-first: lifting each above the ones before restarts the max
        self.lift = (2.0 * (k - 1 - self.segment)).astype(np.float64)
        rows = np.arange(t)[:, None]
        self.key_shift = 2.0 * (rows * k + self.segment[None, :])
        self.points = (2.0 * np.arange(t * k)[:, None] + RECALL_POINTS[None, :]).ravel()
        self.ends = (rows * d + self.starts[None, :] + self.sizes[None, :])[..., None]

    def _segment_cumsum(self, x: np.ndarray) -> np.ndarray:
        c = np.cumsum(x, axis=1, dtype=np.float64)  # counts: exact
        before = np.concatenate([np.zeros((len(x), 1)), c], axis=1)[:, self.starts]
        return c - np.repeat(before, self.sizes, axis=1)

    def mean_ap(self, weights: np.ndarray) -> float:
        """mAP50-95 with image weights (within ~1e-6 of :func:`average_precision`)."""
        n_gt = weights.astype(np.float32) @ self.gt  # [K]
        if not np.any(n_gt > 0) or not self.tp.size:
            return 0.0
        w = weights.astype(np.float32)[self.image]
        tp, fp = self._segment_cumsum(self.tp * w), self._segment_cumsum(self.fp * w)
        per_det = np.repeat(n_gt, self.sizes)
        recall = np.divide(tp, per_det, out=np.zeros_like(tp), where=per_det > 0)  # no ground truth: unused
        precision = tp / (tp + fp + np.spacing(1))
        envelope = np.maximum.accumulate((precision + self.lift)[:, ::-1], axis=1)[:, ::-1] - self.lift
        t = len(tp)
        at = np.searchsorted((recall + self.key_shift).ravel(), self.points, side="left").reshape(t, len(self.sizes), -1)
        q = np.where(at < self.ends, envelope.ravel()[np.minimum(at, envelope.size - 1)], 0.0)
        return float(q.mean(axis=(0, 2))[n_gt > 0].mean())


@dataclass(frozen=True)
class DeltaInterval:
    """A mAP50-95 delta ``b - a`` and its bootstrap interval over the images.

    Attributes:
        delta: on the images as given.
        low, high: percentiles ``(1 - level) / 2`` and ``(1 + level) / 2`` of the resampled deltas.
        level: coverage (0.95).
        iterations: resamples drawn.
    """

    delta: float
    low: float
    high: float
    level: float
    iterations: int

    def __str__(self) -> str:
        return f"{self.delta * 100:+.2f} [{self.low * 100:+.2f}, {self.high * 100:+.2f}]"

    def to_json(self) -> dict[str, Any]:
        return {"delta": self.delta, "low": self.low, "high": self.high, "level": self.level, "iterations": self.iterations}


def paired_bootstrap(a: MatchTable, b: MatchTable, iterations: int = ITERATIONS, level: float = 0.95,
                     seed: int = 0) -> DeltaInterval:
    """Bootstrap interval of ``mAP(b) - mAP(a)``, both recomputed on the same image resamples.

    Raises:
        ValueError: the tables do not cover the same images or iou type.
    """
    if a.image_ids != b.image_ids or a.iou_type != b.iou_type:
        raise ValueError("a paired bootstrap needs both models evaluated on the same images and iou type")
    n = len(a.image_ids)
    rng = np.random.default_rng(seed)
    fast_a, fast_b = _Stacked(a), _Stacked(b)
    deltas = np.empty(iterations)
    for i in range(iterations):
        w = rng.multinomial(n, np.full(n, 1.0 / n)).astype(float)
        deltas[i] = fast_b.mean_ap(w) - fast_a.mean_ap(w)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(deltas, [tail, 1.0 - tail])
    return DeltaInterval(average_precision(b) - average_precision(a), float(low), float(high), level, iterations)


__all__ = ["MatchTable", "CategoryMatches", "DeltaInterval", "match_table", "average_precision", "paired_bootstrap"]
