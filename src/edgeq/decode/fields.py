"""Decode primitives shared by every head decoder: tensor views, quantized fields, integer-domain
score thresholds, box math and the candidate records.

The head decoders built on them live with their family (``edgeq.families.yolov8.PerScaleHead``,
``edgeq.families.yolov5.AnchorHead``) or, for the family-neutral flat layout, in
:mod:`edgeq.decode.flat`; :class:`edgeq.runtime.decoder.Decoder` picks one from the metadata.

Layouts each path expects (``outputs`` maps the metadata's *physical* output names to arrays):

* **Per-scale** (EdgeFirst "smart" split; logical ``boxes`` with children that carry ``stride``):
  one child per FPN level for ``boxes`` (``encoding: dfl``: raw DFL logits, 4*reg_max features,
  side-major ``[l0..l15, t0..t15, r.., b..]``; or ``ltrb``: 4 grid-unit distances), ``scores``
  (``nc`` class logits with ``activation_required: sigmoid``, or probabilities) and, for -seg,
  ``mask_coefs`` (32). Each child is NHWC ``[1,H,W,C]`` or NCHW ``[1,C,H,W]`` as its ``dshape``
  says (inferred from the grid size when ``dshape`` is absent). Anchor centres are
  ``(grid + 0.5) * stride``; boxes come out in input pixels whatever ``normalized`` says (HAL does
  the same on this path). Anchor order is level by level, row-major inside a level.
* **Flat** (one ``detection`` tensor ``[1, F, N]`` or ``[1, N, F]``; or separate flat ``boxes``,
  ``scores``, ``objectness``, ``mask_coefs`` tensors): features are ``cx, cy, w, h`` (input pixels,
  or ``[0, 1]`` when ``normalized``), then (``obj_x_class`` only) objectness, then ``nc`` class
  scores (already activated unless ``activation_required``), then mask coefficients.
* **Protos**: ``[1,Hp,Wp,nm]`` (NHWC) or ``[1,nm,Hp,Wp]`` (NCHW) per ``dshape``; see ``masks.py``.

Quantized tensors are thresholded in the integer domain: the candidate test ``max_c q >= q_thr``
runs on the raw int8/uint8 array, where ``q_thr`` is the smallest code that can dequantize (and
activate) above ``conf`` (exact for per-tensor 8-bit codes, read off a table of all 256 codes;
otherwise conservative by at most one code). Survivors are re-checked exactly in float, so the
result equals "dequantize everything, then threshold" while only the candidates are ever
dequantized. With per-tensor 8-bit scores and a single label per anchor, the class is also
picked on the codes (:func:`single_label_codes`), so only one score per candidate is
dequantized. Anchor-based per-scale heads (``encoding: anchor``, YOLOv5) are decoded by
``edgeq.families.yolov5.AnchorHead``.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Protocol
from dataclasses import dataclass, field

import numpy as np

from edgeq.errors import ArtifactError
from edgeq.meta.schema import Output, Quant

Arrays = Mapping[str, np.ndarray]

_FEATURE_DIMS = {"num_features", "num_classes", "num_protos", "box_coords", "num_anchors_x_features"}
QRANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "uint16": (0, 65535)}
# Float pre-filter margin in the logit domain; the exact test follows on the survivors.
_LOGIT_MARGIN = 1e-3


# ----------------------------------------------------------------------------- tensors


def feature_axis(out: Output, channels: int | None = None, grid: tuple[int, int] | None = None) -> int:
    """Axis of ``out``'s physical tensor that holds the features (classes, coordinates, protos).

    Uses ``dshape`` when present; otherwise the axis of size ``channels``, or (4-D) the axis that is
    not part of the ``grid`` (H, W) pair, or (3-D) the smaller non-batch axis.
    """
    if out.dshape:
        names = [n for n, _ in out.dshape]
        hits = [i for i, n in enumerate(names) if n in _FEATURE_DIMS]
        if len(hits) == 1:
            return hits[0]
    shape = list(out.shape)
    if len(shape) == 4:
        if grid is not None and tuple(shape[1:3]) == tuple(grid):
            return 3
        if grid is not None and tuple(shape[2:4]) == tuple(grid):
            return 1
        if channels is not None and shape[3] == channels:
            return 3
        if channels is not None and shape[1] == channels:
            return 1
        return 3 if shape[1] == shape[2] else 1
    if len(shape) == 3:
        if channels is not None and shape[1] != shape[2] and channels in shape[1:]:
            return shape.index(channels, 1)
        return 1 if shape[1] <= shape[2] else 2
    if len(shape) == 2:
        return 1
    raise ArtifactError(f"output {out.name!r} has shape {shape}, which no decoder understands")


def grid_of(out: Output, fax: int) -> tuple[int, int]:
    """(H, W) of a 4-D per-scale tensor whose features are on axis ``fax``."""
    dims = [d for i, d in enumerate(out.shape[1:], start=1) if i != fax]
    return int(dims[0]), int(dims[1])


def to_rows(arr: np.ndarray, fax: int) -> np.ndarray:
    """View a physical tensor as (anchors, features) without copying (batch 1)."""
    moved = np.moveaxis(arr, fax, -1)
    return moved.reshape(-1, moved.shape[-1])


@dataclass(frozen=True)
class QParams:
    """Affine parameters broadcast over feature columns: ``real = scale * (q - zero_point)``."""

    scale: np.ndarray  # () or (C,)
    zero_point: np.ndarray  # () or (C,)
    dtype: str

    @classmethod
    def from_quant(cls, q: Quant, fax: int, name: str) -> "QParams":
        scale = np.asarray(q.scale, np.float32).reshape(-1)
        zp = np.broadcast_to(np.asarray(q.zero_point, np.float32).reshape(-1), scale.shape)
        if scale.size > 1 and q.axis is not None and q.axis != fax:
            raise ArtifactError(
                f"output {name!r} is quantized per channel on axis {q.axis}, not its feature axis {fax}",
                "re-export with per-tensor output quantization",
            )
        if scale.size == 1:
            return cls(scale[0], zp[0], q.dtype)
        return cls(scale, np.ascontiguousarray(zp), q.dtype)

    def columns(self, cols: slice) -> "QParams":
        if self.scale.ndim == 0:
            return self
        return QParams(self.scale[cols], self.zero_point[cols], self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return (q.astype(np.float32) - self.zero_point) * self.scale

    def threshold_code(self, real: float) -> np.ndarray:
        """Smallest code whose value can reach ``real`` (conservative by up to one code)."""
        lo, hi = QRANGE.get(self.dtype, (-(2**31), 2**31 - 1))
        if real == -math.inf:
            return np.asarray(lo)
        code = np.floor(real / self.scale + self.zero_point)
        return np.clip(code, lo, hi + 1).astype(np.int64)


@dataclass(frozen=True)
class Field:
    """A column range of one physical tensor, e.g. the class scores of a flat detection output.

    ``anchors`` > 1: each cell holds that many anchors' features side by side (YOLOv5,
    ``a*F + k``), so a row is one anchor: ``(y*W + x)*anchors + a``.
    """

    name: str
    fax: int
    cols: slice
    quant: QParams | None
    anchors: int = 1

    def rows(self, outputs: Arrays) -> np.ndarray:
        try:
            arr = outputs[self.name]
        except KeyError:
            raise ArtifactError(f"raw output {self.name!r} is missing from the model outputs") from None
        rows = to_rows(arr, self.fax)
        if self.anchors > 1:
            rows = rows.reshape(-1, rows.shape[1] // self.anchors)
        return rows[:, self.cols]

    def values(self, rows: np.ndarray) -> np.ndarray:
        """Real values of (a subset of) this field's rows."""
        if self.quant is None:
            return rows.astype(np.float32, copy=False)
        return self.quant.dequantize(rows)


def make_field(out: Output, quant: Quant | None, fax: int, cols: slice = slice(None)) -> Field:
    qp = QParams.from_quant(quant, fax, out.name).columns(cols) if quant is not None else None
    return Field(out.name, fax, cols, qp)


# ----------------------------------------------------------------------------- scores


def activate(x: np.ndarray, activation: str | None) -> np.ndarray:
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    return x


def raw_threshold(conf: float, activation: str | None) -> float:
    """``conf`` mapped back through the activation into the raw output domain."""
    if activation != "sigmoid":
        return conf
    if conf <= 0.0:
        return -math.inf
    if conf >= 1.0:
        return math.inf
    return math.log(conf / (1.0 - conf))


def candidate_anchors(field: Field, rows: np.ndarray, conf: float, activation: str | None) -> np.ndarray:
    """Anchors whose best class may score above ``conf`` (a superset; exact test follows).

    Quantized rows are compared as integers, so no dequantization happens here.
    """
    if field.quant is not None and field.quant.scale.ndim == 0:
        # Per-tensor: the exact code threshold. The conservative one lets the zero point through
        # at tiny conf (0.001 -> code zp), i.e. almost every anchor of a probability output.
        return np.flatnonzero(rows.max(axis=1) >= _code_threshold(field.quant, conf, activation))
    raw = raw_threshold(conf, activation)
    if field.quant is not None:
        code = field.quant.threshold_code(raw)
        return np.flatnonzero((rows >= code).any(axis=1))
    margin = _LOGIT_MARGIN if activation == "sigmoid" else 0.0
    return np.flatnonzero(rows.max(axis=1) >= raw - margin)


def _code_table(q: QParams, activation: str | None) -> tuple[int, np.ndarray] | None:
    """(lowest code, activated value of every code) of a per-tensor 8-bit field, else None."""
    if q.scale.ndim != 0 or q.dtype not in ("int8", "uint8"):
        return None
    lo, hi = QRANGE[q.dtype]
    codes = np.arange(lo, hi + 1).astype(q.dtype)
    # The same dequantize + activate as the float path, so the values are the same numbers.
    return lo, activate(q.dequantize(codes), activation)


@functools.lru_cache(maxsize=64)
def _exact_code(scale: float, zero_point: float, dtype: str, activation: str | None, conf: float) -> int | None:
    """Smallest code of a per-tensor 8-bit field whose activated value can exceed ``conf``.

    A tiny relative margin keeps it a (one-code at most) superset whatever rounding differs
    between this table and the candidates' own evaluation; the exact ``> conf`` test follows.
    """
    q = QParams(np.float32(scale), np.float32(zero_point), dtype)
    table = _code_table(q, activation)
    if table is None:
        return None
    lo, values = table
    above = np.flatnonzero(values >= conf - 1e-6 * abs(conf))
    return lo + int(above[0]) if above.size else QRANGE[dtype][1] + 1


def _code_threshold(q: QParams, conf: float, activation: str | None) -> int | np.ndarray:
    """Code threshold of a per-tensor field: exact for 8-bit codes, else conservative by one."""
    code = _exact_code(float(q.scale), float(q.zero_point), q.dtype, activation, float(conf))
    return code if code is not None else q.threshold_code(raw_threshold(conf, activation))


@functools.lru_cache(maxsize=64)
def _canonical_codes(scale: float, zero_point: float, dtype: str, activation: str | None) -> np.ndarray | None:
    """Per code (offset from the lowest), the lowest code with the same activated value.

    None when all codes give distinct values. Sigmoid saturates in float32 (every logit above
    ~17 is 1.0), so distinct codes can tie as scores; the float argmax then takes the lowest
    class among the tied ones, which the code argmax must reproduce.
    """
    table = _code_table(QParams(np.float32(scale), np.float32(zero_point), dtype), activation)
    assert table is not None
    values = table[1]
    first = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])  # start of each run of equal values
    canon = first[np.searchsorted(first, np.arange(values.size), side="right") - 1]
    return None if first.size == values.size else canon


def single_label_codes(
    field: Field, rows: np.ndarray, conf: float, activation: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Single-label picks straight from per-tensor 8-bit codes: (anchor, class, score > conf).

    The best class per anchor is chosen and thresholded on the integer codes; only the chosen
    code of each candidate is dequantized and activated. Returns None when this shortcut does
    not apply (float or per-channel outputs, other dtypes), so the caller takes the float path.
    Equal to ``select_scores`` on the dequantized, activated rows, ties included.
    """
    q = field.quant
    if q is None or q.scale.ndim != 0:
        return None
    key = (float(q.scale), float(q.zero_point), q.dtype, activation)
    code = _exact_code(*key, float(conf))
    if code is None:  # not 8-bit codes
        return None
    best = rows.max(axis=1)
    idx = np.flatnonzero(best >= code)
    cls = rows[idx].argmax(axis=1).astype(np.int64)
    canon = _canonical_codes(*key)
    if canon is not None:
        # Anchors whose best code ties (as a score) with lower codes: pick on canonical codes.
        lo = QRANGE[q.dtype][0]
        off = best[idx].astype(np.int64) - lo
        tied = np.flatnonzero(canon[off] != off)
        if tied.size:
            cls[tied] = canon[rows[idx[tied]].astype(np.int64) - lo].argmax(axis=1)
    scores = activate(q.dequantize(best[idx]), activation)
    keep = np.flatnonzero(scores > conf)
    return idx[keep], cls[keep], scores[keep]


def select_scores(
    scores: np.ndarray, conf: float, multi_label: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From (M, nc) activated scores: (row index, class, score) of every pick ``> conf``."""
    if multi_label:
        r, c = np.nonzero(scores > conf)
        return r, c.astype(np.int64), scores[r, c]
    c = scores.argmax(axis=1)
    s = scores[np.arange(scores.shape[0]), c]
    keep = np.flatnonzero(s > conf)
    return keep, c[keep].astype(np.int64), s[keep]


def _saturated_low(field: Field, activation: str | None) -> float:
    """The score of a per-tensor sigmoid field's lowest code, which is never a detection.

    That code holds every logit at or below the bottom of the output's range: edgeq floors score
    logits at ``logit(1e-4)``, so below that confidence all background would tie with it.
    """
    q = field.quant
    if q is None or q.scale.ndim != 0 or activation != "sigmoid" or q.dtype not in QRANGE:
        return -math.inf
    return float(activate(q.dequantize(np.asarray(QRANGE[q.dtype][0])), activation))


def pick(
    field: Field, rows: np.ndarray, conf: float, activation: str | None, multi_label: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(anchor, class, score) picks above ``conf`` of one score field (integer shortcut first)."""
    conf = max(conf, _saturated_low(field, activation))
    picks = None if multi_label else single_label_codes(field, rows, conf, activation)
    if picks is not None:
        return picks
    idx = candidate_anchors(field, rows, conf, activation)
    r, cls, s = select_scores(activate(field.values(rows[idx]), activation), conf, multi_label)
    return idx[r], cls, s


# ----------------------------------------------------------------------------- boxes


def dfl_distances(logits: np.ndarray) -> np.ndarray:
    """(M, 4*reg_max) DFL logits -> (M, 4) expected distances (softmax-weighted bin index)."""
    m = logits.shape[0]
    x = logits.reshape(m, 4, -1)
    x = np.exp(x - x.max(axis=2, keepdims=True))
    bins = np.arange(x.shape[2], dtype=np.float32)
    # Elementwise rather than matmul: many tiny products, where BLAS dispatch/threading dominates.
    return (x * bins).sum(axis=2) / x.sum(axis=2)


def dist2bbox(ltrb: np.ndarray, idx: np.ndarray, width: int, stride: tuple[float, float]) -> np.ndarray:
    """Grid-unit ltrb distances of anchors ``idx`` (row-major in a ``width``-wide grid) -> xyxy px."""
    cx = (idx % width).astype(np.float32) + 0.5
    cy = (idx // width).astype(np.float32) + 0.5
    sx, sy = stride
    return np.stack(
        [(cx - ltrb[:, 0]) * sx, (cy - ltrb[:, 1]) * sy, (cx + ltrb[:, 2]) * sx, (cy + ltrb[:, 3]) * sy], axis=1
    ).astype(np.float32)


def xywh2xyxy(b: np.ndarray) -> np.ndarray:
    """(M, 4) centre-size boxes -> corner boxes."""
    half = b[:, 2:4] * 0.5
    return np.concatenate([b[:, :2] - half, b[:, :2] + half], axis=1).astype(np.float32)


# ----------------------------------------------------------------------------- results


@dataclass
class Candidates:
    """Pre-NMS picks in input pixels; ``rows`` are global anchor indices (for mask coefficients)."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    rows: np.ndarray

    @classmethod
    def concat(cls, parts: list["Candidates"]) -> "Candidates":
        if not parts:
            z = np.zeros((0,), np.int64)
            return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), z, z)
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("boxes", "scores", "class_ids", "rows")))

    def take(self, keep: np.ndarray) -> "Candidates":
        return Candidates(self.boxes[keep], self.scores[keep], self.class_ids[keep], self.rows[keep])


@dataclass
class DecodeResult:
    """Post-NMS detections in model-input pixels, best first."""

    boxes: np.ndarray  # (K, 4) float32 xyxy
    scores: np.ndarray  # (K,) float32
    class_ids: np.ndarray  # (K,) int64
    coefs: np.ndarray | None  # (K, nm) float32 mask coefficients
    num_candidates: int = 0
    #: per kept detection, family-specific values in model-input pixels, e.g. ``keypoints``
    #: (K, nk, 3) or ``rotated`` (K, 5: cx, cy, w, h, angle); whole-image results of dense
    #: heads: ``probs`` (nc,), ``class_map`` (H, W) at model-input resolution
    extras: dict[str, np.ndarray] = field(default_factory=dict)


# ----------------------------------------------------------------------------- heads


def activation_of(logical: Output, child: Output | None = None) -> str | None:
    """The activation the decoder must apply (``activation_required``), child over parent."""
    for o in (child, logical):
        if o is not None and o.activation_required:
            return None if o.activation_required in ("none", "identity") else o.activation_required
    return None


def quant_of(quant: Mapping[str, Quant | None], out: Output) -> Quant | None:
    return quant.get(out.name, out.quantization)


def stride_of(out: Output) -> tuple[float, float]:
    """(sx, sy) of a per-scale child."""
    if out.stride is None:
        raise ArtifactError(f"per-scale output {out.name!r} has no stride in the metadata")
    if isinstance(out.stride, (list, tuple)):
        return float(out.stride[0]), float(out.stride[1])
    return float(out.stride), float(out.stride)


def num_protos(protos: Output | None) -> int:
    if protos is None:
        return 0
    return int(protos.shape[feature_axis(protos, 32)])


class HeadDecoder(Protocol):
    """What every head decoder offers: pre-NMS candidates and the mask coefficients of chosen rows."""

    has_coefs: bool

    def candidates(self, outputs: Arrays, conf: float, multi_label: bool) -> Candidates:
        """Candidates above ``conf`` in model-input pixels."""
        ...

    def coefs(self, outputs: Arrays, rows: np.ndarray) -> np.ndarray | None:
        """Mask coefficients of the global anchor ``rows`` (None without a mask branch)."""
        ...


# Optional head-decoder hooks, looked up with getattr by the runtime Decoder:
#   extras(outputs, rows) -> dict[str, np.ndarray]     per kept row: keypoints, rotated boxes, ...
#   suppress(cand, extras, iou, max_det, agnostic) -> keep indices   a family's own NMS (rotated IoU)
#   dense(outputs) -> dict[str, np.ndarray]            whole-image heads (classify, semantic):
#                                                      ``probs`` and/or ``class_map``; no candidates
