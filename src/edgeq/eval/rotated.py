"""Rotated-box (OBB) validation: DOTA-style polygons in a COCO-like json, exact polygon IoU, COCO AP.

**Ground truth format** (a COCO instances json whose boxes are polygons)::

    {"images":      [{"id": 1, "file_name": "P0001.png", "width": 1024, "height": 1024}, ...],
     "categories":  [{"id": 1, "name": "plane"}, ...],
     "annotations": [{"id": 7, "image_id": 1, "category_id": 1,
                      "poly": [x1, y1, x2, y2, x3, y3, x4, y4],
                      "difficult": 0}, ...]}

``poly`` is the object's four corners in original-image pixels, in any order (DOTA's
``x1 y1 ... x4 y4`` label lines); it is scored as its convex hull, so a quad and a rotated box
meet on equal terms. ``difficult`` (DOTA) or ``iscrowd`` (COCO) 1 marks an object that is neither
required nor penalised: a detection matched to it is ignored. ``width``/``height`` are optional;
categories map onto the model's classes by name (else by index) as for COCO
(:func:`edgeq.eval.dataset.build_label_map`).

**Results format** (what ``save_json`` writes): one record per detection,
``{"image_id", "category_id", "score", "poly": [8 numbers], "rbox": [cx, cy, w, h, angle]}``
(original-image pixels, angle in radians, as ``Detections.rotated``).

**Metric.** COCO's AP definition on exact rotated IoU (:func:`edgeq.decode.rotated.polygon_iou`,
the area IoU DOTA scores with; Ultralytics' OBB validator uses probabilistic IoU instead, which is
not an area ratio): per class and IoU threshold ``t`` in 0.50:0.05:0.95, detections of all images
in descending score are matched greedily, each to the unmatched ground truth of its image with the
highest IoU ``>= t`` (non-difficult first; a detection whose best match is difficult is
ignored); AP is the 101-point interpolated precision (precision made non-increasing in recall,
sampled at recall 0, 0.01, ..., 1). mAP50-95 averages classes (those with ground truth in the
images) and thresholds; mAP50/mAP75 one threshold; ``recall`` is the mean over thresholds and
classes of the final recall. Every detection the predictor returns counts (no 100 per image cap;
``max_det`` bounds them), as DOTA's evaluation does.
"""
from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.decode.rotated import polygon_iou_matrix, rbox_corners
from edgeq.errors import EdgeqError
from edgeq.eval.dataset import (
    MAX_COCO_BYTES,
    MAX_COCO_DEPTH,
    LabelMap,
    build_label_map,
    select_images,
)
from edgeq.eval.errors import DatasetError, PredictionError
from edgeq.eval.result import METRIC_KEYS, ClassAP, ValidationResult
from edgeq.fileio import write_text_atomic
from edgeq.meta.verify import json_depth
from edgeq.runtime.types import Detections, Predictor

#: the iou type of rotated-box metrics in a ValidationResult
IOU_TYPE = "obb"
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
_FIX = "check that it is a rotated-box json (images, categories, annotations with 'poly': 8 numbers); see edgeq.eval.rotated"


# ----------------------------------------------------------------------------- ground truth


def _is_num(v: Any) -> bool:
    return type(v) is int or type(v) is float


def load_rotated_json(path: str | Path) -> dict[str, Any]:
    """Read and check a rotated-box ground-truth json (the format in the module docstring).

    Raises:
        DatasetError: missing, too large or deep, not JSON, or a field missing or mistyped (named).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"rotated-box json not found: {path}", "pass the ground-truth json of the OBB validation set")
    try:
        if path.stat().st_size > MAX_COCO_BYTES:
            raise DatasetError(f"{path} is larger than the {MAX_COCO_BYTES >> 20} MiB edgeq reads")
        raw = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror or e}") from None
    if json_depth(raw, MAX_COCO_DEPTH) > MAX_COCO_DEPTH:
        raise DatasetError(f"cannot parse {path}: it nests more than {MAX_COCO_DEPTH} levels deep", _FIX)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise DatasetError(f"cannot parse {path}: {e}", _FIX) from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{path} is not a rotated-box json (no 'images' list)", _FIX)
    if not isinstance(data.get("categories"), list) or not data["categories"]:
        raise DatasetError(f"{path} has no 'categories'", _FIX)
    data.setdefault("annotations", [])
    if not isinstance(data["annotations"], list):
        raise DatasetError(f"{path}: field annotations is not a list", _FIX)
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or type(im.get("id")) is not int or not isinstance(im.get("file_name"), str):
            raise DatasetError(f"{path}: images[{i}] needs an integer 'id' and a string 'file_name'", _FIX)
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or type(c.get("id")) is not int or not isinstance(c.get("name", ""), str):
            raise DatasetError(f"{path}: categories[{i}] needs an integer 'id' (and a string 'name')", _FIX)
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict) or any(type(a.get(k)) is not int for k in ("image_id", "category_id")):
            raise DatasetError(f"{path}: annotations[{i}] needs integer 'image_id' and 'category_id'", _FIX)
        poly = a.get("poly")
        if not (type(poly) is list and len(poly) == 8 and all(_is_num(x) and np.isfinite(x) for x in poly)):
            raise DatasetError(f"{path}: field annotations[{i}].poly is not a list of 8 finite numbers", _FIX)
        for flag in ("difficult", "iscrowd"):
            if a.get(flag) is not None and type(a[flag]) not in (int, bool):
                raise DatasetError(f"{path}: field annotations[{i}].{flag} is not 0 or 1", _FIX)
    return data


# ----------------------------------------------------------------------------- detections -> results


def detections_to_rotated(det: Detections, image_id: int, label_map: LabelMap) -> tuple[list[dict[str, Any]], int]:
    """Result records of one image (module docstring) and how many detections were dropped
    (classes that are not dataset categories).

    Raises:
        PredictionError: the detections carry no rotated boxes.
    """
    if det.rotated is None:
        raise PredictionError("the model returned no rotated boxes (Detections.rotated is None)",
                              "validate OBB models only with the rotated-box metric")
    cats = label_map.category_ids(det.class_ids)
    keep = np.flatnonzero(cats >= 0)
    rot = np.asarray(det.rotated, np.float64)[keep]
    polys = rbox_corners(rot).reshape(len(keep), 8)
    out = [{
        "image_id": int(image_id),
        "category_id": int(cats[k]),
        "score": round(float(det.scores[k]), 5),
        "poly": [round(float(v), 3) for v in polys[j]],
        "rbox": [round(float(v), 4) for v in rot[j]],
    } for j, k in enumerate(keep.tolist())]
    return out, len(det) - len(keep)


# ----------------------------------------------------------------------------- metric


def _quads(records: Sequence[Mapping[str, Any]]) -> np.ndarray:
    return np.asarray([r["poly"] for r in records], np.float64).reshape(-1, 4, 2)


def _match(ious: np.ndarray, ignore: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
    """COCO greedy matching of score-sorted detections (rows) to ground truth (columns) at ``t``:
    (tp, ignored) per detection."""
    n, m = ious.shape
    tp, ign = np.zeros(n, bool), np.zeros(n, bool)
    taken = np.zeros(m, bool)
    order_gt = np.argsort(ignore, kind="stable")  # required ground truth first, as COCOeval sorts it
    for i in range(n):
        best, best_iou = -1, min(t, 1 - 1e-10)
        for g in order_gt:
            if taken[g]:
                continue
            if best >= 0 and not ignore[best] and ignore[g]:
                break  # a required match beats any difficult one
            if ious[i, g] < best_iou:
                continue
            best, best_iou = g, ious[i, g]
        if best < 0:
            continue
        taken[best] = True
        ign[i] = ignore[best]
        tp[i] = not ignore[best]
    return tp, ign


def _ap(scores: np.ndarray, tp: np.ndarray, ign: np.ndarray, n_gt: int) -> tuple[float, float]:
    """(101-point interpolated AP, final recall) of detections pooled over images."""
    order = np.argsort(-scores, kind="mergesort")
    tp, ign = tp[order], ign[order]
    tp, fp = tp[~ign], ~tp[~ign]
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    recall = ctp / n_gt
    precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    precision = np.maximum.accumulate(precision[::-1])[::-1] if precision.size else precision
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.where(idx < precision.size, precision[np.minimum(idx, max(precision.size - 1, 0))], 0.0) \
        if precision.size else np.zeros_like(RECALL_POINTS)
    return float(sampled.mean()), float(recall[-1]) if recall.size else 0.0


def evaluate_rotated(gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]],
                     image_ids: Sequence[int]) -> tuple[dict[str, float | None], list[ClassAP]]:
    """Rotated-box metrics (``METRIC_KEYS`` names; the ones that need areas are None) and AP per
    category with ground truth in ``image_ids``."""
    wanted = {int(i) for i in image_ids}
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in gt["categories"]}
    gts: dict[tuple[int, int], list[Mapping[str, Any]]] = {}
    for a in gt["annotations"]:
        if a["image_id"] in wanted and a["category_id"] in names:
            gts.setdefault((a["image_id"], a["category_id"]), []).append(a)
    dts: dict[tuple[int, int], list[Mapping[str, Any]]] = {}
    for r in results:
        if r["image_id"] in wanted and r["category_id"] in names:
            dts.setdefault((r["image_id"], r["category_id"]), []).append(r)
    per_t = np.full((len(IOU_THRESHOLDS), len(names)), np.nan)
    recalls = np.full_like(per_t, np.nan)
    per_class = []
    for k, cid in enumerate(sorted(names)):
        n_gt = sum(1 for (im, c), g in gts.items() if c == cid for a in g if not (a.get("difficult") or a.get("iscrowd")))
        if n_gt == 0:
            continue
        scores, tps, igns = [], [[] for _ in IOU_THRESHOLDS], [[] for _ in IOU_THRESHOLDS]
        for (im, c), dets in dts.items():
            if c != cid:
                continue
            dets = sorted(dets, key=lambda r: -r["score"])
            g = gts.get((im, c), [])
            ignore = np.asarray([bool(a.get("difficult") or a.get("iscrowd")) for a in g], bool)
            ious = polygon_iou_matrix(_quads(dets), _quads(g)) if g else np.zeros((len(dets), 0))
            scores.append(np.asarray([r["score"] for r in dets], np.float64))
            for ti, t in enumerate(IOU_THRESHOLDS):
                tp, ign = _match(ious, ignore, float(t))
                tps[ti].append(tp)
                igns[ti].append(ign)
        s = np.concatenate(scores) if scores else np.zeros(0)
        for ti in range(len(IOU_THRESHOLDS)):
            tp = np.concatenate(tps[ti]) if tps[ti] else np.zeros(0, bool)
            ign = np.concatenate(igns[ti]) if igns[ti] else np.zeros(0, bool)
            per_t[ti, k], recalls[ti, k] = _ap(s, tp, ign, n_gt)
        per_class.append(ClassAP(names[cid], cid, n_gt, float(per_t[:, k].mean()), float(per_t[0, k])))
    has = ~np.isnan(per_t[0])
    metrics: dict[str, float | None] = dict.fromkeys(METRIC_KEYS)
    if has.any():
        metrics["mAP50-95"] = float(per_t[:, has].mean())
        metrics["mAP50"] = float(per_t[0, has].mean())
        metrics["mAP75"] = float(per_t[5, has].mean())
        metrics["recall"] = float(recalls[:, has].mean())
    return metrics, per_class


# ----------------------------------------------------------------------------- validate


def validate_rotated(
    predictor: Predictor,
    data: str | Path,
    images: str | Path,
    *,
    conf: float = 0.001,
    iou: float | None = None,
    max_det: int = 300,
    multi_label: bool = True,
    max_images: int | None = None,
    save_json: str | Path | None = None,
    progress: bool = True,
    class_map: Mapping[int, int] | None = None,
    name: str | None = None,
    keep_matches: bool = False,
) -> ValidationResult:
    """Rotated-box mAP of an OBB ``predictor`` on a rotated-box json (module docstring).

    Same settings as :func:`edgeq.eval.coco.validate`; the metrics are under the iou type ``obb``.
    ``keep_matches`` (a bootstrap interval for a comparison) is not available for OBB models.
    """
    from edgeq.eval.coco import (  # the same image checks and naming as COCO validation
        _model_name,
        _read,
    )

    if keep_matches:
        raise EdgeqError("--ci (a paired bootstrap interval) is not available for OBB models", "validate without --ci")

    data = Path(data)
    gt = load_rotated_json(data)
    records = select_images(gt, images, data, max_images)
    meta = predictor.meta
    label_map = build_label_map(list(meta.labels), gt["categories"], class_map)
    if iou is None:
        iou = getattr(predictor, "iou", None) or meta.validation_iou or 0.7
    kwargs = {"conf": conf, "iou": iou, "max_det": max_det, "multi_label": multi_label, "masks": False}
    results: list[dict[str, Any]] = []
    dropped, total_ms = 0, 0.0
    for rec in records:
        img = _read(Path(images) / rec["file_name"], rec)
        t0 = time.perf_counter()
        det = predictor.predict(img, **kwargs)
        total_ms += (time.perf_counter() - t0) * 1e3
        recs, n = detections_to_rotated(det, rec["id"], label_map)
        results += recs
        dropped += n
    if save_json is not None:
        write_text_atomic(save_json, json.dumps(results))
    image_ids = [int(r["id"]) for r in records]
    metrics, per_class = evaluate_rotated(gt, results, image_ids)
    return ValidationResult(
        model=_model_name(predictor, name),
        task=meta.task,
        dataset=str(data),
        images=len(records),
        instances=sum(c.instances for c in per_class),
        detections=len(results),
        dropped=dropped,
        metrics={IOU_TYPE: metrics},
        per_class={IOU_TYPE: per_class},
        settings={**{k: v for k, v in kwargs.items() if k != "masks"}, "max_images": max_images,
                  "label_mapping": label_map.mode, "backend": "edgeq rotated (exact polygon IoU)",
                  "images_dir": str(images)},
        timings_ms={"total": round(total_ms / max(len(records), 1), 3)},
    )


__all__ = ["IOU_TYPE", "detections_to_rotated", "evaluate_rotated", "load_rotated_json", "validate_rotated"]
