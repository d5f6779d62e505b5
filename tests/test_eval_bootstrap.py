"""Paired bootstrap of a mAP delta: COCOeval's mAP reproduced per resample, intervals that behave."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from edgeq.eval.bootstrap import _Stacked, average_precision, match_table, paired_bootstrap
from edgeq.eval.report import compare
from edgeq.eval.result import ValidationResult


def _dataset(rng: np.random.Generator, images: int = 30, cats: int = 3) -> dict:
    anns, aid = [], 1
    for i in range(1, images + 1):
        for _ in range(rng.integers(1, 6)):
            x, y, w, h = rng.uniform(0, 300), rng.uniform(0, 300), rng.uniform(8, 120), rng.uniform(8, 120)
            anns.append({"id": aid, "image_id": i, "category_id": int(rng.integers(1, cats + 1)), "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
            aid += 1
    return {"images": [{"id": i, "width": 640, "height": 640, "file_name": f"{i}.jpg"} for i in range(1, images + 1)],
            "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in range(1, cats + 1)]}


def _detections(rng: np.random.Generator, data: dict, jitter: float, false_per_image: int = 3) -> list[dict]:
    """Jittered ground truth (some dropped) plus false positives, every score distinct."""
    out = []
    for a in data["annotations"]:
        if rng.uniform() < 0.15:
            continue
        x, y, w, h = a["bbox"]
        box = [x + rng.normal(0, jitter * w), y + rng.normal(0, jitter * h), w * (1 + rng.normal(0, jitter)), h * (1 + rng.normal(0, jitter))]
        out.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": box, "score": float(rng.uniform(0.3, 1.0))})
    for im in data["images"]:
        for _ in range(false_per_image):
            out.append({"image_id": im["id"], "category_id": int(rng.integers(1, 4)), "score": float(rng.uniform(0.0, 0.6)),
                        "bbox": [rng.uniform(0, 500), rng.uniform(0, 500), rng.uniform(8, 100), rng.uniform(8, 100)]})
    return out


def _cocoeval_map(data: dict, results: list[dict]) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = json.loads(json.dumps(data))
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(json.loads(json.dumps(results))), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def _duplicated(data: dict, results: list[dict], counts: np.ndarray) -> tuple[dict, list[dict]]:
    """The dataset with image i present counts[i] times (fresh ids): what a resample means."""
    images, anns, dets, new_id = [], [], [], 1
    for idx, im in enumerate(data["images"]):
        for _ in range(int(counts[idx])):
            images.append({**im, "id": new_id})
            anns += [{**a, "image_id": new_id, "id": len(anns) + k + 1}
                     for k, a in enumerate(a for a in data["annotations"] if a["image_id"] == im["id"])]
            dets += [{**d, "image_id": new_id} for d in results if d["image_id"] == im["id"]]
            new_id += 1
    return {**data, "images": images, "annotations": anns}, dets


@pytest.fixture(scope="module")
def case() -> tuple[dict, list[dict], list[dict]]:
    rng = np.random.default_rng(0)
    data = _dataset(rng)
    return data, _detections(rng, data, 0.05), _detections(rng, data, 0.15)


def test_unit_weights_reproduce_cocoeval(case):
    data, good, _ = case
    ids = [im["id"] for im in data["images"]]
    assert average_precision(match_table(data, good, ids)) == pytest.approx(_cocoeval_map(data, good), abs=1e-12)


def test_weights_mean_images_counted_that_many_times(case):
    data, good, _ = case
    ids = [im["id"] for im in data["images"]]
    table = match_table(data, good, ids)
    counts = np.random.default_rng(3).multinomial(len(ids), np.full(len(ids), 1 / len(ids)))
    expected = _cocoeval_map(*_duplicated(data, good, counts))
    assert average_precision(table, counts.astype(float)) == pytest.approx(expected, abs=1e-9)
    assert _Stacked(table).mean_ap(counts.astype(float)) == pytest.approx(expected, abs=1e-5), "the fast path"


def test_paired_bootstrap_intervals(case):
    data, good, worse = case
    ids = [im["id"] for im in data["images"]]
    a, b = match_table(data, good, ids), match_table(data, worse, ids)
    same = paired_bootstrap(a, a, iterations=50)
    assert same.delta == 0.0 and same.low == 0.0 and same.high == 0.0
    loss = paired_bootstrap(a, b, iterations=300)
    assert loss.delta == pytest.approx(average_precision(b) - average_precision(a))
    assert loss.low <= loss.delta <= loss.high and loss.high < 0, "coarser boxes lose AP on every resample"
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(a, match_table(data, good, ids[:-1]))


def _result(name: str, matches: dict) -> ValidationResult:
    return ValidationResult(model=name, task="detect", dataset="d.json", images=30, instances=90, detections=100,
                            dropped=0, metrics={"bbox": {"mAP50-95": 0.5}}, matches=matches)


def test_compare_with_intervals_and_json(case):
    data, good, worse = case
    ids = [im["id"] for im in data["images"]]
    a = _result("float", {"bbox": match_table(data, good, ids)})
    b = _result("int8", {"bbox": match_table(data, worse, ids)})
    cmp = compare(a, b, ci=True)
    assert cmp.intervals["bbox"].high < 0
    payload = json.dumps(cmp.to_json())  # intervals serialise; matches never do
    assert '"intervals"' in payload and "matches" not in json.dumps(a.to_json())
    assert a.matches, "to_json leaves the result's matches in place"
    with pytest.raises(ValueError, match="keep_matches"):
        compare(_result("x", {}), b, ci=True)


def test_cli_ci_needs_compare():
    from typer.testing import CliRunner

    from edgeq.cli import app

    result = CliRunner().invoke(app, ["validate", "m.tflite", "--data", "d.json", "--ci"])
    assert result.exit_code == 2 and "--compare" in result.output


def test_segm_matches_after_an_earlier_evaluation(case):
    """Masks too, on ground truth that an earlier evaluation already touched (RLE bytes in it)."""
    from edgeq.eval.coco import encode_masks, evaluate_coco

    data, good, _ = case
    data = json.loads(json.dumps(data))
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        a["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    results = []
    for d in good:
        m = np.zeros((1, 640, 640), bool)
        x, y, w, h = (int(round(v)) for v in d["bbox"])
        m[0, max(y, 0): max(y + h, 0), max(x, 0): max(x + w, 0)] = True
        results.append({**d, "segmentation": encode_masks(m)[0]})
    ids = [im["id"] for im in data["images"]]
    metrics, _, _ = evaluate_coco(data, results, ids, ("bbox", "segm"))
    table = match_table(data, results, ids, "segm")
    assert average_precision(table) == pytest.approx(metrics["segm"]["mAP50-95"], abs=1e-9)
