"""Classifier validation: top-1 / top-5 accuracy on an image-folder dataset.

The dataset is a folder with one sub-folder per class (``data/cat/*.jpg``, ``data/dog/*.jpg``, the
ImageNet / Ultralytics ``val`` layout). Folder names are matched to the model's labels by name
(case, spaces, ``-`` and ``_`` ignored); folders that name no label are skipped with a warning,
and none matching is a :class:`DatasetError`.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeq.calib.dataset import IMAGE_SUFFIXES
from edgeq.calib.preprocess import read_image
from edgeq.eval.errors import DatasetError
from edgeq.runtime.types import Predictor

log = logging.getLogger(__name__)


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(name).strip().lower())


@dataclass
class ClassifyResult:
    """Top-1 / top-5 accuracy (fractions) of one model on one image-folder set."""

    model: str
    top1: float
    top5: float
    images: int
    #: per image: (true class, predicted top-5 classes); kept for comparisons
    predictions: list[tuple[int, list[int]]] = field(default_factory=list)
    skipped_folders: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"task": "classify", "model": self.model, "top1": self.top1, "top5": self.top5, "images": self.images,
                "skipped_folders": self.skipped_folders}


def image_folder(root: str | Path, labels: Sequence[str]) -> tuple[list[tuple[Path, int]], list[str]]:
    """(image path, class index) for every image under ``root/<class name>/``, in name order; and
    the folders that match no label.

    Raises:
        DatasetError: ``root`` is not a folder, or no sub-folder names one of ``labels``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"classification data not found: {root} is not a folder",
                           "pass a folder with one sub-folder of images per class")
    index = {_norm(n): i for i, n in enumerate(labels)}
    samples: list[tuple[Path, int]] = []
    skipped: list[str] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        cls = index.get(_norm(folder.name))
        if cls is None:
            skipped.append(folder.name)
            continue
        samples += [(p, cls) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if not samples:
        shown = ", ".join(list(labels)[:5]) + (", ..." if len(labels) > 5 else "")
        raise DatasetError(
            f"no images in class folders of {root} that name the model's classes ({shown})",
            "give each class a sub-folder named as the model's label (see `edgeq inspect MODEL`)",
        )
    if skipped:
        log.warning("skipped %d folder(s) of %s that name no class of the model: %s", len(skipped), root,
                    ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else ""))
    return samples, skipped


def topk_accuracy(probs: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Fraction of rows of ``probs`` (N, nc) whose ``k`` highest entries include the target."""
    if len(targets) == 0:
        return 0.0
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == np.asarray(targets)[:, None], axis=1)))


def accuracy_from_topk(predictions: Sequence[tuple[int, Sequence[int]]]) -> tuple[float, float]:
    """(top-1, top-5) from (true class, ranked predicted classes) pairs."""
    if not predictions:
        return 0.0, 0.0
    top1 = np.mean([len(p) > 0 and p[0] == t for t, p in predictions])
    top5 = np.mean([t in list(p)[:5] for t, p in predictions])
    return float(top1), float(top5)


def validate_classify(predictor: Predictor, data: str | Path, *, max_images: int | None = None,
                      progress: bool = True, name: str | None = None) -> ClassifyResult:
    """Top-1 / top-5 of ``predictor`` on the image-folder set ``data`` (see the module docstring)."""
    from tqdm import tqdm

    samples, skipped = image_folder(data, predictor.meta.labels)
    samples = samples[:max_images] if max_images is not None else samples
    label = name or getattr(predictor, "name", None) or "model"
    preds: list[tuple[int, list[int]]] = []
    for path, cls in tqdm(samples, desc=f"{label}: classifying", unit="img", disable=not progress):
        dets = predictor.predict(read_image(path))
        if dets.probs is not None:
            ranked = np.argsort(-dets.probs, kind="stable")[:5].tolist()
        else:
            ranked = dets.class_ids[:5].tolist()
        preds.append((cls, ranked))
    top1, top5 = accuracy_from_topk(preds)
    return ClassifyResult(label, top1, top5, len(preds), preds, skipped)


def agreement(a: ClassifyResult, b: ClassifyResult) -> float:
    """Fraction of images where the two models' top-1 classes agree."""
    pairs = list(zip(a.predictions, b.predictions))
    return float(np.mean([pa[1][:1] == pb[1][:1] for pa, pb in pairs])) if pairs else 0.0


def print_classify(result: ClassifyResult, other: ClassifyResult | None = None) -> None:
    """Print the accuracy (percent); with ``other``, both models side by side and the deltas (points)."""
    from rich.console import Console
    from rich.table import Table

    if other is None:
        t = Table("model", "images", "top-1 %", "top-5 %")
        t.add_row(result.model, str(result.images), f"{100 * result.top1:.2f}", f"{100 * result.top5:.2f}")
    else:
        t = Table("metric", other.model, result.model, "delta (pp)")
        for key in ("top1", "top5"):
            va, vb = getattr(other, key), getattr(result, key)
            t.add_row(key, f"{100 * va:.2f}", f"{100 * vb:.2f}", f"{100 * (vb - va):+.2f}")
        t.add_row("top-1 agreement", "", f"{100 * agreement(other, result):.2f}", "")
    Console().print(t)


def validate_task(predictor: Predictor, data: str | Path, images: str | Path | None = None, *,
                  max_images: int | None = None, progress: bool = True, keep: bool = False) -> ClassifyResult:
    """``edgeq validate`` for classifiers: ``data`` is the image-folder set (``images`` unused)."""
    return validate_classify(predictor, data, max_images=max_images, progress=progress)


print_task = print_classify
