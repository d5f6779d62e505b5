"""edgeq.eval.validate end to end with predictors made from the ground truth (no model needed).

The ground truth fed back as detections must score AP = 1.000 (as shared/data/README.md says it
does with pycocotools); that exercises label mapping, xywh conversion, RLE encoding and crowd
handling at once. Perturbed copies must score measurably lower.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path

from edgeq.eval import (
    COCO80_TO_COCO91,
    GroundTruthPredictor,
    ValidationResult,
    build_label_map,
    validate,
)
from edgeq.runtime.types import Detections

PERSON_IMAGES = 40  # a subset keeps the test fast; the logic is per image


@pytest.fixture(scope="module")
def dev(val_dev: Path) -> tuple[Path, Path]:
    return val_dev / "instances.json", val_dev / "images"


@pytest.fixture(scope="module")
def person_dev() -> tuple[Path, Path]:
    root = shared_path("coco-person-dev")
    return root / "instances.json", root / "images"


@pytest.fixture(scope="module")
def coco_names(dev: tuple[Path, Path]) -> list[str]:
    cats = json.loads(dev[0].read_text())["categories"]
    return [c["name"] for c in sorted(cats, key=lambda c: c["id"])]


@pytest.fixture(scope="module")
def gt_result(dev: tuple[Path, Path]) -> ValidationResult:
    return validate(GroundTruthPredictor(*dev), *dev, progress=False)


class Perturbed:
    """Wraps a predictor and edits its detections (shift boxes, permute classes, add extras)."""

    def __init__(self, inner: GroundTruthPredictor, edit) -> None:
        self.inner, self.edit, self.meta, self.name = inner, edit, inner.meta, "perturbed"

    def predict(self, image: np.ndarray, **kw) -> Detections:
        return self.edit(self.inner.predict(image, **kw))


def shift_right(det: Detections, frac: float = 0.2) -> Detections:
    """Move each box (and mask) right by ``frac`` of its width: box IoU with its GT = 0.8/1.2."""
    dx = (det.boxes[:, 2] - det.boxes[:, 0]) * frac
    boxes = det.boxes.copy()
    boxes[:, [0, 2]] += dx[:, None]
    masks = None if det.masks is None else np.stack([np.roll(m, int(round(d)), axis=1) for m, d in zip(det.masks, dx)]) if len(det) else det.masks
    return replace(det, boxes=boxes, masks=masks)


def permute_classes(det: Detections) -> Detections:
    return replace(det, class_ids=(det.class_ids + 1) % len(det.labels))


def test_coco80_mapping_is_the_official_one(dev: tuple[Path, Path]) -> None:
    cats = json.loads(dev[0].read_text())["categories"]
    assert list(COCO80_TO_COCO91) == sorted(c["id"] for c in cats)
    assert len(set(COCO80_TO_COCO91)) == 80


def test_ground_truth_scores_one(gt_result: ValidationResult) -> None:
    r = gt_result
    assert r.task == "segment" and r.images == 69
    for t in ("bbox", "segm"):
        assert r.metric("mAP50-95", t) == pytest.approx(1.0, abs=1e-9)
        assert r.metric("mAP50", t) == pytest.approx(1.0, abs=1e-9)
        assert r.metric("recall", t) == pytest.approx(1.0, abs=1e-9)
        assert all(c.ap50_95 == pytest.approx(1.0) for c in r.per_class[t])
    assert r.settings["label_mapping"] == "name"
    assert r.instances == r.detections == 518  # 523 annotations, 5 of them crowd
    assert len(r.per_class["bbox"]) == 65  # categories present in the dev set
    assert r.timings_ms["total"] > 0


def test_mapping_by_index_when_labels_are_not_names(dev: tuple[Path, Path]) -> None:
    labels = [f"class{i}" for i in range(80)]
    r = validate(GroundTruthPredictor(*dev, labels=labels, with_masks=False), *dev, max_images=20, progress=False)
    assert r.settings["label_mapping"] == "index"
    assert r.metric("mAP50-95") == pytest.approx(1.0)
    assert list(r.metrics) == ["bbox"]  # a detect model gets no segm


def test_mapping_by_name_survives_reordered_labels(dev: tuple[Path, Path], coco_names: list[str]) -> None:
    labels = coco_names[::-1]  # an index mapping would get every class wrong
    r = validate(GroundTruthPredictor(*dev, labels=labels, with_masks=False), *dev, max_images=20, progress=False)
    assert r.settings["label_mapping"] == "name"
    assert r.metric("mAP50-95") == pytest.approx(1.0)


def test_darknet_spellings_map_by_name(coco_names: list[str], dev: tuple[Path, Path]) -> None:
    darknet = [{"motorcycle": "motorbike", "airplane": "aeroplane", "couch": "sofa", "tv": "tvmonitor"}.get(n, n) for n in coco_names]
    lm = build_label_map(darknet, json.loads(dev[0].read_text())["categories"])
    assert lm.mode == "name" and lm.ids == dict(enumerate(COCO80_TO_COCO91))


def test_shifted_boxes_score_lower(dev: tuple[Path, Path], gt_result: ValidationResult) -> None:
    r = validate(Perturbed(GroundTruthPredictor(*dev), shift_right), *dev, progress=False)
    # IoU 0.667 passes the thresholds 0.50..0.65 (4 of 10) and fails the rest.
    assert r.metric("mAP50") == pytest.approx(1.0)
    assert r.metric("mAP50-95") == pytest.approx(0.4, abs=0.01)
    assert r.metric("mAP50-95", "segm") < 0.8 * gt_result.metric("mAP50-95", "segm")


def test_permuted_classes_score_near_zero(dev: tuple[Path, Path]) -> None:
    r = validate(Perturbed(GroundTruthPredictor(*dev, with_masks=False), permute_classes), *dev, progress=False)
    assert r.metric("mAP50-95") < 0.05


def test_backends_agree(dev: tuple[Path, Path]) -> None:
    """faster-coco-eval and pycocotools give the same numbers on an imperfect predictor."""
    pred = Perturbed(GroundTruthPredictor(*dev), lambda d: shift_right(d, 0.1))
    a = validate(pred, *dev, max_images=30, progress=False, backend="faster-coco-eval")
    b = validate(pred, *dev, max_images=30, progress=False, backend="pycocotools")
    assert (a.settings["backend"], b.settings["backend"]) == ("faster-coco-eval", "pycocotools")
    for t in ("bbox", "segm"):
        for k, v in a.metrics[t].items():
            assert v == pytest.approx(b.metrics[t][k], abs=1e-6), (t, k)
        assert [c.ap50_95 for c in a.per_class[t]] == pytest.approx([c.ap50_95 for c in b.per_class[t]], abs=1e-6)


def test_max_images_restricts_evaluation(dev: tuple[Path, Path]) -> None:
    r = validate(GroundTruthPredictor(*dev, with_masks=False), *dev, max_images=5, progress=False)
    assert r.images == 5 and r.metric("mAP50-95") == pytest.approx(1.0)  # unseen images' GT not counted


def test_no_detections_gives_zero(dev: tuple[Path, Path]) -> None:
    def nothing(det: Detections) -> Detections:
        return Detections.empty(det.labels, with_masks=True, hw=det.masks.shape[1:])

    for backend in ("faster-coco-eval", "pycocotools"):
        r = validate(Perturbed(GroundTruthPredictor(*dev), nothing), *dev, max_images=3, progress=False, backend=backend)
        assert r.detections == 0 and r.metric("mAP50-95") == 0.0 and r.metric("mAP50-95", "segm") == 0.0


# ---------------------------------------------------------------- person-only dataset


def add_cars(det: Detections) -> Detections:
    """Add a confident 'car' (class 2) at every person box, plus a mask: all must be dropped."""
    n = len(det)
    masks = None if det.masks is None else np.concatenate([det.masks, det.masks])
    return replace(
        det,
        boxes=np.concatenate([det.boxes, det.boxes + 3]),
        scores=np.concatenate([det.scores, np.full(n, 0.99, np.float32)]),
        class_ids=np.concatenate([det.class_ids, np.full(n, 2, np.int64)]),
        masks=masks,
    )


def test_person_subset_ground_truth(person_dev: tuple[Path, Path], coco_names: list[str]) -> None:
    gt = GroundTruthPredictor(*person_dev, labels=coco_names)  # an 80-class model on a 1-class set
    r = validate(gt, *person_dev, max_images=PERSON_IMAGES, progress=False)
    assert r.settings["label_mapping"] == "name"
    assert [c.name for c in r.per_class["bbox"]] == ["person"]
    for t in ("bbox", "segm"):
        assert r.metric("mAP50-95", t) == pytest.approx(1.0)

    noisy = validate(Perturbed(gt, add_cars), *person_dev, max_images=PERSON_IMAGES, progress=False)
    assert noisy.dropped == r.detections > 0
    assert noisy.detections == r.detections
    for t in ("bbox", "segm"):
        assert noisy.metric("mAP50-95", t) == pytest.approx(1.0)


def test_person_subset_index_mapping_drops_other_classes(person_dev: tuple[Path, Path], coco_names: list[str]) -> None:
    labels = [f"c{i}" for i in range(80)]
    gt = GroundTruthPredictor(*person_dev, labels=labels, with_masks=False)
    r = validate(Perturbed(gt, add_cars), *person_dev, max_images=10, progress=False)
    assert r.settings["label_mapping"] == "index" and r.dropped > 0
    assert r.metric("mAP50-95") == pytest.approx(1.0)


# ---------------------------------------------------------------- save_json


def test_save_json_is_coco_results(dev: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "sub" / "dets.json"
    r = validate(GroundTruthPredictor(*dev), *dev, max_images=6, save_json=out, progress=False)
    dets = json.loads(out.read_text())
    assert isinstance(dets, list) and len(dets) == r.detections > 0
    valid_ids = set(COCO80_TO_COCO91)
    for d in dets:
        assert set(d) == {"image_id", "category_id", "bbox", "score", "segmentation"}
        assert d["category_id"] in valid_ids and len(d["bbox"]) == 4 and 0 <= d["score"] <= 1
        assert isinstance(d["segmentation"]["counts"], str) and len(d["segmentation"]["size"]) == 2

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(dev[0]))
    E = COCOeval(gt, gt.loadRes(str(out)), "segm")
    E.params.imgIds = sorted({d["image_id"] for d in dets} | {im["id"] for im in gt.dataset["images"][:6]})
    E.evaluate(), E.accumulate(), E.summarize()
    assert E.stats[0] == pytest.approx(1.0)
