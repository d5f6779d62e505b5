"""Semantic segmentation (YOLO26 ``-sem``): one class index per input pixel.

**Discovery** (by structure, no node names). The graph's only output is an ``ArgMax`` over the
channel axis of a rank-4 ``[1, nc, H, W]`` tensor (through ``Cast``/``Identity``: the export
casts the index to uint8). When the ArgMax reads a bilinear ``Resize`` (``mode: linear``,
half-pixel coordinates: Ultralytics upsamples stride-8 logits to the input size), the endpoint is
the Resize's *input*: the per-class logits at stride ``s`` (YOLO26n-sem: ``[1, 19, 80, 80]``);
otherwise the ArgMax's input itself (stride 1).

**The cut** takes those logits as the int8 output, with their own scale: 64x fewer values than
the upsampled ``[1, nc, 640, 640]`` map, and the TFLite writer has no bilinear resize. The
upsample and the argmax run on the CPU in the decoder.

**Metadata.** EdgeFirst's ``segmentation`` type (its semantic-segmentation output: NHWC
``[1, H, W, num_classes]`` class scores, argmax per pixel; HAL decodes it on its ``modelpack``
path), with ``stride`` on the tensor: the upsampling factor to the model input. Channel ``c`` is
class ``c`` (no background channel is added).

**Decoding** (:class:`SemanticHead`, the ``dense`` hook): bilinear upsample by ``stride`` with
half-pixel centres (``cv2.resize`` ``INTER_LINEAR``, the ONNX Resize the export ends in), then the
argmax over classes -> ``{"class_map": (H_in, W_in) int32}``. The upsample and argmax run on the
int8 *codes* (as float32): for one per-tensor scale > 0, ``real = s * (q - z)`` is increasing
and the upsample is affine with weights summing to 1, so the class picked is exactly the one the
dequantized logits would give (per-channel quantization is dequantized first). Ties go to the
lower class index, as ONNX ArgMax does.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np
import onnx

from edgeq.decode.fields import Arrays, Candidates, QParams, feature_axis, quant_of
from edgeq.errors import ArtifactError
from edgeq.families.base import HeadFamily
from edgeq.graph.heads import Endpoint, HeadSpec, not_found, producer_through
from edgeq.graph.load import ModelInfo
from edgeq.graph.topology import Topology
from edgeq.meta.build import TensorLike, physical_output
from edgeq.meta.schema import ModelMeta, Output, Quant

SEGMENTATION = "segmentation"
_HALF_PIXEL = (b"half_pixel", b"pytorch_half_pixel")


class Semantic(HeadFamily):
    """Semantic segmentation heads: int8 per-class logits out, upsample + argmax on the CPU."""

    name = "semantic"
    nms = "class_agnostic"  # unused: no boxes
    iou = 0.7
    metric = "miou"

    def discover(self, model: onnx.ModelProto, info: ModelInfo) -> HeadSpec | None:
        return _discover(model, info)

    def outputs(self, head: HeadSpec, tensors: Sequence[TensorLike], layout: str = "nhwc") -> list[Output]:
        by_name = {t.name: t for t in tensors}
        e = head.endpoints[0]
        out = physical_output(by_name[e.name], SEGMENTATION, e.stride, None, layout, feature="num_classes")
        out.decoder = "modelpack"
        return [out]

    def decodes(self, meta: ModelMeta) -> bool:
        return meta.output(SEGMENTATION) is not None

    def decoder(self, meta: ModelMeta, quant: Mapping[str, Quant | None]) -> SemanticHead:
        return SemanticHead(meta, quant)


# ----------------------------------------------------------------------------- discovery


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _discover(model: onnx.ModelProto, info: ModelInfo) -> HeadSpec | None:
    """The per-class logits of a semantic-segmentation graph (None: the output is no channel ArgMax)."""
    topo = Topology.of(model)
    outs = list(topo.graph.output)
    if len(outs) != 1:
        return None
    argmax = producer_through(topo, outs[0].name)
    if argmax is None or argmax.op_type != "ArgMax":
        return None
    scores = argmax.input[0]
    shape = topo.shapes.get(scores)
    if shape is None or len(shape) != 4 or _attr(argmax, "axis", 0) not in (1, -3) or _attr(argmax, "keepdims", 1):
        return None
    logits, stride = scores, 1
    resize = topo.producer.get(scores)
    if (resize is not None and resize.op_type == "Resize" and _attr(resize, "mode", b"nearest") == b"linear"
            and _attr(resize, "coordinate_transformation_mode", b"half_pixel") in _HALF_PIXEL):
        inner = topo.shapes.get(resize.input[0])
        if inner and len(inner) == 4 and shape[2] % inner[2] == 0 and shape[2] // inner[2] == shape[3] // inner[3] \
                and shape[3] % inner[3] == 0:
            logits, stride = resize.input[0], shape[2] // inner[2]
    lshape = tuple(int(d) for d in topo.shapes[logits])
    if lshape[0] != 1 or (lshape[2] * stride, lshape[3] * stride) != tuple(info.imgsz):
        raise not_found(topo, f"semantic logits {list(lshape)} x stride {stride} do not cover the input {list(info.imgsz)}")
    nc = lshape[1]
    if info.names and len(info.names) != nc:
        raise not_found(topo, f"semantic head has {nc} class channels but metadata names {len(info.names)} classes")
    endpoint = Endpoint(logits, SEGMENTATION, SEGMENTATION, lshape, stride, None)
    return HeadSpec(family="semantic", task="semantic", nc=nc, reg_max=0, strides=(stride,), endpoints=(endpoint,))


# ----------------------------------------------------------------------------- decoding


class SemanticHead:
    """Class map at model-input resolution from a ``segmentation`` output (the ``dense`` hook)."""

    has_coefs = False

    def __init__(self, meta: ModelMeta, quant: Mapping[str, Quant | None]) -> None:
        out = meta.output(SEGMENTATION)
        if out is None:
            raise ArtifactError("semantic metadata needs a 'segmentation' output")
        phys = out.physical[0]
        if len(phys.shape) != 4:
            raise ArtifactError(f"segmentation output {phys.name!r} has shape {phys.shape}; expected 4-D")
        self.name = phys.name
        self.fax = feature_axis(phys, len(meta.labels) or None)
        q = quant_of(quant, phys)
        self.qp = QParams.from_quant(q, self.fax, self.name) if q is not None else None
        self.imgsz = meta.imgsz

    def dense(self, outputs: Arrays) -> dict[str, np.ndarray]:
        arr = np.moveaxis(np.asarray(outputs[self.name]), self.fax, -1)[0]  # (h, w, nc)
        if self.qp is not None and np.ndim(self.qp.scale) > 0:
            x = self.qp.dequantize(arr)  # per-channel: the codes do not order the classes
        else:
            x = arr.astype(np.float32)  # per-tensor codes order the classes as their values do
        h, w = self.imgsz
        if x.shape[:2] != (h, w):
            x = _resize_channels(np.ascontiguousarray(x), (w, h))
        return {"class_map": np.argmax(x, axis=-1).astype(np.int32)}

    def candidates(self, outputs: Arrays, conf: float, multi_label: bool) -> Candidates:
        return Candidates.concat([])

    def coefs(self, outputs: Arrays, rows: np.ndarray) -> np.ndarray | None:
        return None


def _resize_channels(x: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Bilinear, half-pixel-centred resize of (h, w, C) float32 (OpenCV takes at most 512 channels)."""
    if x.shape[2] <= 512:
        out = cv2.resize(x, size_wh, interpolation=cv2.INTER_LINEAR)
        return out[..., None] if out.ndim == 2 else out
    return np.concatenate([_resize_channels(np.ascontiguousarray(x[..., i:i + 512]), size_wh)
                           for i in range(0, x.shape[2], 512)], axis=-1)
