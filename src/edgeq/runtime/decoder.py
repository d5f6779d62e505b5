"""``Decoder``: one artifact's raw outputs -> detections, as its metadata describes them.

The head decoder comes from the family that reads the metadata (:func:`edgeq.families.head_decoder`;
the family-neutral flat layout otherwise); thresholds, NMS (in the mode the file declares) and the
protos are handled here. Quantized tensors are thresholded in the integer domain
(:mod:`edgeq.decode.fields`).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edgeq.decode.fields import Arrays, DecodeResult, HeadDecoder, QParams, feature_axis, quant_of
from edgeq.decode.nms import nms
from edgeq.families import FAMILIES, head_decoder
from edgeq.meta.schema import ModelMeta, Quant


class Decoder:
    """Decodes one artifact's raw outputs; built once per model from its metadata.

    Args:
        meta: the model metadata.
        quant: per physical output name, the quantization to use (e.g. read from the runtime
            tensor); names missing here fall back to the metadata's own ``quantization``.
    """

    def __init__(self, meta: ModelMeta, quant: Mapping[str, Quant | None] | None = None) -> None:
        quant = dict(quant or {})
        self.meta = meta
        self.head: HeadDecoder = head_decoder(meta, quant)
        #: class-agnostic NMS by default when the file declares it (``nms: class_agnostic``)
        self.agnostic = meta.nms == "class_agnostic"
        #: default NMS IoU: the file's ``validation.iou``, else its family's, else 0.7
        self.iou = meta.validation_iou or _family_iou(meta) or 0.7
        protos = meta.output("protos")
        self.protos_out = protos
        self.protos_quant = quant_of(quant, protos) if protos is not None else None

    @property
    def segments(self) -> bool:
        """Whether the head produces mask coefficients and protos."""
        return self.head.has_coefs and self.protos_out is not None

    def decode(
        self,
        outputs: Arrays,
        conf: float = 0.25,
        iou: float | None = None,
        max_det: int = 300,
        multi_label: bool = False,
        agnostic: bool | None = None,
    ) -> DecodeResult:
        """Threshold, decode candidates, NMS; boxes in model-input pixels, best first.

        ``iou`` / ``agnostic`` None: the IoU and NMS mode the metadata declares. Whole-image
        heads (classify, semantic) return no detections and their results in ``extras``.
        """
        dense = getattr(self.head, "dense", None)
        if dense is not None:
            empty = np.zeros((0,), np.float32)
            return DecodeResult(np.zeros((0, 4), np.float32), empty, empty.astype(np.int64), None, extras=dense(outputs))
        cand = self.head.candidates(outputs, conf, multi_label)
        iou = self.iou if iou is None else iou
        agnostic = self.agnostic if agnostic is None else agnostic
        per_row = getattr(self.head, "extras", None)
        extras = per_row(outputs, cand.rows) if per_row is not None else {}
        suppress = getattr(self.head, "suppress", None)
        if suppress is not None:  # the family's own NMS (e.g. rotated IoU)
            keep = suppress(cand, extras, iou, max_det, agnostic)
        else:
            keep = nms(cand.boxes, cand.scores, iou, max_det, None if agnostic else cand.class_ids)
        kept = cand.take(keep)
        coefs = self.head.coefs(outputs, kept.rows) if self.segments else None
        return DecodeResult(kept.boxes, kept.scores, kept.class_ids, coefs, num_candidates=int(cand.scores.shape[0]),
                            extras={k: v[keep] for k, v in extras.items()})

    def protos(self, outputs: Arrays) -> np.ndarray | None:
        """The dequantized prototype masks as (Hp, Wp, nm) float32, or None."""
        if self.protos_out is None:
            return None
        out = self.protos_out
        fax = feature_axis(out, 32)
        arr = np.moveaxis(outputs[out.name], fax, -1)[0]
        if self.protos_quant is None:
            return np.ascontiguousarray(arr, np.float32)
        qp = QParams.from_quant(self.protos_quant, fax, out.name)
        return qp.dequantize(np.ascontiguousarray(arr))



def _family_iou(meta: ModelMeta) -> float | None:
    family = FAMILIES.get(meta.decoder_version)
    return family.iou if family is not None else None


__all__ = ["Decoder"]
