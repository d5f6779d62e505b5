"""validate's input errors: each is an EdgeqError that names the file and what is wrong."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeq.errors import EdgeqError
from edgeq.eval import DatasetError, GroundTruthPredictor, PredictionError, build_label_map, validate
from edgeq.runtime.types import Detections


@pytest.fixture(scope="module")
def dev(val_dev: Path) -> tuple[Path, Path]:
    return val_dev / "instances.json", val_dev / "images"


@pytest.fixture(scope="module")
def gt(dev: tuple[Path, Path]) -> GroundTruthPredictor:
    return GroundTruthPredictor(*dev, with_masks=False)


def test_missing_json(gt: GroundTruthPredictor, dev: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="COCO json not found"):
        validate(gt, tmp_path / "nope.json", dev[1], progress=False)


def test_unparseable_json(gt: GroundTruthPredictor, dev: tuple[Path, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(DatasetError, match="cannot parse COCO json"):
        validate(gt, bad, dev[1], progress=False)
    bad.write_text('{"annotations": []}')
    with pytest.raises(DatasetError, match="not a COCO instances json"):
        validate(gt, bad, dev[1], progress=False)


def test_zero_images(gt: GroundTruthPredictor, dev: tuple[Path, Path], tmp_path: Path) -> None:
    data = json.loads(dev[0].read_text())
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({**data, "images": [], "annotations": []}))
    with pytest.raises(DatasetError, match="no images to validate"):
        validate(gt, empty, dev[1], progress=False)
    with pytest.raises(DatasetError, match="max_images=0"):
        validate(gt, dev[0], dev[1], max_images=0, progress=False)


def test_missing_images(gt: GroundTruthPredictor, dev: tuple[Path, Path], tmp_path: Path) -> None:
    files = sorted(p.name for p in dev[1].iterdir())
    for name in files[:10]:
        shutil.copy(dev[1] / name, tmp_path / name)
    missing = [im["file_name"] for im in json.loads(dev[0].read_text())["images"] if im["file_name"] not in files[:10]]
    r = validate(gt, dev[0], tmp_path, progress=False)  # some missing: skipped, counted
    assert r.images == 10 and r.settings["missing_images"] == 59 and r.settings["missing_first"][0] == missing[0]
    (tmp_path / "none").mkdir()
    with pytest.raises(DatasetError, match=r"69 of 69 images .* missing .*first: ") as e:
        validate(gt, dev[0], tmp_path / "none", progress=False)  # all missing: an error
    assert e.value.fix  # says what to do
    with pytest.raises(DatasetError, match="image folder not found"):
        validate(gt, dev[0], tmp_path / "nowhere", progress=False)


def test_unmappable_labels(dev: tuple[Path, Path]) -> None:
    cats = json.loads(dev[0].read_text())["categories"]
    with pytest.raises(DatasetError, match="cannot map the model's 3 classes"):
        build_label_map(["a", "b", "c"], cats)
    assert build_label_map(["a", "b", "c"], cats, class_map={0: 1, 1: 3, 2: 999}).ids == {0: 1, 1: 3}


def test_wrong_mask_size(dev: tuple[Path, Path]) -> None:
    class HalfMasks(GroundTruthPredictor):
        def predict(self, image: np.ndarray, **kw) -> Detections:
            det = super().predict(image, **kw)
            det.masks = det.masks[:, ::2, ::2]
            return det

    with pytest.raises(PredictionError, match="expected the image size"):
        validate(HalfMasks(*dev), *dev, max_images=2, progress=False)


def test_errors_are_edgeq_errors() -> None:
    assert issubclass(DatasetError, EdgeqError) and issubclass(PredictionError, EdgeqError)
