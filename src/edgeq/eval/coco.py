"""COCO validation of any ``Predictor``: predict every image, convert to COCO results, run COCOeval.

Settings default to ``yolo val``'s (conf 0.001, NMS IoU 0.7, multi-label, 300 detections), and the
metrics are standard COCOeval (crowd regions ignored, AR at 100 detections), computed with
faster-coco-eval when installed and pycocotools otherwise; both give the same numbers.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgeq.calib.preprocess import read_image
from edgeq.errors import EdgeqError
from edgeq.eval.dataset import LabelMap, build_label_map, load_coco_json, select_images
from edgeq.eval.errors import DatasetError, PredictionError
from edgeq.eval.result import ClassAP, ValidationResult, metric_keys
from edgeq.fileio import write_text_atomic
from edgeq.runtime.types import Detections, Predictor

log = logging.getLogger(__name__)

Backend = Literal["auto", "faster-coco-eval", "pycocotools"]


# ---------------------------------------------------------------- detections -> COCO results


def _mask_api() -> Any:
    """faster-coco-eval's mask module, or pycocotools' (same API, same RLEs) when it is absent.

    faster-coco-eval comes first because pycocotools' decode warns under NumPy 2.
    """
    try:
        from faster_coco_eval.core import mask
    except ImportError:  # pragma: no cover - both are dependencies; either suffices
        from pycocotools import mask
    return mask


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """(N, H, W) bool masks -> COCO compressed RLEs with str counts (JSON-ready)."""
    if len(masks) == 0:
        return []
    # The RLE encoder reads column-major (H, W, N) uint8.
    rles = _mask_api().encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def detections_to_coco(
    det: Detections, image_id: int, label_map: LabelMap, with_masks: bool = False, with_keypoints: bool = False
) -> tuple[list[dict[str, Any]], int]:
    """COCO result records for one image, and how many detections were dropped.

    Detections whose class is not a dataset category are dropped (a person-only set must not
    count a car as a false positive). Boxes become xywh; masks become RLE when ``with_masks``;
    ``Detections.keypoints`` become COCO ``keypoints`` ``[x0, y0, v0, x1, ...]`` (original-image
    pixels; v is the predicted visibility, which OKS does not read) when ``with_keypoints``.
    """
    cats = label_map.category_ids(det.class_ids)
    keep = np.flatnonzero(cats >= 0)
    boxes = np.asarray(det.boxes, dtype=np.float64)[keep]
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1) if len(keep) else boxes
    rles = encode_masks(np.asarray(det.masks)[keep]) if with_masks and det.masks is not None else None
    scores = np.asarray(det.scores, dtype=np.float64)[keep]
    kpts = None
    if with_keypoints and det.keypoints is not None:
        kpts = np.round(np.asarray(det.keypoints, dtype=np.float64)[keep].reshape(len(keep), -1), 3)
    out = []
    for j, k in enumerate(keep.tolist()):
        rec: dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": int(cats[k]),
            "bbox": [round(float(v), 3) for v in xywh[j]],
            "score": round(float(scores[j]), 5),
        }
        if rles is not None:
            rec["segmentation"] = rles[j]
        if kpts is not None:
            rec["keypoints"] = kpts[j].tolist()
        out.append(rec)
    return out, len(det) - len(keep)


# ---------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class _Evaluator:
    name: str
    coco_cls: type
    eval_cls: type


def _evaluator(backend: Backend) -> _Evaluator:
    if backend in ("auto", "faster-coco-eval"):
        try:
            from faster_coco_eval import COCO, COCOeval_faster

            return _Evaluator("faster-coco-eval", COCO, COCOeval_faster)
        except ImportError:
            if backend != "auto":
                raise EdgeqError("faster-coco-eval is not installed", "pip install faster-coco-eval") from None
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise EdgeqError("neither faster-coco-eval nor pycocotools is installed", "pip install faster-coco-eval") from None
    return _Evaluator("pycocotools", COCO, COCOeval)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """pycocotools prints its progress and summary to stdout; keep our output to the report."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _coco_gt(ev: _Evaluator, data: dict[str, Any]) -> Any:
    gt = ev.coco_cls()
    gt.dataset = data
    with _quiet():
        gt.createIndex()
    return gt


def _nones(values: Iterable[float]) -> list[float | None]:
    """COCOeval's -1 means 'nothing to average'; None says so in JSON and tables."""
    return [None if v < 0 else float(v) for v in values]


def _run_cocoeval(
    ev: _Evaluator, gt: Any, results: list[dict[str, Any]], image_ids: list[int], iou_type: str
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """COCOeval summary stats (12; keypoints 10), precision [T, R, K, A, M] and the category ids along K."""
    with _quiet():
        # loadRes adds fields (id, area, polygon of the box) to what it is given; keep ours clean.
        dt = gt.loadRes(json.loads(json.dumps(results)))
        kwargs = {"print_function": lambda *a, **k: None} if ev.name == "faster-coco-eval" else {}
        E = ev.eval_cls(gt, dt, iou_type, **kwargs)
        E.params.imgIds = list(image_ids)
        E.evaluate()
        E.accumulate()
        E.summarize()
    return np.asarray(E.stats[: len(metric_keys(iou_type))], dtype=float), np.asarray(E.eval["precision"]), list(E.params.catIds)


def _class_instances(data: Mapping[str, Any], image_ids: Sequence[int]) -> dict[int, int]:
    """Non-crowd ground-truth count per category id in the given images."""
    wanted = set(image_ids)
    counts: dict[int, int] = {int(c["id"]): 0 for c in data["categories"]}
    for a in data["annotations"]:
        if a["image_id"] in wanted and not a.get("iscrowd", 0) and a["category_id"] in counts:
            counts[a["category_id"]] += 1
    return counts


def evaluate_coco(
    data: dict[str, Any],
    results: list[dict[str, Any]],
    image_ids: Sequence[int],
    iou_types: Sequence[str] = ("bbox",),
    backend: Backend = "auto",
) -> tuple[dict[str, dict[str, float | None]], dict[str, list[ClassAP]], str]:
    """COCOeval of ``results`` against the ground truth ``data`` on ``image_ids``.

    Only the dataset's categories are evaluated. Returns (metrics, per-class AP, backend name),
    keyed by iou type.
    """
    ev = _evaluator(backend)
    gt = _coco_gt(ev, data)
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]}
    instances = _class_instances(data, image_ids)
    metrics: dict[str, dict[str, float | None]] = {}
    per_class: dict[str, list[ClassAP]] = {}
    for iou_type in iou_types:
        if results:
            stats, precision, cat_ids = _run_cocoeval(ev, gt, results, list(image_ids), iou_type)
        else:  # nothing detected: every AP and AR is 0 (pycocotools cannot load an empty result)
            stats, precision, cat_ids = np.zeros(len(metric_keys(iou_type))), None, sorted(names)
        metrics[iou_type] = dict(zip(metric_keys(iou_type), _nones(stats)))
        per_class[iou_type] = _per_class(precision, cat_ids, names, instances)
    return metrics, per_class, ev.name


def _per_class(
    precision: np.ndarray | None, cat_ids: list[int], names: dict[int, str], instances: dict[int, int]
) -> list[ClassAP]:
    """AP per category with ground truth; precision is [IoU, recall, class, area 'all', maxDets 100]."""
    out = []
    for k, cid in enumerate(int(c) for c in cat_ids):
        if not instances.get(cid):
            continue  # no ground truth: COCOeval leaves it out of the mean, so do we
        if precision is None:
            ap, ap50 = 0.0, 0.0
        else:
            p = precision[:, :, k, 0, -1]
            ap = float(p[p > -1].mean()) if (p > -1).any() else None
            ap50 = float(p[0][p[0] > -1].mean()) if (p[0] > -1).any() else None
        out.append(ClassAP(names[cid], cid, instances[cid], ap, ap50))
    return out


# ---------------------------------------------------------------- the prediction loop


@dataclass
class _Timings:
    """Running sums of per-image milliseconds, per stage."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, stages: Mapping[str, float]) -> None:
        for k, v in stages.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: round(self.sums[k] / self.counts[k], 3) for k in self.sums}


def _progress(total: int, enabled: bool, label: str) -> Any:
    """A rich progress bar on stderr (stdout stays clean for reports)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[speed]}"),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )
    progress.add_task(label, total=total, speed="")
    return progress


def _check_masks(det: Detections, hw: tuple[int, int], file_name: str) -> None:
    if det.masks is None:
        raise PredictionError(f"the segmentation model returned no masks for {file_name}")
    if len(det) and tuple(det.masks.shape[1:]) != hw:
        raise PredictionError(
            f"masks for {file_name} are {tuple(det.masks.shape[1:])}, expected the image size {hw}",
            "Detections.masks must be at original-image resolution",
        )


def _read(path: Path, record: Mapping[str, Any]) -> np.ndarray:
    try:
        img = read_image(path)
    except EdgeqError as e:
        raise DatasetError(f"cannot decode image {path}", "replace it with the original COCO JPEG") from e
    if "height" in record and "width" in record and img.shape[:2] != (record["height"], record["width"]):
        raise DatasetError(
            f"{path} is {img.shape[1]}x{img.shape[0]} but the json says {record['width']}x{record['height']}",
            "use the json that belongs to these images",
        )
    return img


def _predict_all(
    predictor: Predictor,
    records: list[dict[str, Any]],
    images_dir: Path,
    label_map: LabelMap,
    predict_kwargs: dict[str, Any],
    progress: bool,
    label: str = "",
) -> tuple[list[dict[str, Any]], int, _Timings]:
    """Predict every image; returns COCO results, dropped detection count, timings.
    ``label``: the model's name, on the progress bar (``yolov8n: validating``)."""
    segment = bool(predict_kwargs["masks"])
    pose = predictor.meta.task == "pose"
    results: list[dict[str, Any]] = []
    dropped = 0
    timings = _Timings()
    with _progress(len(records), progress, f"{label}: validating" if label else "validating") as bar:
        task = bar.task_ids[0]
        for rec in records:
            img = _read(images_dir / rec["file_name"], rec)
            t0 = time.perf_counter()
            det = predictor.predict(img, **predict_kwargs)
            total_ms = (time.perf_counter() - t0) * 1e3
            if segment:
                _check_masks(det, img.shape[:2], rec["file_name"])
            if pose and det.keypoints is None:
                raise PredictionError(f"the pose model returned no keypoints for {rec['file_name']}")
            recs, n_dropped = detections_to_coco(det, rec["id"], label_map, with_masks=segment, with_keypoints=pose)
            results += recs
            dropped += n_dropped
            timings.add({**det.timings_ms, "total": total_ms})
            bar.update(task, advance=1, speed=f"{timings.means()['total']:.1f} ms/img")
    return results, dropped, timings


#: missing images named in the warning before the rest are only counted
_LISTED_MISSING = 3


def _present_images(
    gt: dict[str, Any], images: str | Path, json_path: Path, max_images: int | None
) -> tuple[list[dict[str, Any]], list[str]]:
    """The image records to validate and the ``file_name`` of those missing from ``images``.

    Missing files do not stop a run: those images are left out, with their ground truth, and
    logged as a warning; the result counts them (``settings["missing_images"]``). No image at
    all, a missing folder, or every image missing is a :class:`DatasetError` (from
    :func:`select_images`).
    """
    folder = Path(images)
    records = list(gt["images"])[: max_images if max_images is not None else None]
    if not records or not folder.is_dir():
        return select_images(gt, images, json_path, max_images), []
    present = [r for r in records if (folder / r["file_name"]).is_file()]
    missing = [str(r["file_name"]) for r in records if not (folder / r["file_name"]).is_file()]
    if not present:  # nothing to validate: select_images says which folder and what is missing
        return select_images(gt, images, json_path, max_images), missing
    if missing:
        first = ", ".join(missing[:_LISTED_MISSING]) + (f" and {len(missing) - _LISTED_MISSING} more"
                                                       if len(missing) > _LISTED_MISSING else "")
        log.warning("%d of %d images listed in %s are missing from %s and were skipped (%s)",
                    len(missing), len(records), json_path, folder, first)
    return select_images({**gt, "images": present}, images, json_path, None), missing


def _model_name(predictor: Predictor, name: str | None) -> str:
    """A readable model name: explicit, the predictor's name/path, the metadata's, or its type."""
    if name:
        return name
    for attr in ("name", "path"):
        value = getattr(predictor, attr, None)
        if value:
            return Path(value).stem if attr == "path" else str(value)
    raw = getattr(predictor.meta, "raw", {}) or {}
    return str(raw.get("name") or raw.get("model", {}).get("name") or type(predictor).__name__)


# ---------------------------------------------------------------- public entry point


def save_coco_results(results: list[dict[str, Any]], path: str | Path) -> Path:
    """Write detections in COCO results format (atomically; the mode follows the umask)."""
    return write_text_atomic(path, json.dumps(results))


def validate(
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
    backend: Backend = "auto",
    name: str | None = None,
    keep_matches: bool = False,
) -> ValidationResult:
    """COCO-evaluate ``predictor`` on the images of a COCO instances json.

    Args:
        predictor: anything with ``meta`` (labels, task) and ``predict`` (see ``Predictor``).
        data: COCO instances json (ground truth). Only its ``categories`` are evaluated, so a
            person-only json evaluates person AP and ignores the model's other classes.
        images: folder holding the json's ``file_name`` entries.
        conf, iou, max_det, multi_label: passed to ``predictor.predict`` (``yolo val`` defaults);
            ``iou`` None: the model's own (the IoU its file declares, e.g. 0.6 for YOLOv5).
        max_images: evaluate only the first N images of the json.
        save_json: also write the detections in COCO results format here.
        progress: show a progress bar on stderr.
        class_map: explicit class index -> category id, when names and counts cannot tell.
        backend: COCOeval implementation; ``auto`` prefers faster-coco-eval.
        name: model name for reports (default: from the predictor).
        keep_matches: also keep the per-image matching (``result.matches``) and the detections
            (``result.coco_results``), so that ``compare(a, b, ci=True)`` can bound the delta by
            a paired bootstrap over the images and :func:`edgeq.eval.floor.perturbation_floor`
            can measure the set's resolution.

    Returns:
        bbox (and, for segmentation models, segm; for pose models, keypoints: COCO OKS) metrics,
        per-class AP, counts and timings.

    Raises:
        DatasetError: json missing or unparseable, image folder missing, every listed image
            missing (some missing are skipped with a warning and counted in
            ``settings["missing_images"]``), or nothing to validate.
        PredictionError: the predictor's output cannot be evaluated.
    """
    data = Path(data)
    gt = load_coco_json(data)
    records, missing = _present_images(gt, images, data, max_images)
    meta = predictor.meta
    segment = meta.task == "segment"
    label_map = build_label_map(list(meta.labels), gt["categories"], class_map)
    if iou is None:
        iou = getattr(predictor, "iou", None) or meta.validation_iou or 0.7
    predict_kwargs = dict(conf=conf, iou=iou, max_det=max_det, multi_label=multi_label, masks=segment)
    model_name = _model_name(predictor, name)
    results, dropped, timings = _predict_all(predictor, records, Path(images), label_map, predict_kwargs, progress,
                                             label=model_name)
    if save_json is not None:
        save_coco_results(results, save_json)
    image_ids = [int(r["id"]) for r in records]
    # OKS needs keypoint ground truth (COCO person_keypoints); a box-only json evaluates boxes
    with_kpts = meta.task == "pose" and any("keypoints" in a for a in gt["annotations"])
    iou_types = ("bbox", "segm") if segment else ("bbox", "keypoints") if with_kpts else ("bbox",)
    metrics, per_class, backend_name = evaluate_coco(gt, results, image_ids, iou_types, backend)
    matches = {}
    if keep_matches:
        from edgeq.eval.bootstrap import match_table

        matches = {t: match_table(gt, results, image_ids, t) for t in iou_types}
    settings = {
        **{k: v for k, v in predict_kwargs.items() if k != "masks"},
        "max_images": max_images,
        "label_mapping": label_map.mode,
        "backend": backend_name,
        "images_dir": str(images),
    }
    if missing:
        settings["missing_images"] = len(missing)
        settings["missing_first"] = missing[:_LISTED_MISSING]
    return ValidationResult(
        model=model_name,
        task=meta.task,
        dataset=str(data),
        images=len(records),
        instances=sum(c.instances for c in per_class["bbox"]),
        detections=len(results),
        dropped=dropped,
        metrics=metrics,
        per_class=per_class,
        settings=settings,
        timings_ms=timings.means(),
        matches=matches,
        coco_results=results if keep_matches else [],
    )
