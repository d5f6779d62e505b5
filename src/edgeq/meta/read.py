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
   * YOLOv8/11 pose ``[1, 4+nc+nk*ndim, N]`` (``task: pose``, ``kpt_shape: [nk, ndim]``): keypoint
     columns x, y(, visibility) in input pixels after the class scores; ``kpt_shape`` is kept as
     the edgeq extension field ``edgeq.kpt_shape``, which :mod:`edgeq.decode.flat` reads.
   * YOLOv5 ``[1, N, 5+nc]``: cx,cy,w,h pixels, objectness, class probabilities -> ``detection``
     with ``score_format: obj_x_class``, ``decoder_version: yolov5``.
   * Megvii YOLOX raw head ``[1, N, 5+nc]`` with its ``decode``/``preprocess`` metadata ->
     ``detection`` with ``encoding: yolox``, ``decoder_version: yolox``, the input convention
     (BGR, 0..255, bottom/right pad) in ``edgeq.input_convention``.

Anything else raises :class:`ArtifactError` naming the file, what is missing and what to do.

Every input is bounded before it is parsed (see :mod:`edgeq.meta.embed` for the ZIP caps):
``edgefirst.json`` (from the ZIP or ONNX ``metadata_props``) at most ``MAX_JSON_BYTES`` and
``MAX_JSON_DEPTH`` levels of nesting, strict UTF-8, a JSON object whose fields have the types
:meth:`ModelMeta.from_json` checks; labels at most ``MAX_LABELS``. Malformed input of any kind is
an :class:`ArtifactError` naming the file and the field, never another exception.
"""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.errors import ArtifactError
from edgeq.meta.embed import (
    EDGEFIRST_JSON,
    EDGEFIRST_YAML,
    LABELS_TXT,
    MAX_LABELS,
    MEMBER_CAPS,
    METADATA_JSON,
    parse_labels,
    read_appended,
)
from edgeq.meta.schema import ModelMeta, Quant
from edgeq.meta.verify import check_tflite_structure, json_depth

_STRIDES = (8, 16, 32)
_HOW_TO_FIX = "convert the model with `edgeq convert`, or pass meta= to edgeq.runtime.load"
#: Largest edgefirst.json read (ZIP member or ONNX metadata_props value); see edgeq.meta.embed.
MAX_JSON_BYTES = MEMBER_CAPS[EDGEFIRST_JSON]
#: Deepest nesting accepted in metadata JSON (edgeq's own edgefirst.json nests 6 levels).
MAX_JSON_DEPTH = 64
#: Largest ONNX file read for its metadata (the protobuf limit).
MAX_ONNX_BYTES = 2 << 30
_BAD_META_FIX = "the metadata is damaged or was written by another tool; re-run `edgeq convert` on the source model"


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
    found = read_appended(path, (EDGEFIRST_JSON, EDGEFIRST_YAML, LABELS_TXT, METADATA_JSON))
    if found is None:
        raise ArtifactError(f"{path} has no appended ZIP, so its outputs cannot be described", _HOW_TO_FIX)
    zipped, files = found
    labels = parse_labels(files.get(LABELS_TXT, b""), f"{path}: {LABELS_TXT}")
    if EDGEFIRST_JSON in files:
        return _from_edgefirst(load_json(files[EDGEFIRST_JSON], f"{path}: {EDGEFIRST_JSON}"), labels, path)
    if EDGEFIRST_YAML in files:
        return _from_edgefirst(_load_yaml(files[EDGEFIRST_YAML], f"{path}: {EDGEFIRST_YAML}"), labels, path)
    if METADATA_JSON in files and path.suffix.lower() == ".tflite":
        props = load_json(files[METADATA_JSON], f"{path}: {METADATA_JSON}")
        if not isinstance(props, dict):
            raise ArtifactError(f"{path}: {METADATA_JSON} is {_kind(props)}, expected a JSON object", _BAD_META_FIX)
        inputs, outputs = tflite_tensors(path)
        return _synthesize(props, inputs, outputs, path, layout="nhwc")
    raise ArtifactError(
        f"{path} has an appended ZIP without {EDGEFIRST_JSON} ({sorted(zipped.names)}), so its outputs cannot be described",
        _HOW_TO_FIX,
    )


def parse_edgefirst(data: bytes | str, labels: list[str] | None = None, path: str | Path = EDGEFIRST_JSON) -> ModelMeta:
    """A :class:`ModelMeta` from the bytes of an edgefirst.json (bounded and type-checked).

    Raises:
        ArtifactError: naming ``path`` and the field that is wrong.
    """
    return _from_edgefirst(load_json(data, f"{path}: {EDGEFIRST_JSON}"), labels or [], Path(path))


def load_json(data: bytes | str, where: str, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse untrusted metadata JSON: bounded size and nesting, strict UTF-8.

    Raises:
        ArtifactError: naming ``where`` (file and member) and what is wrong.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if len(raw) > max_bytes:
        raise ArtifactError(f"{where} is {len(raw)} bytes, more than the {max_bytes} edgeq reads", _BAD_META_FIX)
    depth = json_depth(raw, max_depth)
    if depth > max_depth:
        raise ArtifactError(f"{where} nests more than {max_depth} levels deep", _BAD_META_FIX)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{where} is not UTF-8 text (byte {e.start}: {e.reason})", _BAD_META_FIX) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{where} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})", _BAD_META_FIX) from None
    except (ValueError, RecursionError) as e:  # e.g. an integer beyond Python's digit limit
        raise ArtifactError(f"{where} is not valid JSON ({e})", _BAD_META_FIX) from None


def _load_yaml(data: bytes, where: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{where} is not UTF-8 text (byte {e.start}: {e.reason})", _BAD_META_FIX) from None
    except (yaml.YAMLError, RecursionError, ValueError) as e:
        raise ArtifactError(f"{where} is not valid YAML ({type(e).__name__})", _BAD_META_FIX) from None


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(type(v), f"a {type(v).__name__}")


def _from_edgefirst(d: Any, labels: list[str], path: Path) -> ModelMeta:
    try:
        return ModelMeta.from_json(d, labels or None)
    except ArtifactError as e:
        raise ArtifactError(f"{path}: {e.what}", e.fix) from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, StopIteration, RecursionError) as e:
        raise ArtifactError(f"{path}: edgefirst.json is malformed ({type(e).__name__}: {e})", _HOW_TO_FIX) from None


def _synthesize(props: dict[str, Any], inputs: list[TensorDesc], outputs: list[TensorDesc], path: Path, layout: str) -> ModelMeta:
    """:func:`synthesize_ultralytics`, with malformed metadata values reported as ArtifactError."""
    try:
        return synthesize_ultralytics(props, inputs, outputs, path, layout)
    except ArtifactError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError, SyntaxError, RecursionError, MemoryError) as e:
        raise ArtifactError(
            f"{path}: its Ultralytics metadata is malformed ({type(e).__name__}: {str(e)[:200]})", _BAD_META_FIX
        ) from None


# ----------------------------------------------------------------------------- ONNX


def _read_onnx(path: Path) -> ModelMeta:
    import onnx

    size = path.stat().st_size
    if size > MAX_ONNX_BYTES:
        raise ArtifactError(f"{path} is {size / 2**30:.1f} GiB, larger than an ONNX protobuf can be (2 GiB)")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError/ValidationError variants
        raise ArtifactError(f"cannot parse {path} as ONNX: {e}") from None
    props = {p.key: p.value for p in model.metadata_props}
    if "edgefirst" in props:
        labels: Any = load_json(props["labels"], f"{path}: metadata_props['labels']") if "labels" in props else []
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels) or len(labels) > MAX_LABELS:
            raise ArtifactError(
                f"{path}: metadata_props['labels'] is not a JSON list of at most {MAX_LABELS} strings", _BAD_META_FIX
            )
        return _from_edgefirst(load_json(props["edgefirst"], f"{path}: metadata_props['edgefirst']"), labels, path)
    try:
        inputs = [_onnx_desc(v) for v in model.graph.input if v.name not in {i.name for i in model.graph.initializer}]
        outputs = [_onnx_desc(v) for v in model.graph.output]
    except (KeyError, ValueError, TypeError) as e:
        raise ArtifactError(f"{path}: an input or output has an unknown element type ({type(e).__name__}: {e})") from None
    return _synthesize(props, inputs, outputs, path, layout="nchw")


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
        check_tflite_structure(path.read_bytes(), str(path))  # what would crash LiteRT instead of raising
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e.strerror or e}") from None
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


def _literal(raw: Any, key: str, path: Path) -> Any:
    """A metadata value that may be written as a Python literal string ("{0: 'person'}", "[640, 640]")."""
    if not isinstance(raw, str):
        return raw
    if len(raw) > MAX_JSON_BYTES:
        raise ArtifactError(f"{path}: metadata {key!r} is {len(raw)} characters long", _BAD_META_FIX)
    try:
        return ast.literal_eval(raw)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
        raise ArtifactError(f"{path}: metadata {key!r} is not a literal ({type(e).__name__})", _BAD_META_FIX) from None


def _names(props: dict[str, Any], path: Path) -> list[str]:
    raw = props.get("names")
    if raw is None:
        return []
    names = _literal(raw, "names", path)
    if isinstance(names, (dict, list)) and len(names) > MAX_LABELS:
        raise ArtifactError(f"{path}: metadata 'names' lists {len(names)} classes, more than {MAX_LABELS}", _BAD_META_FIX)
    if isinstance(names, dict):
        if not all(isinstance(k, int) or (isinstance(k, str) and k.strip().isdigit()) for k in names):
            raise ArtifactError(f"{path}: metadata 'names' has keys that are not class indices", _BAD_META_FIX)
        return [str(names[k]) for k in sorted(names, key=int)]
    if isinstance(names, list):
        return [str(n) for n in names]
    raise ArtifactError(f"{path}: metadata 'names' is neither a dict nor a list")


def _imgsz(props: dict[str, Any], inp: TensorDesc, layout: str, path: Path | None = None) -> tuple[int, int]:
    raw = props.get("imgsz")
    if raw is not None:
        v = _literal(raw, "imgsz", path or Path("?"))
        v = [v, v] if isinstance(v, int) else v
        if not isinstance(v, (list, tuple)) or len(v) not in (1, 2) or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v):
            raise ArtifactError(f"{path}: metadata 'imgsz' is {raw!r:.60}, expected one or two positive integers", _BAD_META_FIX)
        return int(v[0]), int(v[-1])
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
    imgsz = _imgsz(props, inputs[0], layout, path)
    megvii = _megvii_yolox(props, inputs, outputs, names, imgsz, path)
    if megvii is not None:
        return megvii
    task = str(props.get("task", "detect"))
    det_out, proto_out = _split_outputs(outputs, path)
    nm = 0 if proto_out is None else min(d for d in proto_out.shape[1:])
    if task == "segment" and proto_out is None:
        raise ArtifactError(f"{path}: task is 'segment' but no 4-D protos output was found", _HOW_TO_FIX)
    if _is_end_to_end(det_out, nm, props, imgsz):
        return _synthesize_end_to_end(props, inputs, det_out, proto_out, names, imgsz, path, layout)
    kpt_shape = _kpt_shape(props, path) if task == "pose" else None
    # pose: keypoint columns follow the class scores ([1, 4+nc+nk*ndim, N]); counted like extra features
    extra = nm + (kpt_shape[0] * kpt_shape[1] if kpt_shape else 0)
    version, fax, nc = _classify_head(det_out, len(names), extra, imgsz, path)
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
        "model": {"task": "pose" if kpt_shape else "segmentation" if proto_out is not None else "detection"},
        "validation": {"preprocessing": "letterbox", "normalization": "unsigned"},
        "outputs": outs,
    }
    if kpt_shape:
        # edgeq extension: the keypoint layout of the flat output's trailing columns (decode.flat)
        d["edgeq"] = {"kpt_shape": list(kpt_shape)}
    meta = ModelMeta.from_json(d)
    meta.input_dtype = inputs[0].dtype
    return meta


def _megvii_yolox(props: dict[str, Any], inputs: list[TensorDesc], outputs: list[TensorDesc], names: list[str],
                  imgsz: tuple[int, int], path: Path) -> ModelMeta | None:
    """A Megvii YOLOX raw-head export ``[1, N, 5+nc]`` (one row per grid cell at strides 8/16/32),
    recognised by its own ``decode`` metadata (``xy=(o[:2]+grid)*stride, wh=exp(o[2:4])*stride``);
    None for anything else.

    ``preprocess`` (e.g. ``BGR; float 0..255; top-left letterbox pad 114``) gives the input
    convention, written as ``input.cameraadaptor`` and the ``edgeq.input_convention`` extension
    field (version 1, :class:`edgeq.calib.preprocess.InputConvention`). Megvii's head applies the
    sigmoid to objectness and classes before the concat (``activation_applied``) unless ``decode``
    asks for one. NMS mode and IoU are the yolox family's (``decoder_version: yolox``).
    """
    decode = str(props.get("decode", "")).replace(" ", "").lower()
    if "exp(" not in decode or "grid" not in decode or len(outputs) != 1 or len(outputs[0].shape) != 3:
        return None
    det = outputs[0]
    _, n, f = det.shape
    counts = {_anchor_count(imgsz, _STRIDES), _anchor_count(imgsz, _STRIDES + (64,))}
    if n not in counts or f < 6 or (names and f != 5 + len(names)):
        return None
    pre = str(props.get("preprocess", "")).lower()
    raw_pixels = "0..255" in pre or "0-255" in pre or "not /255" in pre
    convention = {
        "version": 1,
        # the image at the top-left corner, as YOLOX's preproc: the padding below and to the right
        "pad": "bottom_right" if any(w in pre for w in ("top-left", "top left", "bottom", "right")) else "center",
        "pad_value": 114,
        "channels": "bgr" if "bgr" in pre else "rgb",
        "pixel_scale": 1.0 if raw_pixels else 1 / 255,
    }
    activation = {"activation_required": "sigmoid"} if "sigmoid" in decode else {"activation_applied": "sigmoid"}
    validation: dict[str, Any] = {"preprocessing": "letterbox"}
    if not raw_pixels:
        validation["normalization"] = "unsigned"
    d = {
        "schema_version": 2,
        "decoder_version": "yolox",
        "nms": "class_aware",
        "name": Path(path).stem,
        "description": str(props.get("description", "")),
        "author": str(props.get("author", "")),
        "dataset": {"classes": names or [str(i) for i in range(f - 5)]},
        "input": {"shape": list(inputs[0].shape), "cameraadaptor": convention["channels"]},
        "model": {"task": "detection"},
        "validation": validation,
        "edgeq": {"input_convention": convention},
        "outputs": [{
            "name": det.name, "type": "detection", "decoder": "yolox", "encoding": "yolox",
            "score_format": "obj_x_class", "normalized": False, "shape": list(det.shape),
            "dshape": [{"batch": 1}, {"num_boxes": n}, {"num_features": f}], "dtype": det.dtype,
            "quantization": det.quant.to_json() if det.quant else None, **activation,
        }],
    }
    meta = ModelMeta.from_json(d)
    meta.input_dtype = inputs[0].dtype
    return meta


def _kpt_shape(props: dict[str, Any], path: Path) -> tuple[int, int]:
    """Ultralytics' ``kpt_shape`` of a pose export: (keypoints, 2 or 3 values each)."""
    raw = props.get("kpt_shape")
    v = _literal(raw, "kpt_shape", path) if raw is not None else None
    if (not isinstance(v, (list, tuple)) or len(v) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in v)
            or not 0 < v[0] <= 1000 or v[1] not in (2, 3)):
        raise ArtifactError(f"{path}: task is 'pose' but metadata 'kpt_shape' is {raw!r:.60}, expected [keypoints, 2 or 3]",
                            _BAD_META_FIX)
    return int(v[0]), int(v[1])


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


# ----------------------------------------------------------------------------- end-to-end (YOLO26)


def _is_end_to_end(det: TensorDesc, nm: int, props: dict[str, Any], imgsz: tuple[int, int]) -> bool:
    """An end-to-end (NMS-free) export: ``[1, K, 6+nm]`` rows ``x1, y1, x2, y2, score, class(, coefs)``.

    Told apart from a YOLOv5 ``[1, 3N, 5+nc]`` with one class by ``end2end`` in the metadata or by
    a row count that is no anchor count for the input size.
    """
    _, k, f = det.shape
    if f != 6 + nm or k <= 0:
        return False
    flagged = str(props.get("end2end", "")).strip().lower() == "true"
    counts = {_anchor_count(imgsz, _STRIDES), _anchor_count(imgsz, _STRIDES + (64,))}
    return flagged or k not in counts | {3 * n for n in counts}


def _synthesize_end_to_end(props: dict[str, Any], inputs: list[TensorDesc], det: TensorDesc, protos: TensorDesc | None,
                           names: list[str], imgsz: tuple[int, int], path: Path, layout: str) -> ModelMeta:
    """The v2 description of an end-to-end YOLO26 export: one ``detections`` output ``[1, K, 6(+nm)]``,
    ``decoder_version: yolo26``, ``model.end2end: true``, ``validation.nms: none`` (EdgeFirst's rule
    for end-to-end models; the root HAL ``nms`` mode is omitted, as HAL does for them)."""
    _, k, f = det.shape
    detections = {
        "name": det.name,
        "type": "detections",
        "decoder": "ultralytics",
        "shape": list(det.shape),
        "dshape": [{"batch": 1}, {"num_boxes": k}, {"num_features": f}],
        "dtype": det.dtype,
        "quantization": det.quant.to_json() if det.quant else None,
        # Ultralytics ONNX boxes are input pixels; its TFLite exports divide them by imgsz.
        "normalized": layout == "nhwc",
    }
    outs = [detections] + ([_protos_json(protos, imgsz, layout)] if protos is not None else [])
    d = {
        "schema_version": 2,
        "decoder_version": "yolo26",
        "name": Path(path).stem,
        "description": str(props.get("description", "")),
        "author": str(props.get("author", "")),
        "dataset": {"classes": names},
        "input": {"shape": list(inputs[0].shape), "cameraadaptor": "rgb"},
        "model": {"task": "segmentation" if protos is not None else "detection", "end2end": True},
        "validation": {"nms": "none", "preprocessing": "letterbox", "normalization": "unsigned"},
        "outputs": outs,
    }
    meta = ModelMeta.from_json(d)
    meta.input_dtype = inputs[0].dtype
    return meta
