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
    def from_json(cls, d: dict[str, Any] | list | None) -> "Quant | None":
        if d is None:
            return None
        if isinstance(d, list):  # schema v1 tuple [scale, zp]
            return cls(scale=float(d[0]), zero_point=int(d[1]) if len(d) > 1 else 0)
        return cls(scale=d["scale"], zero_point=d.get("zero_point", 0), dtype=d.get("dtype", "int8"), axis=d.get("axis"))


def _dshape_to_json(dshape: list[tuple[str, int]]) -> list[dict[str, int]]:
    return [{k: int(v)} for k, v in dshape]


def _dshape_from_json(d: Any) -> list[tuple[str, int]]:
    if not d:
        return []
    if isinstance(d, dict):  # v1 map style
        return [(k, int(v)) for k, v in d.items()]
    return [next(iter(e.items())) for e in d]


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
    def from_json(cls, d: dict[str, Any]) -> "Output":
        return cls(
            name=d.get("name", ""),
            type=d.get("type", ""),
            shape=list(d.get("shape", [])),
            dshape=_dshape_from_json(d.get("dshape")),
            children=[cls.from_json(c) for c in d.get("outputs", [])],
            decoder=d.get("decoder"),
            encoding=d.get("encoding"),
            score_format=d.get("score_format"),
            normalized=d.get("normalized"),
            anchors=d.get("anchors"),
            dtype=d.get("dtype"),
            quantization=Quant.from_json(d.get("quantization")),
            stride=d.get("stride"),
            scale_index=d.get("scale_index"),
            activation_required=d.get("activation_required"),
            activation_applied=d.get("activation_applied"),
        )


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
        model["detection"] = True
        model["segmentation"] = self.task == "segment"
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], labels: list[str] | None = None) -> "ModelMeta":
        version = d.get("schema_version", 1)
        if version not in (1, 2):
            raise ArtifactError(f"edgefirst.json schema_version {version} is not supported (1 or 2 expected)")
        outputs = [Output.from_json(o) for o in d.get("outputs", [])]
        if not outputs:
            raise ArtifactError("edgefirst.json has no outputs[] section", "re-export the model with edgeq convert")
        model = d.get("model", {})
        task_word = str(model.get("task", "")).lower()
        is_seg = task_word.startswith("seg") or model.get("segmentation") or any(o.type == "protos" for o in outputs)
        names = labels or d.get("dataset", {}).get("classes") or []
        shape = list(d.get("input", {}).get("shape", [1, 640, 640, 3]))
        layout = "nhwc" if shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4) else "nchw"
        return cls(
            decoder_version=d.get("decoder_version", "yolov8"),
            task="segment" if is_seg else "detect",
            labels=list(names),
            input_shape=shape,
            input_layout=layout,
            outputs=outputs,
            nms=d.get("nms", "class_agnostic"),
            input_dtype=d.get("edgeq", {}).get("input_dtype", "uint8"),
            raw=d,
        )
