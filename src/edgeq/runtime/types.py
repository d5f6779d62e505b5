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
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    labels: list[str]
    masks: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

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
