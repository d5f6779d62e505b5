"""Load a model file and run it: ``.tflite`` with LiteRT, ``.onnx`` with onnxruntime (CPU).

Tensors each backend expects and returns:

* TFLite input: NHWC, RGB (or BGR when ``input.cameraadaptor`` says so); uint8 pixels as they are
  when the input is uint8 with scale 1/255 (or unquantized); otherwise ``pixels / 255`` (``signed``
  normalization: ``/127.5 - 1``) quantized with the *input tensor's* scale and zero point.
* ONNX input: float32 NCHW ``pixels / 255`` (uint8 inputs get raw pixels).
* Outputs: :meth:`Model.run` returns raw arrays keyed by the metadata's physical output names.
  The metadata is bound to runtime outputs by name; names that do not match (EdgeFirst's TFLite
  outputs are called ``PartitionedCall/...`` while its metadata says ``boxes_0``) are matched by
  shape, then by quantization scale; anything still ambiguous is an :class:`ArtifactError`.
  Quantization of integer outputs is read from the runtime tensor, as EdgeFirst's HAL does,
  falling back to the metadata only when the tensor has none.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgeq.calib.preprocess import InputConvention, Letterbox, preprocess_image, read_image
from edgeq.errors import ArtifactError
from edgeq.meta.read import TensorDesc, read_meta
from edgeq.meta.schema import ModelMeta, Output, Quant
from edgeq.export import TARGETS, get_target, target_for_file
from edgeq.export.base import Backend, Target
from edgeq.runtime.decoder import Decoder
from edgeq.decode.masks import process_masks
from edgeq.runtime.types import Detections

_SCALE_RTOL = 1e-5


class OnnxBackend:
    """onnxruntime on the CPU execution provider."""

    def __init__(self, path: Path, threads: int | None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception hierarchy
            raise ArtifactError(f"onnxruntime cannot load {path}: {e}") from None
        self.inputs = [_ort_desc(v) for v in self.sess.get_inputs()]
        self.outputs = [_ort_desc(v) for v in self.sess.get_outputs()]
        self._in_name = self.inputs[0].name

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return self.sess.run(None, {self._in_name: x})


_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
}


def _ort_desc(v: Any) -> TensorDesc:
    shape = tuple(d if isinstance(d, int) else -1 for d in v.shape)
    return TensorDesc(v.name, shape, _ORT_TYPES.get(v.type, v.type))


# ----------------------------------------------------------------------------- binding


def _same_shape(meta_shape: list[int], rt_shape: tuple[int, ...]) -> bool:
    return len(meta_shape) == len(rt_shape) and all(r < 0 or m == r for m, r in zip(meta_shape, rt_shape))


def _scale_of(q: Quant | None) -> float | None:
    if q is None or isinstance(q.scale, list):
        return None
    return float(q.scale)


def bind_outputs(meta: ModelMeta, runtime: list[TensorDesc], path: Path) -> dict[str, int]:
    """Map each physical output of ``meta`` to the index of a runtime output.

    Exact names first; then, repeatedly, any output left with exactly one unused runtime tensor of
    the same shape (or, among several, exactly one with the same quantization scale).
    """
    phys = [p for o in meta.outputs for p in o.physical]
    rt_by_name = {t.name: i for i, t in enumerate(runtime)}
    bound: dict[str, int] = {}
    for p in phys:
        if p.name in rt_by_name and _same_shape(p.shape, runtime[rt_by_name[p.name]].shape):
            bound[p.name] = rt_by_name[p.name]
    progress = True
    while progress:
        progress = False
        used = set(bound.values())
        for p in (p for p in phys if p.name not in bound):
            cands = [i for i, t in enumerate(runtime) if i not in used and _same_shape(p.shape, t.shape)]
            if len(cands) > 1:
                cands = _by_scale(p, cands, runtime)
            if len(cands) == 1:
                bound[p.name] = cands[0]
                used.add(cands[0])
                progress = True
    missing = [p for p in phys if p.name not in bound]
    if missing:
        rt = ", ".join(f"{t.name} {list(t.shape)}" for t in runtime)
        want = ", ".join(f"{p.name} {p.shape}" for p in missing)
        raise ArtifactError(
            f"{path}: cannot match metadata outputs [{want}] to the model's outputs [{rt}]"
            " by name, shape or quantization scale",
            "make outputs[] in edgefirst.json name the model's output tensors",
        )
    return bound


def _by_scale(p: Output, cands: list[int], runtime: list[TensorDesc]) -> list[int]:
    want = _scale_of(p.quantization)
    if want is None:
        return cands
    return [i for i in cands if (s := _scale_of(runtime[i].quant)) is not None and abs(s - want) <= _SCALE_RTOL * want]


def _effective_quant(p: Output, t: TensorDesc, path: Path) -> Quant | None:
    """Runtime tensor quantization first (as HAL), metadata second; integers need one of them."""
    if t.quant is not None:
        return t.quant
    if p.quantization is not None:
        return p.quantization
    if t.dtype in ("int8", "uint8", "int16", "uint16"):
        raise ArtifactError(
            f"{path}: output {t.name!r} is {t.dtype} but neither the tensor nor the metadata gives its quantization",
            "add a quantization object to this output in edgefirst.json",
        )
    return None


# ----------------------------------------------------------------------------- model


class Model:
    """A loaded model plus its metadata; implements the :class:`~edgeq.runtime.types.Predictor` protocol.

    Attributes:
        meta: the model's metadata.
        backend: the inference engine (``inputs``/``outputs`` describe its tensors).
        binding: metadata physical output name -> index into ``backend.outputs``.
        decoder: the :class:`~edgeq.runtime.decoder.Decoder` built for this model.
        input_hw: model input (height, width).
    """

    def __init__(self, path: Path, backend: Backend, meta: ModelMeta) -> None:
        self.path = path
        self.name = path.stem
        self.meta = meta
        self.backend = backend
        self.binding = bind_outputs(meta, backend.outputs, path)
        phys = {p.name: p for o in meta.outputs for p in o.physical}
        quant = {n: _effective_quant(phys[n], backend.outputs[i], path) for n, i in self.binding.items()}
        self.decoder = Decoder(meta, quant)
        #: default NMS IoU: the file's ``validation.iou``, else its family's, else 0.7
        self.iou = self.decoder.iou
        self._input = backend.inputs[0]
        self._nhwc = self._input.shape[-1] in (1, 3, 4) and self._input.shape[1] not in (1, 3, 4)
        hw = self._input.shape[1:3] if self._nhwc else self._input.shape[2:4]
        self.input_hw: tuple[int, int] = (int(hw[0]), int(hw[1])) if min(hw) > 0 else meta.imgsz
        self._bgr = str(meta.raw.get("input", {}).get("cameraadaptor", "rgb")).lower() == "bgr"
        self._signed = meta.raw.get("validation", {}).get("normalization") == "signed"
        #: ``validation.preprocessing``: letterbox (detectors), center_crop (classifiers)
        self.preprocessing = str(meta.raw.get("validation", {}).get("preprocessing") or "letterbox")
        #: ``edgeq.input_convention``: letterbox pad placement and pixel scale (default: centred, /255)
        self.input_convention = InputConvention.from_json(meta.edgeq.get("input_convention"),
                                                          "bgr" if self._bgr else "rgb")

    def __repr__(self) -> str:
        return f"Model({str(self.path)!r}, task={self.meta.task}, input={list(self._input.shape)} {self._input.dtype})"

    # -- preprocessing

    def preprocess(self, image_bgr: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """Letterbox (or, as the metadata says, centre-crop) a BGR image into this model's input tensor (batch 1)."""
        rgb, lb = preprocess_image(image_bgr, self.input_hw, self.preprocessing, self.input_convention.pad)
        if self._bgr:
            rgb = rgb[..., ::-1]
        x = self._encode(rgb)
        x = x[None] if self._nhwc else x.transpose(2, 0, 1)[None]
        return np.ascontiguousarray(x), lb

    def _encode(self, pix: np.ndarray) -> np.ndarray:
        """uint8 HWC pixels -> values of the input dtype (quantized with the input's own params)."""
        dtype, q = self._input.dtype, self._input.quant
        unit = self.input_convention.pixel_scale  # real = pix * unit (1/255, or 1 for 0..255 models)
        if dtype in ("float32", "float16"):
            real = pix.astype(np.float32) * np.float32(unit)
            return (real * 2 - 1 if self._signed else real).astype(dtype)
        if q is None or isinstance(q.scale, list):
            return pix.astype(dtype)
        scale, zp = float(q.scale), int(q.zero_point)  # type: ignore[arg-type]
        if not self._signed and abs(scale / unit - 1) < 1e-6:
            # Fast path: real = pix * unit and scale = unit, so q = pix + zp exactly.
            return (pix.astype(np.int16) + zp).astype(dtype) if zp else pix.astype(dtype)
        real = pix.astype(np.float32) / 255 if self.input_convention.unit_scale else pix.astype(np.float32) * np.float32(unit)
        real = real * 2 - 1 if self._signed else real
        lo, hi = (0, 255) if dtype == "uint8" else (-128, 127)
        return np.clip(np.round(real / scale + zp), lo, hi).astype(dtype)

    # -- inference

    def run(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        """Raw outputs keyed by the metadata's physical output names."""
        outs = self.backend.run(tensor)
        return {name: outs[i] for name, i in self.binding.items()}

    def predict(
        self,
        image: np.ndarray | str | Path,
        conf: float = 0.25,
        iou: float | None = None,
        max_det: int = 300,
        multi_label: bool = False,
        agnostic: bool | None = None,
        masks: bool = True,
    ) -> Detections:
        """Detect (and segment) objects in a BGR image or an image file.

        ``iou`` None: the IoU the file declares (:attr:`iou`); ``agnostic`` None: the NMS mode it
        declares (``nms``), so that the artifact decodes as its metadata says.

        Boxes are in original-image pixels; masks (segmentation models, ``masks=True``) are
        (N, H, W) bool at the original resolution. ``timings_ms`` has preprocess, inference,
        decode (threshold + box decode + NMS) and masks.
        """
        img = read_image(image) if isinstance(image, (str, Path)) else _as_bgr(image)
        t0 = time.perf_counter()
        x, lb = self.preprocess(img)
        t1 = time.perf_counter()
        raw = self.run(x)
        t2 = time.perf_counter()
        iou = self.iou if iou is None else iou
        res = self.decoder.decode(raw, conf=conf, iou=iou, max_det=max_det, multi_label=multi_label, agnostic=agnostic)
        boxes = lb.to_original(res.boxes)
        t3 = time.perf_counter()
        mask_arr = None
        if masks and self.decoder.segments:
            protos = self.decoder.protos(raw) if len(res.scores) else None
            coefs = res.coefs if res.coefs is not None else np.zeros((0, 0), np.float32)
            mask_arr = (
                process_masks(protos, coefs, boxes, lb, self.input_hw)
                if protos is not None
                else np.zeros((0, lb.orig_h, lb.orig_w), bool)
            )
        t4 = time.perf_counter()
        timings = {"preprocess": t1 - t0, "inference": t2 - t1, "decode": t3 - t2, "masks": t4 - t3}
        dets = Detections(
            boxes=boxes,
            scores=res.scores.astype(np.float32),
            class_ids=res.class_ids.astype(np.int64),
            labels=self.meta.labels,
            masks=mask_arr,
            timings_ms={k: v * 1e3 for k, v in timings.items()},
        )
        return _with_extras(dets, res.extras, lb)


def _with_extras(dets: Detections, extras: dict[str, np.ndarray], lb: Letterbox) -> Detections:
    """Family-specific results mapped from model-input to original-image pixels."""
    if "keypoints" in extras:
        kpts = extras["keypoints"].astype(np.float32, copy=True)
        kpts[..., :2] = lb.points_to_original(kpts[..., :2])
        dets.keypoints = kpts
    if "rotated" in extras:
        rot = extras["rotated"].astype(np.float32, copy=True)
        rot[:, :2] = lb.points_to_original(rot[:, :2])
        rot[:, 2:4] /= lb.gain
        dets.rotated = rot
    if "probs" in extras:
        probs = extras["probs"].astype(np.float32)
        top = np.argsort(-probs, kind="stable")[:5]
        dets.probs, dets.class_ids, dets.scores = probs, top.astype(np.int64), probs[top]
    if "class_map" in extras:
        dets.class_map = lb.map_to_original(extras["class_map"])
    return dets


def _as_bgr(image: np.ndarray) -> np.ndarray:
    """Accept grey (H, W) / (H, W, 1) and BGRA images as well as BGR."""
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a BGR image (H, W, 3), got an array of shape {image.shape}")
    return image


def check_integrity(path: Path, meta: ModelMeta, target: Target) -> None:
    """Refuse an artifact whose model bytes differ from those edgeq wrote (``edgeq.model_sha256``):
    damaged weights still run, and would silently find nothing."""
    recorded = meta.edgeq.get("model_sha256")
    if not isinstance(recorded, str):
        return  # not written by edgeq (or before the checksum existed)
    actual = hashlib.sha256(target.model_bytes(path.read_bytes())).hexdigest()
    if actual != recorded:
        raise ArtifactError(
            f"{path}: the model bytes do not match the checksum recorded when it was converted "
            f"(sha256 {actual[:16]}..., recorded {recorded[:16]}...): the file is damaged",
            "copy the artifact again, or convert the model again",
        )


def load(path: str | Path, *, threads: int | None = None, meta: ModelMeta | None = None) -> Model:
    """Load an artifact of any registered target (``.tflite``, ...) or a float ``.onnx`` model, and
    its metadata.

    Args:
        path: the model file.
        threads: CPU threads for the interpreter/session (None: the runtime's default).
        meta: metadata to use instead of the file's own (for files that carry none).
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"model file not found: {path}")
    suffix = path.suffix.lower()
    target = target_for_file(path)
    if target is not None:
        meta = meta if meta is not None else read_meta(path)
        check_integrity(path, meta, target)
        backend: Backend = target.backend(path, threads)
    elif suffix == ".onnx":
        backend = OnnxBackend(path, threads)
    else:
        known = ", ".join(sorted({get_target(t).suffix for t in TARGETS} | {".onnx"}))
        raise ArtifactError(f"{path}: unknown model type {suffix!r}", f"edgeq runs {known} files")
    return Model(path, backend, meta if meta is not None else read_meta(path))
