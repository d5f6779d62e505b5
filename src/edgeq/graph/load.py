"""Load an ONNX model, check it is usable, normalize it, and read its Ultralytics metadata.

Untrusted bytes: a file larger than a protobuf can be (``MAX_ONNX_BYTES``, 2 GiB; bigger models
keep their weights as external data) or whose first bytes are not an ONNX ``ModelProto`` field is
refused before it is read; empty files, files that do not parse, graphs without nodes or without
one image input, and malformed Ultralytics metadata (``imgsz``, ``stride``, ``names``) are
:class:`ModelError` naming the file and what is wrong.
"""
from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import shape_inference

from edgeq.errors import ModelError

#: A protobuf message (an ONNX file without external data) is at most 2 GiB.
MAX_ONNX_BYTES = 2 << 30
_EXPORT_FIX = "export the model to ONNX first, e.g. `yolo export model=yolov8n.pt format=onnx`"
# ModelProto field number -> wire type (0 varint, 2 length-delimited), for the first-bytes check.
_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}


@dataclass(frozen=True)
class ModelInfo:
    """What the exporter wrote about the model (Ultralytics ``metadata_props``), with defaults.

    Attributes:
        task: detect | segment (pose/obb/classify are reported as such and rejected later).
        names: class names, index = class id.
        imgsz: model input (height, width).
        stride: the largest stride.
        input_name: the single image input.
        source_sha256: hash of the ONNX file bytes (provenance).
        props: every metadata_props entry, verbatim.
    """

    task: str
    names: list[str]
    imgsz: tuple[int, int]
    stride: int
    input_name: str
    source_sha256: str
    props: dict[str, str] = field(default_factory=dict)

    @property
    def nc(self) -> int:
        return len(self.names)


@dataclass
class LoadedModel:
    """A normalized float ONNX model plus what we know about it."""

    model: onnx.ModelProto
    info: ModelInfo
    path: Path


def _parse_names(text: str | None, path: Path | None = None) -> list[str]:
    if not text:
        return []
    try:
        value: Any = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            return []
    if isinstance(value, dict):
        if not all(isinstance(k, int) or (isinstance(k, str) and k.strip().isdigit()) for k in value):
            raise ModelError(f"{path}: metadata 'names' has keys that are not class indices", _EXPORT_FIX)
        return [str(value[k]) for k in sorted(value, key=int)]
    if not isinstance(value, (list, tuple)):
        raise ModelError(f"{path}: metadata 'names' is {type(value).__name__}, expected a dict or list of class names", _EXPORT_FIX)
    return [str(v) for v in value]


def _literal_int(text: str, key: str, path: Path) -> Any:
    """A metadata value written as a Python literal (``"[640, 640]"``, ``"32"``)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ModelError(f"{path}: metadata {key!r} is {text[:60]!r}, not a number or list of numbers", _EXPORT_FIX) from None


def _looks_like_onnx(head: bytes) -> bool:
    """Whether ``head`` starts with a ModelProto field tag (every exporter writes ir_version first)."""
    tag, shift = 0, 0
    for i, b in enumerate(head[:5]):
        tag |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return _MODEL_FIELDS.get(tag >> 3) == tag & 7
    return False


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value_info.type.tensor_type.shape.dim]


def read_onnx(path: str | Path) -> tuple[onnx.ModelProto, str]:
    """Read and check an ONNX file; returns the model and the sha256 of its bytes."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        size = path.stat().st_size
        if size > MAX_ONNX_BYTES:
            raise ModelError(
                f"{path} is {size / 2**30:.1f} GiB, larger than an ONNX protobuf can be (2 GiB)",
                "models this large keep their weights as external data; pass the .onnx that references them",
            )
        if size == 0:
            raise ModelError(f"{path} is empty (0 bytes)", "check that the export finished")
        with open(path, "rb") as f:
            if not _looks_like_onnx(f.read(8)):
                raise ModelError(f"{path} is not a valid ONNX model (its first bytes are not an ONNX protobuf)", _EXPORT_FIX)
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        model = onnx.load_from_string(data)
    except Exception as e:  # protobuf raises several unrelated types
        raise ModelError(f"{path} is not a valid ONNX model ({type(e).__name__})", _EXPORT_FIX) from e
    if not model.HasField("graph"):
        raise ModelError(f"{path} is not a valid ONNX model (it has no graph)", _EXPORT_FIX)
    if not model.graph.node:
        raise ModelError(f"{path} has an empty graph", "check that the export finished")
    return model, hashlib.sha256(data).hexdigest()


def _image_input(model: onnx.ModelProto, path: Path) -> onnx.ValueInfoProto:
    init = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init]
    if len(inputs) != 1:
        raise ModelError(f"{path} has {len(inputs)} inputs; edgeq expects one image input")
    dims = _dims(inputs[0])
    if len(dims) != 4 or dims[1] not in (1, 3):
        raise ModelError(f"{path}: input {inputs[0].name!r} has shape {dims}; expected [1, 3, H, W] (NCHW)")
    return inputs[0]


def _fix_batch(model: onnx.ModelProto, inp: onnx.ValueInfoProto, imgsz: tuple[int, int]) -> None:
    """Pin a dynamic batch/size to 1 x imgsz: INT8 targets need static shapes."""
    dims = inp.type.tensor_type.shape.dim
    for d, v in zip(dims, (1, dims[1].dim_value or 3, imgsz[0], imgsz[1])):
        if not d.HasField("dim_value") or d.dim_value <= 0:
            d.Clear()
            d.dim_value = v
    for out in model.graph.output:  # let shape inference recompute output shapes
        for d in out.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.Clear()


def model_info(model: onnx.ModelProto, path: Path, sha256: str) -> ModelInfo:
    """Read Ultralytics metadata (names, imgsz, task, stride) with sensible fallbacks."""
    props = {p.key: p.value for p in model.metadata_props}
    inp = _image_input(model, path)
    dims = _dims(inp)
    imgsz_text = props.get("imgsz")
    if imgsz_text:
        v = _literal_int(imgsz_text, "imgsz", path)
        v = list(v) if isinstance(v, (list, tuple)) else [v, v]
        if len(v) not in (1, 2) or not all(isinstance(x, int) and not isinstance(x, bool) and 0 < x <= 1 << 16 for x in v):
            raise ModelError(f"{path}: metadata 'imgsz' is {imgsz_text[:60]!r}, expected one or two positive integers", _EXPORT_FIX)
        imgsz = (v[0], v[-1])
    elif isinstance(dims[2], int) and isinstance(dims[3], int) and dims[2] > 0 and dims[3] > 0:
        imgsz = (dims[2], dims[3])
    else:
        imgsz = (640, 640)
    names = _parse_names(props.get("names"), path)
    task = props.get("task", "")
    if not task:
        task = "segment" if len(model.graph.output) == 2 else "detect"
    stride = _literal_int(props["stride"], "stride", path) if "stride" in props else 32
    if not isinstance(stride, int) or isinstance(stride, bool) or not 0 < stride <= 1024:
        raise ModelError(f"{path}: metadata 'stride' is {props['stride'][:60]!r}, expected a positive integer", _EXPORT_FIX)
    return ModelInfo(
        task=task,
        names=names,
        imgsz=imgsz,
        stride=stride,
        input_name=inp.name,
        source_sha256=sha256,
        props=props,
    )


def normalize(model: onnx.ModelProto, path: Path | None = None) -> onnx.ModelProto:
    """Fold constants and dead code (onnxslim), keeping tensor names, then infer every shape."""
    import onnxslim

    try:
        slim = onnxslim.slim(model)
    except Exception:  # onnxslim cannot handle every graph; the unsimplified one still works
        slim = model
    slim.ClearField("metadata_props")
    slim.metadata_props.extend(model.metadata_props)
    try:
        return shape_inference.infer_shapes(slim, strict_mode=False, data_prop=True)
    except Exception as e:  # InferenceError, ValidationError, or protobuf errors on a malformed graph
        raise ModelError(
            f"{path or 'the model'}: ONNX shape inference fails ({type(e).__name__}: {str(e)[:200]})",
            "check the model with onnx.checker.check_model, or export it again",
        ) from None


def load_model(path: str | Path) -> LoadedModel:
    """Read, check and normalize an ONNX model; the entry point of the ``graph`` stage."""
    path = Path(path)
    model, sha = read_onnx(path)
    info = model_info(model, path, sha)
    _fix_batch(model, _image_input(model, path), info.imgsz)
    _check_weights(model, path)
    return LoadedModel(model=normalize(model, path), info=info, path=path)


def _check_weights(model: onnx.ModelProto, path: Path) -> None:
    """Refuse float weights that are NaN or infinite: a damaged file converts to an artifact that
    finds nothing, with no other sign of what went wrong."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
            continue
        try:
            values = numpy_helper.to_array(init)
        except (ValueError, TypeError) as e:  # data that does not fill its declared dims
            raise ModelError(f"{path}: weight {init.name!r} is malformed ({e})", "export the model again") from None
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise ModelError(f"{path}: weight {init.name!r} holds {bad} NaN or infinite value(s) of {values.size}",
                             "the file is damaged or the training diverged: export the model again")
