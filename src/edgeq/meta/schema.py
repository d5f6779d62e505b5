"""EdgeFirst metadata schema v2 (``edgefirst.json``) as typed data, plus edgeq's own section.

Only the fields a decoder needs are typed; everything else in the JSON is kept verbatim in
``ModelMeta.raw`` so a round trip loses nothing. See ``../shared/docs/edgefirst-reference.md``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgeq.errors import ArtifactError

SCHEMA_VERSION = 2


@dataclass(frozen=True)
class Quant:
    """Quantization of one physical output: ``real = scale * (q - zero_point)``."""

    scale: float | list[float]
    zero_point: int | list[int] = 0
    dtype: str = "int8"
    axis: int | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"scale": self.scale, "zero_point": self.zero_point, "dtype": self.dtype}
        if self.axis is not None:
            d["axis"] = self.axis
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any] | list | None, where: str = "quantization") -> "Quant | None":
        """Parse a quantization entry; a wrongly typed field raises :class:`ArtifactError` naming it."""
        if d is None:
            return None
        if isinstance(d, list):  # schema v1 tuple [scale, zp]
            if not 1 <= len(d) <= 2 or not _is_num(d[0]) or (len(d) > 1 and not _is_int(d[1])):
                raise _bad(where, d, "[scale, zero_point] (a number and an integer)")
            return cls(scale=float(d[0]), zero_point=int(d[1]) if len(d) > 1 else 0)
        if not isinstance(d, dict):
            raise _bad(where, d, "an object {scale, zero_point, dtype}")
        if "scale" not in d:
            raise ArtifactError(f"edgefirst.json field {where} has no 'scale'", _SCHEMA_FIX)
        return cls(
            scale=_field(d, "scale", where, _is_scale, "a number or a non-empty list of numbers"),
            zero_point=_field(d, "zero_point", where, _is_zero_point, "an integer or a list of integers", 0),
            dtype=_field(d, "dtype", where, _is_str, "a string", "int8"),
            axis=_field(d, "axis", where, _is_int, "an integer"),
        )


def _dshape_to_json(dshape: list[tuple[str, int]]) -> list[dict[str, int]]:
    return [{k: int(v)} for k, v in dshape]


def _dshape_from_json(d: Any, where: str = "dshape") -> list[tuple[str, int]]:
    if not d:
        if d is None or isinstance(d, (list, dict)):
            return []
        raise _bad(where, d, "a list of {name: size} objects")
    if isinstance(d, dict):  # v1 map style
        if not all(isinstance(k, str) and _is_int(v) for k, v in d.items()):
            raise _bad(where, d, "an object of {name: integer size}")
        return [(k, int(v)) for k, v in d.items()]
    if not isinstance(d, list):
        raise _bad(where, d, "a list of {name: size} objects")
    out = []
    for i, e in enumerate(d):
        if not isinstance(e, dict) or len(e) != 1:
            raise _bad(f"{where}[{i}]", e, "an object with one {name: size} entry")
        k, v = next(iter(e.items()))
        if not _is_int(v):
            raise _bad(f"{where}[{i}].{k}", v, "an integer")
        out.append((k, v))
    return out


@dataclass
class Output:
    """A logical output, or (when ``children`` is empty) a directly consumed physical tensor.

    ``type`` is one of boxes, scores, objectness, mask_coefs, protos, detection, ... .
    """

    name: str
    type: str
    shape: list[int]
    dshape: list[tuple[str, int]] = field(default_factory=list)
    children: list["Output"] = field(default_factory=list)
    # logical-only
    decoder: str | None = None
    encoding: str | None = None  # dfl | direct | anchor
    score_format: str | None = None  # per_class | obj_x_class
    normalized: bool | None = None
    anchors: list | None = None
    # physical-only
    dtype: str | None = None
    quantization: Quant | None = None
    stride: int | list[int] | None = None
    scale_index: int | None = None
    activation_required: str | None = None
    activation_applied: str | None = None

    @property
    def physical(self) -> list["Output"]:
        """The physical tensors behind this output (itself when it has no children)."""
        return self.children or [self]

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "type": self.type}
        for key in ("decoder", "encoding", "score_format", "normalized", "anchors"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        d["shape"] = list(self.shape)
        if self.dshape:
            d["dshape"] = _dshape_to_json(self.dshape)
        for key in ("stride", "scale_index", "dtype", "activation_required", "activation_applied"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        if not self.children:
            d["quantization"] = self.quantization.to_json() if self.quantization else None
        else:
            d["outputs"] = [c.to_json() for c in self.children]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str = "outputs[0]") -> "Output":
        """Parse one output entry; a wrongly typed field raises :class:`ArtifactError` naming it."""
        if not isinstance(d, dict):
            raise _bad(where, d, "an object")
        children = _field(d, "outputs", where, _is_list, "a list of output objects", [])
        return cls(
            name=_field(d, "name", where, _is_str, "a string", ""),
            type=_field(d, "type", where, _is_str, "a string", ""),
            shape=list(_field(d, "shape", where, _is_int_list, "a list of integers", [])),
            dshape=_dshape_from_json(d.get("dshape"), f"{where}.dshape"),
            children=[cls.from_json(c, f"{where}.outputs[{i}]") for i, c in enumerate(children)],
            decoder=_field(d, "decoder", where, _is_str, "a string"),
            encoding=_field(d, "encoding", where, _is_str, "a string"),
            score_format=_field(d, "score_format", where, _is_str, "a string"),
            normalized=_field(d, "normalized", where, _is_bool, "true or false"),
            anchors=_field(d, "anchors", where, _is_anchors, "a list of numbers or of [w, h] pairs"),
            dtype=_field(d, "dtype", where, _is_str, "a string"),
            quantization=Quant.from_json(d.get("quantization"), f"{where}.quantization"),
            stride=_field(d, "stride", where, _is_stride, "an integer or a list of integers"),
            scale_index=_field(d, "scale_index", where, _is_int, "an integer"),
            activation_required=_field(d, "activation_required", where, _is_str, "a string"),
            activation_applied=_field(d, "activation_applied", where, _is_str, "a string"),
        )


#: ``model.task`` words (EdgeFirst's and Ultralytics') -> edgeq's task names; detection and
#: segmentation are also recognised from the outputs
_TASK_WORDS = {"pose": "pose", "keypoints": "pose", "obb": "obb", "classification": "classify",
               "classify": "classify", "semantic": "semantic", "semantic_segmentation": "semantic"}


@dataclass
class ModelMeta:
    """Everything a runtime needs to preprocess, run and decode an artifact.

    Attributes:
        decoder_version: yolov5 | yolov8 | yolo11 | yolo26.
        task: detect | segment (edgeq's names; EdgeFirst writes detection/segmentation).
        labels: class names, index = class id.
        input_shape: in the artifact's native layout; ``input_layout`` says which (nhwc|nchw).
        outputs: logical outputs in schema order.
        nms: class_agnostic | class_aware (HAL mode).
        raw: the full JSON as read or written (unknown sections preserved).
    """

    decoder_version: str
    task: str
    labels: list[str]
    input_shape: list[int]
    input_layout: str
    outputs: list[Output]
    nms: str = "class_agnostic"
    input_dtype: str = "uint8"
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def imgsz(self) -> tuple[int, int]:
        """Model input (height, width)."""
        if self.input_layout == "nhwc":
            return int(self.input_shape[1]), int(self.input_shape[2])
        return int(self.input_shape[2]), int(self.input_shape[3])

    def output(self, type_: str) -> Output | None:
        return next((o for o in self.outputs if o.type == type_), None)

    @property
    def validation_iou(self) -> float | None:
        """The NMS IoU the file declares for validation (``validation.iou``), if any."""
        iou = self.raw.get("validation", {}).get("iou") if isinstance(self.raw.get("validation"), dict) else None
        return float(iou) if isinstance(iou, (int, float)) and not isinstance(iou, bool) and 0 < iou <= 1 else None

    @property
    def edgeq(self) -> dict[str, Any]:
        return self.raw.get("edgeq", {})

    def to_json(self) -> dict[str, Any]:
        d = dict(self.raw)
        d.update(
            schema_version=SCHEMA_VERSION,
            decoder_version=self.decoder_version,
            nms=self.nms,
            outputs=[o.to_json() for o in self.outputs],
        )
        d.setdefault("dataset", {})["classes"] = list(self.labels)
        d.setdefault("input", {})["shape"] = list(self.input_shape)
        d["input"].setdefault("cameraadaptor", "rgb")
        model = d.setdefault("model", {})
        model["task"] = {"detect": "detection", "segment": "segmentation"}.get(self.task, self.task)
        model["detection"] = self.task in ("detect", "segment", "pose", "obb")  # boxes come out
        model["segmentation"] = self.task in ("segment", "semantic")
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], labels: list[str] | None = None) -> "ModelMeta":
        """Parse edgefirst.json (already decoded from JSON).

        Raises:
            ArtifactError: ``d`` is not an object, the schema version is unsupported, there are no
                outputs, or a field the runtime needs has the wrong type (the message names it,
                e.g. ``outputs[1].outputs[0].shape``).
        """
        if not isinstance(d, dict):
            raise ArtifactError(f"edgefirst.json is {_describe(d)}, expected a JSON object", _SCHEMA_FIX)
        version = d.get("schema_version", 1)
        if not _is_int(version) or version not in (1, 2):
            raise ArtifactError(f"edgefirst.json schema_version {version!r} is not supported (1 or 2 expected)")
        raw_outputs = _field(d, "outputs", "", _is_list, "a list of output objects", [])
        outputs = [Output.from_json(o, f"outputs[{i}]") for i, o in enumerate(raw_outputs)]
        if not outputs:
            raise ArtifactError("edgefirst.json has no outputs[] section", "re-export the model with edgeq convert")
        model = _field(d, "model", "", _is_dict, "an object", {})
        task_word = _field(model, "task", "model", _is_str, "a string", "").lower()
        segmentation = _field(model, "segmentation", "model", _is_bool, "true or false", False)
        is_seg = task_word.startswith("seg") or segmentation or any(o.type == "protos" for o in outputs)
        dataset = _field(d, "dataset", "", _is_dict, "an object", {})
        classes = _field(dataset, "classes", "dataset", _is_str_list, "a list of strings", [])
        names = labels or classes
        inp = _field(d, "input", "", _is_dict, "an object", {})
        shape = list(_field(inp, "shape", "input", _is_input_shape, "a list of 4 integers", [1, 640, 640, 3]))
        layout = "nhwc" if shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4) else "nchw"
        for key in ("validation", "edgeq"):
            _field(d, key, "", _is_dict, "an object")
        edgeq = d.get("edgeq") or {}
        return cls(
            decoder_version=_field(d, "decoder_version", "", _is_str, "a string", "yolov8"),
            task=_TASK_WORDS.get(task_word) or ("segment" if is_seg else "detect"),
            labels=list(names),
            input_shape=shape,
            input_layout=layout,
            outputs=outputs,
            nms=_field(d, "nms", "", _is_str, "a string", "class_agnostic"),
            input_dtype=_field(edgeq, "input_dtype", "edgeq", _is_str, "a string", "uint8"),
            raw=d,
        )


# ----------------------------------------------------------------------------- field checks

_SCHEMA_FIX = "the metadata was edited or written by another tool; re-export the model with `edgeq convert`"
_MISSING = object()


def _describe(v: Any) -> str:
    """How a JSON value reads in a message: 'a list', 'the string "x"', 'null', ..."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"the boolean {str(v).lower()}"
    if isinstance(v, (int, float)):
        return f"the number {v!r}"
    if isinstance(v, str):
        return f"the string {v[:40]!r}"
    if isinstance(v, list):
        return f"a list of {len(v)}"
    if isinstance(v, dict):
        return "an object"
    return f"a {type(v).__name__}"


def _bad(where: str, value: Any, expected: str) -> ArtifactError:
    return ArtifactError(f"edgefirst.json field {where} is {_describe(value)}, expected {expected}", _SCHEMA_FIX)


def _field(d: dict[str, Any], key: str, where: str, ok: Any, expected: str, default: Any = None) -> Any:
    """``d[key]`` when present and not null (checked with ``ok``), else ``default``."""
    v = d.get(key)
    if v is None:
        return default
    if not ok(v):
        raise _bad(f"{where}.{key}" if where else key, v, expected)
    return v


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_list(v: Any) -> bool:
    return isinstance(v, list)


def _is_dict(v: Any) -> bool:
    return isinstance(v, dict)


def _is_int_list(v: Any) -> bool:
    return isinstance(v, list) and all(_is_int(x) for x in v)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_input_shape(v: Any) -> bool:
    return _is_int_list(v) and len(v) == 4


def _is_scale(v: Any) -> bool:
    return _is_num(v) or (isinstance(v, list) and len(v) > 0 and all(_is_num(x) for x in v))


def _is_zero_point(v: Any) -> bool:
    return _is_int(v) or _is_int_list(v)


def _is_stride(v: Any) -> bool:
    return _is_int(v) or _is_int_list(v)


def _is_anchors(v: Any) -> bool:
    return isinstance(v, list) and all(_is_num(x) or (isinstance(x, list) and all(_is_num(y) for y in x)) for x in v)
