"""A predictor that answers with the ground truth: validating it must give AP = 1.000.

It checks a dataset and the whole evaluation path (label mapping, box and RLE conversion, crowd
handling) without a model, and is the base for perturbation tests.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.calib.preprocess import read_image
from edgeq.eval.coco import _mask_api
from edgeq.eval.dataset import build_label_map, load_coco_json
from edgeq.eval.errors import PredictionError
from edgeq.meta.schema import ModelMeta
from edgeq.runtime.types import Detections


def _digest(image: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).hexdigest()


def _ann_mask(segmentation: Any, h: int, w: int) -> np.ndarray:
    """Decode a COCO segmentation (polygons, uncompressed or compressed RLE) to an (h, w) bool mask."""
    mask = _mask_api()
    if isinstance(segmentation, list):
        rle = mask.merge(mask.frPyObjects(segmentation, h, w))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask.frPyObjects(segmentation, h, w)
    else:
        rle = segmentation
    return mask.decode(rle).astype(bool)


class GroundTruthPredictor:
    """``Predictor`` returning each image's non-crowd ground truth, score 1.

    Images are recognised by their pixels, so it works with any caller that reads the json's
    files. Class ids are the inverse of the label mapping ``validate`` will apply.

    Args:
        data: COCO instances json.
        images: folder holding its images.
        labels: the class names to pretend to have (default: category names by id).
        with_masks: behave as a segmentation model (masks decoded from the ground truth).
        class_map: as in ``validate``, for labels that neither names nor counts can map.
    """

    def __init__(
        self,
        data: str | Path,
        images: str | Path,
        labels: Sequence[str] | None = None,
        with_masks: bool = True,
        class_map: Mapping[int, int] | None = None,
    ) -> None:
        self.data = load_coco_json(data)
        self.images = Path(images)
        cats = sorted(self.data["categories"], key=lambda c: c["id"])
        labels = list(labels) if labels is not None else [c["name"] for c in cats]
        label_map = build_label_map(labels, cats, class_map)
        self.class_of = {cid: idx for idx, cid in sorted(label_map.ids.items(), reverse=True)}
        self.with_masks = with_masks
        self.meta = ModelMeta(
            decoder_version="yolov8",
            task="segment" if with_masks else "detect",
            labels=labels,
            input_shape=[1, 3, 640, 640],
            input_layout="nchw",
            outputs=[],
        )
        self.name = "ground-truth"
        self._anns: dict[int, list[dict[str, Any]]] = {}
        for a in self.data["annotations"]:
            self._anns.setdefault(a["image_id"], []).append(a)
        self._pending = list(self.data["images"])
        self._by_digest: dict[str, dict[str, Any]] = {}

    def _lookup(self, image: np.ndarray) -> dict[str, Any]:
        """The json record of ``image``; reads the json's images in order until it is found."""
        key = _digest(image)
        while key not in self._by_digest and self._pending:
            rec = self._pending.pop(0)
            self._by_digest[_digest(read_image(self.images / rec["file_name"]))] = rec
        if key not in self._by_digest:
            raise PredictionError("GroundTruthPredictor was given an image that is not in its dataset")
        return self._by_digest[key]

    def predict(
        self,
        image: np.ndarray,
        conf: float = 0.25,
        iou: float | None = None,
        max_det: int = 300,
        multi_label: bool = False,
        agnostic: bool | None = None,
        masks: bool = True,
    ) -> Detections:
        """The ground truth of ``image`` as detections (the thresholds are irrelevant here)."""
        rec = self._lookup(image)
        h, w = image.shape[:2]
        anns = [a for a in self._anns.get(rec["id"], []) if not a.get("iscrowd", 0) and a["category_id"] in self.class_of]
        xywh = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        out = Detections(
            boxes=boxes,
            scores=np.ones(len(anns), np.float32),
            class_ids=np.array([self.class_of[a["category_id"]] for a in anns], np.int64),
            labels=list(self.meta.labels),
        )
        if self.with_masks and masks:
            out.masks = np.stack([_ann_mask(a["segmentation"], h, w) for a in anns]) if anns else np.zeros((0, h, w), bool)
        return out
