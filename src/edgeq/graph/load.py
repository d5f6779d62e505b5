"""Load an ONNX model, check it is usable, normalize it, and read its Ultralytics metadata."""
from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from onnx import shape_inference

from edgeq.errors import ModelError


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


def _parse_names(text: str | None) -> list[str]:
    if not text:
        return []
    try:
        value: Any = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return []
    if isinstance(value, dict):
        return [str(value[k]) for k in sorted(value, key=int)]
    return [str(v) for v in value]


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value_info.type.tensor_type.shape.dim]


def read_onnx(path: str | Path) -> tuple[onnx.ModelProto, str]:
    """Read and check an ONNX file; returns the model and the sha256 of its bytes."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    data = path.read_bytes()
    try:
        model = onnx.load_from_string(data)
    except Exception as e:  # protobuf raises several unrelated types
        raise ModelError(
            f"{path} is not a valid ONNX model ({type(e).__name__})",
            "export the model to ONNX first, e.g. `yolo export model=yolov8n.pt format=onnx`",
        ) from e
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
        v = ast.literal_eval(imgsz_text)
        imgsz = (int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) else (int(v), int(v))
    elif isinstance(dims[2], int) and isinstance(dims[3], int) and dims[2] > 0:
        imgsz = (dims[2], dims[3])
    else:
        imgsz = (640, 640)
    names = _parse_names(props.get("names"))
    task = props.get("task", "")
    if not task:
        task = "segment" if len(model.graph.output) == 2 else "detect"
    return ModelInfo(
        task=task,
        names=names,
        imgsz=imgsz,
        stride=int(props.get("stride", 32)),
        input_name=inp.name,
        source_sha256=sha256,
        props=props,
    )


def normalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constants and dead code (onnxslim), keeping tensor names, then infer every shape."""
    import onnxslim

    try:
        slim = onnxslim.slim(model)
    except Exception:  # onnxslim cannot handle every graph; the unsimplified one still works
        slim = model
    slim.ClearField("metadata_props")
    slim.metadata_props.extend(model.metadata_props)
    return shape_inference.infer_shapes(slim, strict_mode=False, data_prop=True)


def load_model(path: str | Path) -> LoadedModel:
    """Read, check and normalize an ONNX model; the entry point of the ``graph`` stage."""
    path = Path(path)
    model, sha = read_onnx(path)
    info = model_info(model, path, sha)
    _fix_batch(model, _image_input(model, path), info.imgsz)
    if info.task not in ("detect", "segment"):
        raise ModelError(
            f"{path}: task {info.task!r} is not supported yet (detect and segment are)",
        )
    return LoadedModel(model=normalize(model), info=info, path=path)
