"""Build the artifact's edgefirst.json (schema v2) from the head, the written tensors and provenance."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from edgeq import __version__
from edgeq.graph.heads import HeadSpec
from edgeq.graph.load import ModelInfo
from edgeq.meta.schema import ModelMeta, Output, Quant

_DSHAPE_FEATURE = {
    "boxes": "num_features",
    "scores": "num_features",
    "mask_coefs": "num_features",
    "protos": "num_protos",
    "detection": "num_anchors_x_features",
}


class TensorLike(Protocol):
    """What the metadata needs to know about an artifact tensor (export.tflite.TensorInfo fits)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int


def _physical(t: TensorLike, kind: str, stride: int | None, scale_index: int | None, layout: str,
              feature: str | None = None) -> Output:
    n, a, b, c = t.shape
    feature = feature or _DSHAPE_FEATURE[kind]
    if layout == "nhwc":
        dshape = [("batch", n), ("height", a), ("width", b), (feature, c)]
    else:
        dshape = [("batch", n), (feature, a), ("height", b), ("width", c)]
    return Output(
        name=t.name,
        type=kind,
        shape=list(t.shape),
        dshape=dshape,
        dtype=t.dtype,
        quantization=Quant(scale=float(t.scale), zero_point=int(t.zero_point), dtype=t.dtype) if t.dtype != "float32" else None,
        stride=stride,
        scale_index=scale_index,
    )


def anchor_outputs(head: HeadSpec, tensors: Sequence[TensorLike], layout: str = "nhwc") -> list[Output]:
    """YOLOv5 per-scale raw head (``encoding: anchor``, ``score_format: obj_x_class``).

    ``anchors`` is a flat list of ``[w, h]`` pairs in input pixels, ``na`` per level in the
    children's order (the type EdgeFirst HAL's schema parses).

    Split form (each level's conv cut in three): logical ``boxes`` (anchor encoding, anchors),
    ``objectness`` and ``scores``, each with a child per level:
    ``[1, H, W, na*4]`` box logits (cx, cy, w, h), ``[1, H, W, na]`` objectness logits and
    ``[1, H, W, na*nc]`` class logits, anchor-major (``a*F + k``). Decoded as
    ``xy = (2*sig - 0.5 + grid) * stride``, ``wh = (2*sig)**2 * anchor``, score ``sig(obj)*sig(cls)``.

    Single-tensor form (a level that could not be split): one logical ``detection`` whose
    children are ``[1, H, W, na*(5+nc)]``: cx, cy, w, h, objectness, classes per anchor.
    """
    by_name = {t.name: t for t in tensors}
    na = len(head.anchors[0])
    anchors = [list(a) for level in head.anchors for a in level]
    if head.of_kind("detection"):
        eps = head.of_kind("detection")
        total = sum(e.shape[2] * e.shape[3] * na for e in eps)
        no = 5 + head.nc
        return [
            Output(
                name="detection",
                type="detection",
                shape=[1, total, no],
                dshape=[("batch", 1), ("num_boxes", total), ("num_features", no)],
                decoder="ultralytics",
                encoding="anchor",
                score_format="obj_x_class",
                normalized=False,
                anchors=anchors,
                activation_required="sigmoid",
                children=[_physical(by_name[e.name], "detection", e.stride, e.scale_index, layout) for e in eps],
            )
        ]
    total = sum(e.shape[2] * e.shape[3] * na for e in head.of_kind("boxes"))
    widths = {"boxes": 4, "objectness": 1, "scores": head.nc}
    feature = {"boxes": "box_coords", "objectness": "num_features", "scores": "num_classes"}
    outputs = []
    for kind in ("boxes", "objectness", "scores"):
        logical = Output(
            name=kind,
            type=kind,
            shape=[1, widths[kind], total],
            dshape=[("batch", 1), (feature[kind], widths[kind]), ("num_boxes", total)],
            decoder="ultralytics",
            activation_required="sigmoid",
            children=[
                _physical(by_name[e.name], kind, e.stride, e.scale_index, layout, "num_anchors_x_features")
                for e in head.of_kind(kind)
            ],
        )
        if kind == "boxes":
            logical.encoding, logical.normalized, logical.anchors = "anchor", False, anchors
        else:
            logical.score_format = "obj_x_class"
        outputs.append(logical)
    return outputs


def smart_outputs(head: HeadSpec, tensors: Sequence[TensorLike], layout: str = "nhwc") -> list[Output]:
    """Logical outputs (boxes, scores, mask_coefs) with per-scale children, plus protos."""
    if head.family == "yolov5":
        return anchor_outputs(head, tensors, layout)
    by_name = {t.name: t for t in tensors}
    total = sum(e.shape[2] * e.shape[3] for e in head.of_kind("boxes"))
    widths = {"boxes": 4, "scores": head.nc, "mask_coefs": head.nm}
    feature = {"boxes": "box_coords", "scores": "num_classes", "mask_coefs": "num_protos"}
    outputs = []
    for kind in ("boxes", "scores", "mask_coefs"):
        eps = head.of_kind(kind)
        if not eps:
            continue
        logical = Output(
            name=kind,
            type=kind,
            shape=[1, widths[kind], total],
            dshape=[("batch", 1), (feature[kind], widths[kind]), ("num_boxes", total)],
            decoder="ultralytics",
            children=[_physical(by_name[e.name], kind, e.stride, e.scale_index, layout) for e in eps],
        )
        if kind == "boxes":
            logical.encoding, logical.normalized = "dfl", False
        if kind == "scores":
            logical.score_format, logical.activation_required = "per_class", "sigmoid"
        outputs.append(logical)
    for e in head.of_kind("protos"):
        outputs.append(_physical(by_name[e.name], "protos", e.stride, None, layout))
    return outputs


def combined_family(shape: Sequence[int]) -> str:
    """YOLOv5 exports are ``[1, N, 5+nc]`` (anchors first), YOLOv8/11 ``[1, 4+nc(+nm), N]``."""
    return "yolov5" if shape[1] > shape[2] else "yolov8"


def combined_outputs(info: ModelInfo, tensors: Sequence[TensorLike], normalized: bool, family: str = "yolov8") -> list[Output]:
    """The monolithic layout: one ``detection`` tensor [1, 4+nc(+nm), N] (+ protos), or YOLOv5's [1, N, 5+nc]."""
    det = tensors[0]
    names = ("num_boxes", "num_features") if family == "yolov5" else ("num_features", "num_boxes")
    outputs = [
        Output(
            name=det.name,
            type="detection",
            shape=list(det.shape),
            dshape=[("batch", 1), (names[0], det.shape[1]), (names[1], det.shape[2])],
            decoder="ultralytics",
            score_format="obj_x_class" if family == "yolov5" else "per_class",
            normalized=normalized,
            dtype=det.dtype,
            quantization=Quant(scale=float(det.scale), zero_point=int(det.zero_point), dtype=det.dtype),
        )
    ]
    for t in tensors[1:]:
        outputs.append(_physical(t, "protos", info.imgsz[0] // t.shape[1], None, "nhwc"))
    return outputs


def build_meta(
    info: ModelInfo,
    outputs: list[Output],
    input_tensor: TensorLike,
    provenance: dict[str, Any],
    *,
    name: str,
    decoder_version: str = "yolov8",
) -> ModelMeta:
    """The complete metadata of a converted artifact (deterministic: no timestamps)."""
    raw: dict[str, Any] = {
        "schema_version": 2,
        "name": name,
        "description": f"{name} converted by edgeq {__version__}",
        "author": info.props.get("author", ""),
        "dataset": {"name": "", "classes": list(info.names)},
        "input": {
            "shape": list(input_tensor.shape),
            "cameraadaptor": "rgb",
            "input_channels": 3,
            "output_channels": 3,
        },
        "model": {"name": name, "version": info.props.get("version", "")},
        "validation": {"iou": 0.7, "score": 0.001, "nms": "numpy", "preprocessing": "letterbox", "normalization": "unsigned"},
        "edgeq": {"version": __version__, **provenance},
    }
    return ModelMeta(
        decoder_version=decoder_version,
        task=info.task,
        labels=list(info.names),
        input_shape=list(input_tensor.shape),
        input_layout="nhwc",
        outputs=outputs,
        nms="class_agnostic",
        input_dtype=input_tensor.dtype,
        raw=raw,
    )
