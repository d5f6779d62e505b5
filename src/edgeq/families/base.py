"""``HeadFamily``: everything that differs between head families, behind one interface.

A family is one module in :mod:`edgeq.families` holding one ``HeadFamily`` subclass, and one
line in the registry (``edgeq.families.FAMILIES``). The pipeline, the runtime and the analysis
look a family up and call it; none of them names a family. What a family owns:

* **discovery**: recognise its head in a normalized ONNX graph by structure, and name the
  per-scale endpoints that each get their own INT8 scale (:meth:`discover`);
* **the cut**: the float graph whose outputs are those endpoints (:meth:`cut`);
* **metadata**: the logical EdgeFirst outputs it writes for an artifact (:meth:`outputs`) and the
  NMS mode / IoU it declares (:attr:`nms`, :attr:`iou`), which its decoder then follows;
* **the decoder** that reads those outputs back (:meth:`decodes`, :meth:`decoder`);
* **the metric** it is validated with (:attr:`metric`);
* **the error measure** that weights its outputs in sensitivity checks (:meth:`decoded_errors`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar

import numpy as np
import onnx

from edgeq.calib.preprocess import InputConvention
from edgeq.decode.fields import HeadDecoder
from edgeq.graph.cut import cut_at_head
from edgeq.graph.heads import HeadSpec
from edgeq.graph.load import ModelInfo
from edgeq.meta.build import TensorLike
from edgeq.meta.schema import ModelMeta, Output, Quant

#: (kind, noise power, signal power) of one decoded output kind on one image.
DecodedError = tuple[str, float, float]


class HeadFamily(ABC):
    """One head family (YOLOv8-style DFL heads, YOLOv5 anchor heads, ...)."""

    #: registry key, recorded in the artifact (``edgeq.head.family``, ``decoder_version``)
    name: ClassVar[str]
    #: NMS the family's models are validated with; written into the artifact and followed by
    #: edgeq's decoder (``class_aware`` | ``class_agnostic``)
    nms: ClassVar[str] = "class_aware"
    #: default NMS IoU for validation (written as ``validation.iou``)
    iou: ClassVar[float] = 0.7
    #: the task metric ``edgeq validate`` reports (COCO box mAP, plus mask mAP for segment)
    metric: ClassVar[str] = "coco"
    #: how an image becomes the model input, for calibration and prediction alike (a key of
    #: ``edgeq.calib.preprocess.PREPROCESSING``; written as ``validation.preprocessing``)
    preprocessing: ClassVar[str] = "letterbox"
    #: the input values the family's models take: channel order, pixel scale, letterbox pad
    #: placement (default: Ultralytics' RGB ``/255`` centred; written as ``input.cameraadaptor``
    #: and ``edgeq.input_convention``, and followed by calibration, the plan's input quantization
    #: and the runtime)
    input_convention: ClassVar[InputConvention] = InputConvention()

    @abstractmethod
    def discover(self, model: onnx.ModelProto, info: ModelInfo) -> HeadSpec | None:
        """This family's head in ``model``, or None when the graph is not of this family.

        Raises ``HeadNotFoundError`` when the graph is of this family but its head is malformed.
        """

    def cut(self, model: onnx.ModelProto, head: HeadSpec) -> onnx.ModelProto:
        """The float graph whose outputs are the head's endpoints (the decode tail removed)."""
        return cut_at_head(model, head)

    @abstractmethod
    def outputs(self, head: HeadSpec, tensors: Sequence[TensorLike], layout: str = "nhwc") -> list[Output]:
        """The logical EdgeFirst outputs describing the artifact's ``tensors`` (schema v2)."""

    @abstractmethod
    def decodes(self, meta: ModelMeta) -> bool:
        """Whether this family's decoder reads the outputs ``meta`` describes."""

    @abstractmethod
    def decoder(self, meta: ModelMeta, quant: Mapping[str, Quant | None]) -> HeadDecoder:
        """The head decoder for an artifact this family :meth:`decodes`."""

    def decoded_errors(self, ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                       head: HeadSpec) -> Iterable[DecodedError]:
        """Errors of ``test`` against ``ref`` head outputs after decoding (scores, boxes, ...).

        What a sensitivity measurement ranks layers by. Heads without both a box and a score
        branch (and families that define no measure) fall back to the raw output errors.
        """
        if not (head.of_kind("scores") and head.of_kind("boxes")):
            return ()
        return self.measure_decoded(ref, test, head)

    def measure_decoded(self, ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                        head: HeadSpec) -> Iterable[DecodedError]:
        """The family's decoded-error measure (see :meth:`decoded_errors`); none by default."""
        return ()


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Overflow-safe logistic function for error measures."""
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))
