"""Resolution floor of a validation set: jittered detections, re-evaluated, against the clean run."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from edgeq.eval.bootstrap import match_table
from edgeq.eval.coco import evaluate_coco
from edgeq.eval.floor import floor_note, jitter_detections, perturbation_floor
from edgeq.eval.report import compare
from edgeq.eval.result import ValidationResult


def _case(tmp_path, images: int = 25) -> tuple[str, dict, list[dict]]:
    rng = np.random.default_rng(3)
    anns, dets, aid = [], [], 1
    for i in range(1, images + 1):
        for _ in range(rng.integers(1, 5)):
            x, y, w, h = rng.uniform(0, 300), rng.uniform(0, 300), rng.uniform(10, 120), rng.uniform(10, 120)
            cat = int(rng.integers(1, 4))
            anns.append({"id": aid, "image_id": i, "category_id": cat, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            aid += 1
            off = rng.normal(0, 0.05, 4) * [w, h, w, h]
            dets.append({"image_id": i, "category_id": cat, "bbox": [x + off[0], y + off[1], w + off[2], h + off[3]],
                         "score": float(rng.uniform(0.2, 1.0))})
        for _ in range(3):
            dets.append({"image_id": i, "category_id": int(rng.integers(1, 4)), "score": float(rng.uniform(0.0, 0.5)),
                         "bbox": [rng.uniform(0, 400), rng.uniform(0, 400), rng.uniform(10, 90), rng.uniform(10, 90)]})
    data = {"images": [{"id": i, "width": 640, "height": 640, "file_name": f"{i}.jpg"} for i in range(1, images + 1)],
            "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return str(path), data, dets


def _result(name: str, path: str, data: dict, dets: list[dict]) -> ValidationResult:
    ids = [im["id"] for im in data["images"]]
    metrics, _, backend = evaluate_coco(copy.deepcopy(data), copy.deepcopy(dets), ids)
    return ValidationResult(model=name, task="detect", dataset=path, images=len(ids), instances=len(data["annotations"]),
                            detections=len(dets), dropped=0, metrics=metrics, settings={"backend": backend},
                            matches={"bbox": match_table(data, dets, ids)}, coco_results=copy.deepcopy(dets))


def test_jitter_moves_scores_and_edges_by_the_relative_amount(tmp_path):
    _, _, dets = _case(tmp_path)
    before = copy.deepcopy(dets)
    same = jitter_detections(dets, np.random.default_rng(0), 0.0)
    np.testing.assert_allclose([d["bbox"] for d in same], [d["bbox"] for d in dets])
    assert [d["score"] for d in same] == [d["score"] for d in dets] and dets == before, "input left as it was"
    moved = jitter_detections(dets * 40, np.random.default_rng(1), 0.01)
    ratio = np.array([m["score"] / d["score"] for m, d in zip(moved, dets * 40) if 0 < d["score"] and m["score"] < 1])
    assert np.std(ratio - 1) == pytest.approx(0.01, rel=0.1)
    w = np.array([d["bbox"][2] for d in dets * 40])
    dx = np.array([m["bbox"][0] - d["bbox"][0] for m, d in zip(moved, dets * 40)])
    assert np.std(dx / w) == pytest.approx(0.01, rel=0.1), "the left edge moves by 1 % of the box width"
    assert min(m["bbox"][2] for m in moved) >= 0.0
    assert jitter_detections([], np.random.default_rng(0)) == []


def test_floor_is_zero_without_jitter_and_negative_with_a_large_one(tmp_path):
    path, data, dets = _case(tmp_path)
    r = _result("float", path, data, dets)
    assert perturbation_floor(r, runs=2, jitter=0.0).deltas["bbox"] == [0.0, 0.0]
    tiny = perturbation_floor(r, runs=3, jitter=1e-4)
    assert tiny.bound() < 0.01
    big = perturbation_floor(r, runs=3, jitter=0.2)
    assert max(big.deltas["bbox"]) < -0.05, "20 % jitter on boxes costs AP at every IoU threshold"
    assert "bbox" in floor_note(big) and json.dumps(big.to_json())
    with pytest.raises(ValueError, match="runs"):
        perturbation_floor(r, runs=0)
    with pytest.raises(ValueError, match="keep_matches"):
        perturbation_floor(ValidationResult("x", "detect", path, 1, 1, 1, 0, r.metrics))


def test_compare_ci_reports_the_floor(tmp_path):
    path, data, dets = _case(tmp_path)
    worse = [{**d, "bbox": [v * 1.04 for v in d["bbox"]]} for d in dets]
    cmp = compare(_result("float", path, data, dets), _result("int8", path, data, worse), ci=True)
    assert cmp.floor is not None and len(cmp.floor.deltas["bbox"]) == 8
    assert cmp.to_json()["floor"]["model"] == "float", "the baseline's detections are jittered"
    from edgeq.eval.report import comparison_markdown

    md = comparison_markdown(cmp)
    assert "resolution of this set" in md and "the Δ is outside it" in md
