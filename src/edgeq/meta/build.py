"""Build the artifact's edgefirst.json (schema v2) from the head, the written tensors and provenance."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from edgeq import __version__
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


def physical_output(t: TensorLike, kind: str, stride: int | None, scale_index: int | None, layout: str,
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
        outputs.append(physical_output(t, "protos", info.imgsz[0] // t.shape[1], None, "nhwc"))
    return outputs


def build_meta(
    info: ModelInfo,
    outputs: list[Output],
    input_tensor: TensorLike,
    provenance: dict[str, Any],
    *,
    name: str,
    decoder_version: str = "yolov8",
    nms: str = "class_aware",
    iou: float = 0.7,
    preprocessing: str = "letterbox",
    input_convention: Mapping[str, Any] | None = None,
    end2end: bool | None = None,
) -> ModelMeta:
    """The complete metadata of a converted artifact (deterministic: no timestamps).

    ``nms`` (the HAL mode, ``class_aware`` | ``class_agnostic``) and ``iou`` (``validation.iou``)
    are what the family's models are validated with; edgeq's decoder follows them by default.
    ``end2end``: the head is NMS-free (YOLO26's one-to-one head): written as ``model.end2end`` and
    ``validation.nms: none``, as EdgeFirst requires for end-to-end models (None: not stated).
    """
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
        "validation": {"iou": iou, "score": 0.001, "nms": "numpy", "preprocessing": preprocessing, "normalization": "unsigned"},
        "edgeq": {"version": __version__, **provenance},
    }
    if input_convention is not None:
        _record_input_convention(raw, input_convention)
    if end2end is not None:
        raw["model"]["end2end"] = bool(end2end)
        if end2end:
            raw["validation"]["nms"] = "none"
    return ModelMeta(
        decoder_version=decoder_version,
        task=info.task,
        labels=list(info.names),
        input_shape=list(input_tensor.shape),
        input_layout="nhwc",
        outputs=outputs,
        nms=nms,
        input_dtype=input_tensor.dtype,
        raw=raw,
    )


def _record_input_convention(raw: dict[str, Any], convention: Mapping[str, Any]) -> None:
    """Write a model's input convention (``edgeq.calib.preprocess.InputConvention.to_json()``)
    where EdgeFirst has a field for it, and whole as the versioned ``edgeq.input_convention``.

    ``input.cameraadaptor`` takes the channel order. ``validation.normalization: unsigned``
    (EdgeFirst's ``/255``) stays only for a 1/255 pixel scale: other scales (YOLOX's 0..255) have no
    EdgeFirst value, so the key is left out and ``edgeq.input_convention.pixel_scale`` says it.
    The pad placement (``center`` | ``bottom_right``) has no EdgeFirst field either.
    """
    raw["input"]["cameraadaptor"] = str(convention.get("channels", "rgb"))
    scale = convention.get("pixel_scale")
    if isinstance(scale, (int, float)) and abs(float(scale) * 255 - 1) > 1e-9:
        raw["validation"].pop("normalization", None)
    raw["edgeq"]["input_convention"] = dict(convention)
