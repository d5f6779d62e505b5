"""Typed results passed from the runtime to evaluation and drawing."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from edgeq.meta.schema import ModelMeta


@dataclass
class Detections:
    """Detections for one image, in original-image pixels.

    Attributes:
        boxes: (N, 4) float32 xyxy.
        scores: (N,) float32 confidences in [0, 1].
        class_ids: (N,) int64 class indices into ``labels``.
        labels: class names of the model (index = class id).
        masks: (N, H, W) bool instance masks at image resolution, or None (detection models,
            or prediction without masks).
        timings_ms: optional per-stage timings (preprocess, inference, decode).
        keypoints: (N, K, 3) float32 ``x, y, visibility`` per detection in original-image
            pixels (pose models), or None.
        rotated: (N, 5) float32 ``cx, cy, w, h, angle`` (radians) in original-image pixels
            (oriented boxes; ``boxes`` then holds their axis-aligned hulls), or None.
        probs: (nc,) float32 class probabilities of the whole image (classifiers; ``class_ids``
            and ``scores`` then hold the top-5, ``boxes`` is empty), or None.
        class_map: (H, W) int class index per pixel at image resolution (semantic
            segmentation), or None.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    labels: list[str]
    masks: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    keypoints: np.ndarray | None = None
    rotated: np.ndarray | None = None
    probs: np.ndarray | None = None
    class_map: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def names(self) -> list[str]:
        return [self.labels[i] if 0 <= i < len(self.labels) else str(i) for i in self.class_ids.tolist()]

    @classmethod
    def empty(cls, labels: list[str], with_masks: bool = False, hw: tuple[int, int] = (0, 0)) -> "Detections":
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            class_ids=np.zeros((0,), np.int64),
            labels=labels,
            masks=np.zeros((0, *hw), bool) if with_masks else None,
        )


class Predictor(Protocol):
    """Anything that turns a BGR image into Detections (a loaded artifact, a float model)."""

    meta: ModelMeta

    def predict(
        self,
        image: np.ndarray,
        conf: float = 0.25,
        iou: float | None = None,
        max_det: int = 300,
        multi_label: bool = False,
        agnostic: bool | None = None,
        masks: bool = True,
    ) -> Detections: ...
