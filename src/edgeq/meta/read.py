"""Read a model's metadata (:class:`ModelMeta`) from the file alone.

Sources, in order:

1. An appended ZIP holding ``edgefirst.json`` (or legacy ``edgefirst.yaml``) and ``labels.txt``:
   edgeq and EdgeFirst TFLite artifacts, and any other file carrying the trailer (HEF, DVM).
2. ONNX ``metadata_props['edgefirst']`` (+ ``labels``, a JSON array).
3. A plain Ultralytics export without EdgeFirst metadata: an ONNX file's ``metadata_props``, or a
   TFLite file's appended ``metadata.json`` (``names``, ``imgsz``, ``task``, ``stride``), combined
   with the model's output shapes into a synthesized v2 description:

   * YOLOv8/11 detect ``[1, 4+nc, N]``: boxes cx,cy,w,h in input pixels (TFLite exports: [0, 1]),
     sigmoid scores applied -> one ``detection`` output, ``per_class``.
   * YOLOv8/11 segment: ``[1, 4+nc+nm, N]`` plus protos ``[1, nm, Hp, Wp]`` (NCHW; NHWC in TFLite).
   * YOLOv5 ``[1, N, 5+nc]``: cx,cy,w,h pixels, objectness, class probabilities -> ``detection``
     with ``score_format: obj_x_class``, ``decoder_version: yolov5``.

Anything else raises :class:`ArtifactError` naming the file, what is missing and what to do.
"""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.errors import ArtifactError
from edgeq.meta.embed import EDGEFIRST_JSON, read_embedded, read_labels
from edgeq.meta.schema import ModelMeta, Quant

_STRIDES = (8, 16, 32)
_HOW_TO_FIX = "convert the model with `edgeq convert`, or pass meta= to edgeq.runtime.load"


@dataclass(frozen=True)
class TensorDesc:
    """Name, shape, dtype and quantization of a model input or output, as the file states it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    quant: Quant | None = None


def read_meta(path: str | Path) -> ModelMeta:
    """The :class:`ModelMeta` of an artifact or ONNX model (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"model file not found: {path}")
    if path.suffix.lower() == ".onnx":
        return _read_onnx(path)
    files = read_embedded(path)
    if EDGEFIRST_JSON in files:
        return _from_edgefirst(json.loads(files[EDGEFIRST_JSON]), read_labels(files), path)
    if "edgefirst.yaml" in files:
        import yaml

        return _from_edgefirst(yaml.safe_load(files["edgefirst.yaml"]), read_labels(files), path)
    if "metadata.json" in files and path.suffix.lower() == ".tflite":
        props = json.loads(files["metadata.json"])
        inputs, outputs = tflite_tensors(path)
        return synthesize_ultralytics(props, inputs, outputs, path, layout="nhwc")
    what = "has no appended ZIP" if not files else f"has an appended ZIP without {EDGEFIRST_JSON} ({sorted(files)})"
    raise ArtifactError(f"{path} {what}, so its outputs cannot be described", _HOW_TO_FIX)


def _from_edgefirst(d: dict[str, Any], labels: list[str], path: Path) -> ModelMeta:
    try:
        return ModelMeta.from_json(d, labels or None)
    except ArtifactError as e:
        raise ArtifactError(f"{path}: {e.what}", e.fix) from None
    except (KeyError, TypeError, ValueError, StopIteration) as e:
        raise ArtifactError(f"{path}: edgefirst.json is malformed ({type(e).__name__}: {e})", _HOW_TO_FIX) from None


# ----------------------------------------------------------------------------- ONNX


def _read_onnx(path: Path) -> ModelMeta:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError/ValidationError variants
        raise ArtifactError(f"cannot parse {path} as ONNX: {e}") from None
    props = {p.key: p.value for p in model.metadata_props}
    if "edgefirst" in props:
        labels = json.loads(props["labels"]) if "labels" in props else []
        return _from_edgefirst(json.loads(props["edgefirst"]), labels, path)
    inputs = [_onnx_desc(v) for v in model.graph.input if v.name not in {i.name for i in model.graph.initializer}]
    outputs = [_onnx_desc(v) for v in model.graph.output]
    return synthesize_ultralytics(props, inputs, outputs, path, layout="nchw")


def _onnx_desc(value: Any) -> TensorDesc:
    from onnx import helper

    t = value.type.tensor_type
    shape = tuple(int(d.dim_value) if d.HasField("dim_value") else -1 for d in t.shape.dim)
    dtype = str(helper.tensor_dtype_to_np_dtype(t.elem_type))
    return TensorDesc(value.name, shape, dtype)


# ----------------------------------------------------------------------------- TFLite


def tflite_tensors(path: Path) -> tuple[list[TensorDesc], list[TensorDesc]]:
    """Input and output descriptions of a TFLite model file."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        interp = Interpreter(model_path=str(path))
    except (ValueError, RuntimeError) as e:
        raise ArtifactError(f"cannot load {path} with LiteRT: {e}") from None
    return describe_interpreter(interp)


def describe_interpreter(interp: Any) -> tuple[list[TensorDesc], list[TensorDesc]]:
    """Inputs and outputs of a LiteRT interpreter, quantization read from the tensors."""
    return [_tflite_desc(d) for d in interp.get_input_details()], [_tflite_desc(d) for d in interp.get_output_details()]


def _tflite_desc(d: dict[str, Any]) -> TensorDesc:
    dtype = np.dtype(d["dtype"]).name
    qp = d.get("quantization_parameters", {})
    scales = [float(s) for s in qp.get("scales", [])]
    zps = [int(z) for z in qp.get("zero_points", [])] or [0] * len(scales)
    quant = None
    if len(scales) == 1:
        quant = Quant(scale=scales[0], zero_point=zps[0], dtype=dtype)
    elif scales:
        quant = Quant(scale=scales, zero_point=zps, dtype=dtype, axis=int(qp.get("quantized_dimension", 0)))
    return TensorDesc(d["name"], tuple(int(s) for s in d["shape"]), dtype, quant)


# ----------------------------------------------------------------------------- Ultralytics


def _names(props: dict[str, Any], path: Path) -> list[str]:
    raw = props.get("names")
    if raw is None:
        return []
    names = ast.literal_eval(raw) if isinstance(raw, str) else raw
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=int)]
    if isinstance(names, list):
        return [str(n) for n in names]
    raise ArtifactError(f"{path}: metadata 'names' is neither a dict nor a list")


def _imgsz(props: dict[str, Any], inp: TensorDesc, layout: str) -> tuple[int, int]:
    raw = props.get("imgsz")
    if raw is not None:
        v = ast.literal_eval(raw) if isinstance(raw, str) else raw
        v = [v, v] if isinstance(v, int) else list(v)
        return int(v[0]), int(v[1])
    hw = inp.shape[1:3] if layout == "nhwc" else inp.shape[2:4]
    return int(hw[0]), int(hw[1])


def _anchor_count(imgsz: tuple[int, int], strides: tuple[int, ...] = _STRIDES) -> int:
    return sum((imgsz[0] // s) * (imgsz[1] // s) for s in strides)


def synthesize_ultralytics(
    props: dict[str, Any],
    inputs: list[TensorDesc],
    outputs: list[TensorDesc],
    path: Path,
    layout: str,
) -> ModelMeta:
    """A v2 description of a plain Ultralytics YOLOv5/v8/11 export from its metadata and shapes.

    Args:
        props: Ultralytics metadata (``names``, ``imgsz``, ``task``, ...; values may be strings).
        inputs, outputs: the model's tensors.
        path: the file (for messages).
        layout: ``nchw`` (ONNX) or ``nhwc`` (TFLite) input and protos layout.
    """
    if not inputs or not outputs:
        raise ArtifactError(f"{path} has no inputs or outputs")
    names = _names(props, path)
    if not names and "task" not in props:
        raise ArtifactError(
            f"{path} carries neither edgefirst metadata nor Ultralytics metadata (names, imgsz, task)",
            _HOW_TO_FIX,
        )
    imgsz = _imgsz(props, inputs[0], layout)
    task = str(props.get("task", "detect"))
    det_out, proto_out = _split_outputs(outputs, path)
    nm = 0 if proto_out is None else min(d for d in proto_out.shape[1:])
    if task == "segment" and proto_out is None:
        raise ArtifactError(f"{path}: task is 'segment' but no 4-D protos output was found", _HOW_TO_FIX)
    version, fax, nc = _classify_head(det_out, len(names), nm, imgsz, path)
    names = names or [str(i) for i in range(nc)]
    # Ultralytics ONNX boxes are input pixels; its TFLite exports divide them by imgsz.
    detection = _detection_json(det_out, version, fax, normalized=layout == "nhwc")
    outs = [detection]
    if proto_out is not None:
        outs.append(_protos_json(proto_out, imgsz, layout))
    d = {
        "schema_version": 2,
        "decoder_version": version,
        "nms": "class_aware",
        "name": Path(path).stem,
        "description": str(props.get("description", "")),
        "author": str(props.get("author", "")),
        "dataset": {"classes": names},
        "input": {"shape": list(inputs[0].shape), "cameraadaptor": "rgb"},
        "model": {"task": "segmentation" if proto_out is not None else "detection"},
        "validation": {"preprocessing": "letterbox", "normalization": "unsigned"},
        "outputs": outs,
    }
    meta = ModelMeta.from_json(d)
    meta.input_dtype = inputs[0].dtype
    return meta


def _detection_json(det: TensorDesc, version: str, fax: int, normalized: bool) -> dict[str, Any]:
    """The ``detection`` output entry for a flat prediction tensor with features on axis ``fax``."""
    dshape = [{"batch": 1}, {"num_features": det.shape[fax]}, {"num_boxes": det.shape[3 - fax]}]
    return {
        "name": det.name,
        "type": "detection",
        "decoder": "ultralytics",
        "shape": list(det.shape),
        "dshape": dshape if fax == 1 else [dshape[0], dshape[2], dshape[1]],
        "dtype": det.dtype,
        "quantization": det.quant.to_json() if det.quant else None,
        "score_format": "obj_x_class" if version == "yolov5" else "per_class",
        "normalized": normalized,
    }


def _split_outputs(outputs: list[TensorDesc], path: Path) -> tuple[TensorDesc, TensorDesc | None]:
    """The 3-D prediction tensor and the optional 4-D protos tensor."""
    det = [o for o in outputs if len(o.shape) == 3]
    protos = [o for o in outputs if len(o.shape) == 4]
    if len(det) != 1 or len(protos) > 1:
        shapes = [list(o.shape) for o in outputs]
        raise ArtifactError(
            f"{path}: outputs {shapes} are not an Ultralytics export (one [1,F,N] prediction tensor,"
            " optionally one [1,nm,Hp,Wp] protos tensor)",
            _HOW_TO_FIX,
        )
    return det[0], protos[0] if protos else None


def _classify_head(
    det: TensorDesc, nc: int, nm: int, imgsz: tuple[int, int], path: Path
) -> tuple[str, int, int]:
    """(decoder_version, feature axis, nc) of a prediction tensor ``[1, a, b]``.

    The anchor count must match the input size (strides 8/16/32, or up to 64 for P6 models; three
    anchors per cell for YOLOv5), which also rejects raw heads such as YOLOX ``[1, 3549, 85]``.
    """
    _, a, b = det.shape
    v8_n = {_anchor_count(imgsz, _STRIDES), _anchor_count(imgsz, _STRIDES + (64,))}
    v5_n = {3 * n for n in v8_n}
    if b in v8_n and (a == 4 + nc + nm if nc else a > 4 + nm):
        return _v8_version(), 1, a - 4 - nm
    if a in v5_n and (b == 5 + nc + nm if nc else b > 5 + nm):
        return "yolov5", 2, b - 5 - nm
    raise ArtifactError(
        f"{path}: output {det.name!r} {list(det.shape)} matches neither YOLOv8/11 [1, 4+nc(+nm), N]"
        f" nor YOLOv5 [1, 3N, 5+nc(+nm)] with nc={nc or '?'}, nm={nm}, N={sorted(v8_n)} for imgsz {list(imgsz)}",
        "only Ultralytics YOLOv5/v8/11 exports can be described without edgefirst metadata; " + _HOW_TO_FIX,
    )


def _v8_version() -> str:
    # YOLOv8 and YOLO11 share the head and its decoding; the file does not say which it is.
    return "yolov8"


def _protos_json(p: TensorDesc, imgsz: tuple[int, int], layout: str) -> dict[str, Any]:
    if layout == "nhwc":
        _, h, w, nm = p.shape
        dshape = [{"batch": 1}, {"height": h}, {"width": w}, {"num_protos": nm}]
    else:
        _, nm, h, w = p.shape
        dshape = [{"batch": 1}, {"num_protos": nm}, {"height": h}, {"width": w}]
    return {
        "name": p.name,
        "type": "protos",
        "decoder": "ultralytics",
        "shape": list(p.shape),
        "dshape": dshape,
        "dtype": p.dtype,
        "stride": imgsz[0] // h,
        "quantization": p.quant.to_json() if p.quant else None,
    }
