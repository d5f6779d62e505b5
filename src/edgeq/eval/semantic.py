"""Semantic-segmentation validation: mIoU and pixel accuracy against per-pixel ground truth built
from COCO instance masks.

**Ground truth.** Each image's class map starts as *background*; instance masks are painted on
it largest first (a smaller object on top of a larger one keeps its pixels). An instance's class
is its category mapped to the model's labels (:func:`edgeq.eval.dataset.build_label_map`: by name,
else by index). Crowd regions and instances of categories the model has no class for are
*ignored* (``IGNORE``), as are pixels outside every class. Background is the model's class named
``background`` when it has one, else an extra index ``nc`` that the model cannot predict (so
background pixels predicted as class ``c`` count against ``c``).

**Metric.** A confusion matrix over all images (rows: ground truth, columns: prediction; ignored
pixels left out); IoU per class ``TP / (TP + FP + FN)``; mIoU is the mean over the classes that
occur in the ground truth or the predictions; pixel accuracy is ``trace / total``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.calib.preprocess import read_image
from edgeq.eval.dataset import _norm, build_label_map, load_coco_json, select_images
from edgeq.runtime.types import Predictor

IGNORE = -1


@dataclass
class SemanticResult:
    """mIoU / pixel accuracy (fractions) of one model on one set."""

    model: str
    miou: float
    pixel_accuracy: float
    images: int
    iou: dict[str, float] = field(default_factory=dict)  # per class that occurs
    confusion: np.ndarray | None = None
    #: per image, the predicted class maps (only when kept for agreement between two models)
    maps: list[np.ndarray] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"task": "semantic", "model": self.model, "miou": self.miou, "pixel_accuracy": self.pixel_accuracy,
                "images": self.images, "iou": self.iou}


def confusion(gt: np.ndarray, pred: np.ndarray, n: int, ignore: int = IGNORE) -> np.ndarray:
    """(n, n) int64 confusion matrix, rows ground truth, columns prediction; ``ignore`` pixels and
    predictions outside ``[0, n)`` are left out."""
    gt, pred = np.asarray(gt).reshape(-1).astype(np.int64), np.asarray(pred).reshape(-1).astype(np.int64)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth has {gt.size} pixels, the prediction {pred.size}")
    keep = (gt != ignore) & (gt >= 0) & (gt < n) & (pred >= 0) & (pred < n)
    return np.bincount(gt[keep] * n + pred[keep], minlength=n * n).reshape(n, n)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """IoU of every class (NaN where the class is in neither the ground truth nor the predictions)."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def miou(cm: np.ndarray) -> tuple[float, float]:
    """(mIoU over the classes that occur, pixel accuracy) of a confusion matrix."""
    ious = iou_per_class(cm)
    total = cm.sum()
    mean = float(np.nanmean(ious)) if np.any(~np.isnan(ious)) else 0.0
    return mean, float(np.trace(cm) / total) if total else 0.0


def background_index(labels: Sequence[str]) -> int:
    """The model's ``background`` class, else ``len(labels)`` (an index the model never predicts)."""
    return next((i for i, n in enumerate(labels) if _norm(n) == "background"), len(labels))


def class_map_from_coco(record: Mapping[str, Any], annotations: Sequence[Mapping[str, Any]],
                        category_to_class: Mapping[int, int], background: int,
                        hw: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W) int32 ground-truth class map of one image from its COCO instance annotations."""
    from edgeq.eval.coco import _mask_api

    h, w = hw or (int(record["height"]), int(record["width"]))
    out = np.full((h, w), background, np.int32)
    api = _mask_api()
    anns = [a for a in annotations if a.get("segmentation")]
    anns.sort(key=lambda a: -float(a.get("area", 0.0)))  # largest first: smaller objects stay on top
    for a in anns:
        seg = a["segmentation"]
        if isinstance(seg, list):
            polys = [p for p in seg if isinstance(p, list) and len(p) >= 6]
            if not polys:
                continue
            rle = api.merge(api.frPyObjects(polys, h, w))
        elif isinstance(seg.get("counts"), list):
            rle = api.frPyObjects(seg, h, w)
        else:
            rle = seg
        m = api.decode(rle).astype(bool)
        if m.ndim == 3:
            m = m.any(axis=2)
        cls = category_to_class.get(int(a["category_id"]))
        out[m] = IGNORE if a.get("iscrowd") or cls is None else cls
    return out


def validate_semantic(predictor: Predictor, data: str | Path, images: str | Path, *,
                      max_images: int | None = None, progress: bool = True, name: str | None = None,
                      keep_maps: bool = False) -> SemanticResult:
    """mIoU / pixel accuracy of ``predictor`` on a COCO instances json (see the module docstring)."""
    from tqdm import tqdm

    gt = load_coco_json(data)
    labels = list(predictor.meta.labels)
    label_map = build_label_map(labels, gt["categories"])
    category_to_class = {cat: cls for cls, cat in label_map.ids.items()}
    background = background_index(labels)
    n = max(len(labels), background + 1)
    by_image: dict[int, list[Mapping[str, Any]]] = {}
    for a in gt.get("annotations", []):
        by_image.setdefault(int(a["image_id"]), []).append(a)
    records = select_images(gt, images, data, max_images)
    cm = np.zeros((n, n), np.int64)
    maps = []
    label = name or getattr(predictor, "name", None) or "model"
    for r in tqdm(records, desc=f"{label}: segmenting", unit="img", disable=not progress):
        img = read_image(Path(images) / r["file_name"])
        pred = predictor.predict(img).class_map
        if pred is None:
            raise ValueError(f"{label} returns no class map: it is not a semantic-segmentation model")
        truth = class_map_from_coco(r, by_image.get(int(r["id"]), []), category_to_class, background, img.shape[:2])
        cm += confusion(truth, pred, n)
        if keep_maps:
            maps.append(pred)
    m, acc = miou(cm)
    ious = iou_per_class(cm)
    names = labels + (["background"] if background == len(labels) else [])
    per_class = {names[i]: float(v) for i, v in enumerate(ious) if not np.isnan(v)}
    return SemanticResult(label, m, acc, len(records), per_class, cm, maps)


def pixel_agreement(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Fraction of pixels where two models' class maps agree (same images, same order)."""
    same = sum(int(np.count_nonzero(x == y)) for x, y in zip(a, b))
    total = sum(x.size for x in a)
    return same / total if total else 0.0


def print_semantic(result: SemanticResult, other: SemanticResult | None = None) -> None:
    """Print mIoU and pixel accuracy (percent); with ``other``, side by side with the deltas (points)."""
    from rich.console import Console
    from rich.table import Table

    if other is None:
        t = Table("model", "images", "mIoU %", "pixel acc %")
        t.add_row(result.model, str(result.images), f"{100 * result.miou:.2f}", f"{100 * result.pixel_accuracy:.2f}")
    else:
        t = Table("metric", other.model, result.model, "delta (pp)")
        for key, title in (("miou", "mIoU"), ("pixel_accuracy", "pixel acc")):
            va, vb = getattr(other, key), getattr(result, key)
            t.add_row(title, f"{100 * va:.2f}", f"{100 * vb:.2f}", f"{100 * (vb - va):+.2f}")
        if result.maps and other.maps:
            t.add_row("pixel agreement", "", f"{100 * pixel_agreement(other.maps, result.maps):.2f}", "")
    Console().print(t)


def validate_task(predictor: Predictor, data: str | Path, images: str | Path, *,
                  max_images: int | None = None, progress: bool = True, keep: bool = False) -> SemanticResult:
    """``edgeq validate`` for semantic segmentation: ``data`` a COCO instances json, ``images`` its
    image folder; ``keep`` keeps the class maps (pixel agreement between two models)."""
    return validate_semantic(predictor, data, images, max_images=max_images, progress=progress, keep_maps=keep)


print_task = print_semantic
