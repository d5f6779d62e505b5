"""Typed validation results, serialisable to and from JSON."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

# Metric names in the order COCOeval's summary gives them (stats[0..11]).
METRIC_KEYS: tuple[str, ...] = (
    "mAP50-95", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large",
    "AR1", "AR10", "recall", "AR_small", "AR_medium", "AR_large",
)  # fmt: skip
# COCOeval's keypoint summary (stats[0..9]: OKS AP, AP50, AP75, AP medium/large, AR at 20
# detections, AR50, AR75, AR medium/large), named like the box metrics where they mean the same.
KEYPOINT_METRIC_KEYS: tuple[str, ...] = (
    "mAP50-95", "mAP50", "mAP75", "mAP_medium", "mAP_large",
    "recall", "AR50", "AR75", "AR_medium", "AR_large",
)  # fmt: skip


def metric_keys(iou_type: str) -> tuple[str, ...]:
    """The names of COCOeval's summary stats for ``iou_type`` (bbox, segm, keypoints)."""
    return KEYPOINT_METRIC_KEYS if iou_type == "keypoints" else METRIC_KEYS


# The metrics worth a line in a summary; the rest stay in the JSON.
HEADLINE_KEYS: tuple[str, ...] = ("mAP50-95", "mAP50", "mAP75", "recall")


@dataclass
class ClassAP:
    """Average precision of one category.

    Attributes:
        name: category name from the dataset.
        category_id: dataset category id.
        instances: non-crowd ground-truth instances in the evaluated images.
        ap50_95: AP averaged over IoU 0.50:0.95, None when the category has no ground truth.
        ap50: AP at IoU 0.50.
    """

    name: str
    category_id: int
    instances: int
    ap50_95: float | None
    ap50: float | None


@dataclass
class ValidationResult:
    """What ``edgeq.eval.validate`` measured for one model on one dataset.

    Attributes:
        model: model name (file stem or metadata name).
        task: detect | segment | pose.
        dataset: path of the COCO json.
        images: number of images evaluated.
        instances: non-crowd ground-truth annotations in those images (evaluated categories).
        detections: detections kept for evaluation.
        dropped: detections of classes that are not categories of the dataset.
        metrics: iou type (``bbox``/``segm``/``keypoints``) -> metric name (:func:`metric_keys`) -> value; None
            where COCOeval has nothing to average (e.g. no small objects).
        per_class: iou type -> AP per category that has ground truth in the evaluated images.
        settings: the prediction and evaluation settings (conf, iou, ..., label mapping, backend).
        timings_ms: mean milliseconds per image: the predictor's own stages (preprocess,
            inference, decode, when it reports them) and ``total`` (the whole predict call).
        matches: iou type -> per-image COCO matching (:class:`edgeq.eval.bootstrap.MatchTable`),
            kept when ``validate(..., keep_matches=True)``, for bootstrap intervals of a
            comparison. Not serialised.
        coco_results: the detections in COCO results format, kept with ``matches`` (for
            :func:`edgeq.eval.floor.perturbation_floor`). Not serialised.
    """

    model: str
    task: str
    dataset: str
    images: int
    instances: int
    detections: int
    dropped: int
    metrics: dict[str, dict[str, float | None]]
    per_class: dict[str, list[ClassAP]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    matches: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    coco_results: list[dict[str, Any]] = field(default_factory=list, repr=False, compare=False)

    @property
    def iou_types(self) -> list[str]:
        """The evaluated iou types, ``bbox`` first."""
        return list(self.metrics)

    def metric(self, name: str = "mAP50-95", iou_type: str = "bbox") -> float | None:
        """One metric, e.g. ``result.metric("mAP50", "segm")``."""
        return self.metrics.get(iou_type, {}).get(name)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``json.dumps(result.to_json())``)."""
        d = asdict(replace(self, matches={}, coco_results=[]))  # large, and arrays: never serialised
        d.pop("matches")
        d.pop("coco_results")
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ValidationResult":
        """Inverse of ``to_json``, e.g. to compare against a saved run."""
        fields = dict(d)
        fields["per_class"] = {k: [ClassAP(**c) for c in v] for k, v in d.get("per_class", {}).items()}
        return cls(**fields)

    @classmethod
    def load(cls, path: str | Path) -> "ValidationResult":
        """Read a result saved with ``save`` (or the ``results`` entry of a report JSON)."""
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))

    def save(self, path: str | Path) -> Path:
        """Write ``to_json()`` to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")
        return path
