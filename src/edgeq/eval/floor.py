"""Resolution of a validation set: how far mAP moves when detections change imperceptibly.

COCO mAP on a few dozen or a few hundred images is a step function of the detections: the order
of two near-tied scores decides which one a ground-truth box is matched to, a box a hair off
crosses an IoU threshold, the single instance of a rare class is matched or missed. Perturbations
far below any quantization error already flip some of them. Re-scoring a model's own detections
with every score and box edge off by a relative :data:`JITTER` (one part in a thousand: coarser
than float16 rounding, far finer than int8) and comparing each run with the clean one measures
the smallest mAP difference the set can show. A conversion whose delta lies within that spread is
indistinguishable from its baseline on this set.

This complements :mod:`edgeq.eval.bootstrap`, which resamples the *images* with the detections
fixed and so cannot see the flips. On coco-val-dev (69 images) YOLOv8n's float detections
jittered this way moved box mAP50-95 by -0.37 to +0.05 points over eight runs (with only the
scores jittered, six of eight runs read -0.35: a single near-tie); int16 activations everywhere, 45-60 dB from float at the outputs, measured
-0.52 there and -0.05 on the 443-image person set.

The jitter works on the detections kept by ``validate(..., keep_matches=True)``: no model runs
again, each run costs one COCOeval (a few seconds).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeq.eval.coco import evaluate_coco
from edgeq.eval.dataset import load_coco_json
from edgeq.eval.result import ValidationResult

#: Relative perturbation of each score and of each box edge (as a fraction of the box's size).
JITTER = 1e-3
#: Jittered runs per floor.
RUNS = 8


@dataclass(frozen=True)
class PerturbationFloor:
    """mAP50-95 deltas of jittered runs of one result against the result itself.

    Attributes:
        model: the model whose detections were jittered.
        jitter: relative perturbation of scores and box edges.
        deltas: iou type -> one delta (fraction, jittered - clean) per run.
    """

    model: str
    jitter: float
    deltas: dict[str, list[float]]

    def bound(self, iou_type: str = "bbox") -> float:
        """The largest |delta| of any run: differences below it are within the set's resolution."""
        return max((abs(d) for d in self.deltas.get(iou_type, [])), default=0.0)

    def describe(self, iou_type: str = "bbox") -> str:
        """One line in points, e.g. ``bbox -0.57 .. +0.06``."""
        d = self.deltas.get(iou_type, [])
        return f"{iou_type} {100 * min(d):+.2f} .. {100 * max(d):+.2f}" if d else f"{iou_type} –"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (deltas as fractions, bound per iou type)."""
        return {"model": self.model, "jitter": self.jitter, "deltas": self.deltas,
                "bound": {t: self.bound(t) for t in self.deltas}}


def jitter_detections(results: Sequence[Mapping[str, Any]], rng: np.random.Generator, jitter: float = JITTER) -> list[dict[str, Any]]:
    """COCO results with each score scaled by ``1 + e`` and each box edge moved by ``e`` times the
    box's width or height, ``e ~ N(0, jitter)`` independently (masks are left as they are)."""
    if not results:
        return []
    boxes = np.array([r["bbox"] for r in results], np.float64)  # x, y, w, h
    scores = np.array([r["score"] for r in results], np.float64)
    e = rng.normal(0.0, jitter, (len(results), 5))
    size = np.concatenate([boxes[:, 2:], boxes[:, 2:]], axis=1)
    xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1) + e[:, :4] * size
    xywh = np.concatenate([xyxy[:, :2], np.maximum(xyxy[:, 2:] - xyxy[:, :2], 0.0)], axis=1)
    new_scores = np.clip(scores * (1.0 + e[:, 4]), 0.0, 1.0)
    return [{**r, "bbox": [float(v) for v in b], "score": float(s)} for r, b, s in zip(results, xywh, new_scores)]


def perturbation_floor(result: ValidationResult, runs: int = RUNS, jitter: float = JITTER, seed: int = 0) -> PerturbationFloor:
    """Re-evaluate ``result``'s detections ``runs`` times with a tiny random jitter; the mAP deltas.

    Args:
        result: from ``validate(..., keep_matches=True)`` (it keeps the detections and image ids).
        runs: jittered runs (seeds ``seed`` .. ``seed + runs - 1``).
        jitter: relative perturbation of scores and box edges.
        seed: first seed.

    Raises:
        ValueError: the result kept no detections, or ``runs`` < 1.
    """
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    if not result.matches:
        raise ValueError(f"{result.model}: no detections kept; validate with keep_matches=True")
    gt = load_coco_json(result.dataset)
    image_ids = next(iter(result.matches.values())).image_ids
    backend = result.settings.get("backend", "auto")
    deltas: dict[str, list[float]] = {t: [] for t in result.metrics}
    for k in range(runs):
        jittered = jitter_detections(result.coco_results, np.random.default_rng(seed + k), jitter)
        metrics, _, _ = evaluate_coco(gt, jittered, image_ids, list(deltas), backend)
        for t, runs_of_t in deltas.items():
            runs_of_t.append(float((metrics[t]["mAP50-95"] or 0.0) - (result.metric("mAP50-95", t) or 0.0)))
    return PerturbationFloor(result.model, jitter, deltas)


def floor_note(floor: PerturbationFloor, deltas: Mapping[str, float | None] | None = None) -> str:
    """Plain words: the spread imperceptible changes of the baseline's detections cause, and
    whether each of ``deltas`` (iou type -> mAP50-95 delta, fraction) lies inside it."""
    runs = len(next(iter(floor.deltas.values()), []))
    parts = []
    for t in floor.deltas:
        d = (deltas or {}).get(t)
        lo, hi = min(floor.deltas[t]), max(floor.deltas[t])
        verdict = "" if d is None else (": the Δ is inside it" if lo <= d <= hi else ": the Δ is outside it")
        parts.append(f"{floor.describe(t)}{verdict}")
    return (f"resolution of this set: jittering {floor.model}'s scores and boxes by {floor.jitter:g} (relative) "
            f"moves mAP50-95 by {'; '.join(parts)} (points, {runs} runs)")


__all__ = ["JITTER", "RUNS", "PerturbationFloor", "floor_note", "jitter_detections", "perturbation_floor"]
