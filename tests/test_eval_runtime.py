"""Real models through edgeq.runtime.load + edgeq.eval.validate (skips until the runtime exists).

The full-set checks reproduce shared/data/MODELS.md §5 (pycocotools, yolo-val settings):
yolov8n.onnx 0.456 / 0.603 box mAP50-95 / mAP50 on the 69 coco-val-dev images.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from edgeq.eval import validate


@pytest.fixture(scope="module")
def load() -> Callable:
    try:
        from edgeq.runtime import load
    except ImportError as e:
        pytest.skip(f"edgeq.runtime.load is not available yet ({e})")
    return load


@pytest.fixture(scope="module")
def dev(val_dev: Path) -> tuple[Path, Path]:
    return val_dev / "instances.json", val_dev / "images"


def test_yolov8n_smoke(load: Callable, yolov8n_onnx: Path, dev: tuple[Path, Path]) -> None:
    r = validate(load(yolov8n_onnx), *dev, max_images=8, progress=False)
    assert r.images == 8 and r.settings["label_mapping"] == "name"
    assert 0.30 < r.metric("mAP50-95") < 0.75, r.metrics["bbox"]
    assert r.metric("mAP50") > r.metric("mAP50-95")
    assert r.timings_ms["total"] > 0


def test_yolov8n_seg_smoke(load: Callable, yolov8n_seg_onnx: Path, dev: tuple[Path, Path]) -> None:
    r = validate(load(yolov8n_seg_onnx), *dev, max_images=8, progress=False)
    assert r.task == "segment" and set(r.metrics) == {"bbox", "segm"}
    assert 0.25 < r.metric("mAP50-95", "segm") < 0.75, r.metrics


@pytest.mark.slow
def test_yolov8n_full_dev_matches_models_md(load: Callable, yolov8n_onnx: Path, dev: tuple[Path, Path]) -> None:
    r = validate(load(yolov8n_onnx), *dev, progress=False)
    assert r.images == 69
    assert r.metric("mAP50-95") == pytest.approx(0.456, abs=0.01)
    assert r.metric("mAP50") == pytest.approx(0.603, abs=0.01)
