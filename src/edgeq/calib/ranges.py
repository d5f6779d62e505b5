"""Range-setting methods: from a streaming histogram to a float clipping range (lo, hi).

Every method works on the fixed-size :class:`StreamingHistogram` alone (bounded memory, any
number of calibration images):

* ``minmax``: the exact observed range; nothing is ever clipped.
* ``percentile``: clip both tails at :data:`PERCENTILE` percent of the values.
* ``mse``: the range minimising the expected squared quantization error (rounding inside the
  range plus clipping outside it), measured *where the error matters*: through the
  :class:`Transfer` (the elementwise function) the tensor's consumers apply first. A conv
  output that only feeds SiLU is judged by the error of ``SiLU(q(x))``, so its long negative
  tail (where SiLU is ~0) is cut while its positive tail is kept.
* ``entropy``: the range minimising the KL divergence between the tensor's distribution and its
  quantized version (TensorRT-style entropy calibration, on a re-binned histogram so every
  candidate is judged at the same resolution).
* ``auto``: per tensor, every method above is a candidate and the one with the least expected
  (transfer-aware) error wins; a wider range wins ties within :data:`AUTO_TOLERANCE`, because
  clipping that buys almost nothing still costs the rare large activations later layers use.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from edgeq.calib.histogram import StreamingHistogram

Range = tuple[float, float]
Array = np.ndarray

#: Two-sided percentile kept by ``percentile`` (the default method). Of the usual choices,
#: 99.9 clips too much on YOLOv8 (COCO person set: -1.9 mAP points), 99.99 and 99.995 cost
#: 0.1-1.4 points on one set or the other, 99.999 stays within 0.2 on both.
PERCENTILE = 99.999
#: Lowest probability a score-logit output resolves. Logits below ``logit(SCORE_FLOOR)`` only ever
#: fail a confidence threshold (``yolo val`` uses 0.001), yet min/max spends most int8 codes on
#: them (YOLOv8n scores_0 reaches -38): flooring there makes the step ~3.5x finer where ranking
#: happens. Float graph with only its score outputs int8: coco-val-dev 0.4453 -> 0.4509 (float 0.4561).
SCORE_FLOOR = 1e-4
#: ``logit(SCORE_FLOOR)``: score logits at or below it are all "no detection".
LOGIT_FLOOR = float(np.log(SCORE_FLOOR / (1.0 - SCORE_FLOOR)))
#: ``auto`` keeps the widest candidate whose expected error is within this factor of the best.
AUTO_TOLERANCE = 1.05
#: Candidate clipping points for ``mse``/``entropy``: these fractions of the observed bound.
SEARCH_FRACTIONS = np.linspace(0.05, 1.0, 96)
#: ``entropy`` judges each candidate on this many histogram bins per quantization level.
KL_BINS_PER_LEVEL = 8


@dataclass(frozen=True)
class Transfer:
    """The elementwise function a tensor's consumers apply before using it linearly.

    Attributes:
        name: recorded in provenance (``identity``, ``silu``).
        fn: the function.
        grad: its derivative (rounding noise of variance v becomes ``grad**2 * v``).
    """

    name: str
    fn: Callable[[Array], Array]
    grad: Callable[[Array], Array]


def _sigmoid(x: Array) -> Array:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


IDENTITY = Transfer("identity", lambda x: x, np.ones_like)
SILU = Transfer(
    "silu",
    lambda x: x * _sigmoid(x),
    lambda x: _sigmoid(x) * (1.0 + x * (1.0 - _sigmoid(x))),
)


def _with_zero(lo: float, hi: float) -> Range:
    return min(float(lo), 0.0), max(float(hi), 0.0)


def _cdf_at(h: StreamingHistogram, x: Array) -> Array:
    """Counts below ``x`` (values spread uniformly inside each histogram bin)."""
    edges = np.linspace(h.lo, h.hi, h.bins + 1)
    cdf = np.concatenate([[0.0], np.cumsum(h.counts, dtype=np.float64)])
    return np.interp(x, edges, cdf)


def minmax(h: StreamingHistogram, levels: int = 256, transfer: Transfer = IDENTITY) -> Range:
    """The exact observed range."""
    return _with_zero(h.min, h.max)


def percentile(h: StreamingHistogram, levels: int = 256, transfer: Transfer = IDENTITY, p: float = PERCENTILE) -> Range:
    """Clip both tails at ``p`` percent of the values (never outside the observed range)."""
    grid = np.linspace(h.lo, h.hi, 16 * h.bins + 1)
    cdf = _cdf_at(h, grid) / max(h.total, 1)
    lo = grid[min(int(np.searchsorted(cdf, 1 - p / 100)), len(grid) - 1)]
    hi = grid[min(int(np.searchsorted(cdf, p / 100)), len(grid) - 1)]
    return _with_zero(max(float(lo), h.min), min(float(hi), h.max))


def _errors(h: StreamingHistogram, los: Array, his: Array, levels: int, transfer: Transfer) -> Array:
    """Expected squared error per element for each candidate range ``(los[i], his[i])``.

    Inside the range, rounding adds uniform noise of variance ``step**2 / 12``, scaled by the
    transfer's slope; outside, the value is clipped to the bound.
    """
    los, his = np.minimum(los, 0.0)[:, None], np.maximum(his, 0.0)[:, None]
    c, n = h.centres()[None, :], h.counts[None, :].astype(np.float64)
    step = np.maximum(his - los, 1e-12) / (levels - 1)
    inside = (c >= los) & (c <= his)
    rounding = np.where(inside, transfer.grad(c) ** 2, 0.0) * step**2 / 12.0
    fc = transfer.fn(c)
    clipping = np.where(inside, 0.0, (transfer.fn(np.clip(c, los, his)) - fc) ** 2)
    return np.sum(n * (rounding + clipping), axis=1) / max(h.total, 1)


def expected_error(h: StreamingHistogram, lo: float, hi: float, levels: int = 256, transfer: Transfer = IDENTITY) -> float:
    """Mean squared error of uniform quantization on [lo, hi] (rounding + clipping), seen through ``transfer``."""
    return float(_errors(h, np.array([lo]), np.array([hi]), levels, transfer)[0])


def _coordinate_search(h: StreamingHistogram, cost: Callable[[Array, Array], Array]) -> Range:
    """Shrink hi, then lo, then both again, over :data:`SEARCH_FRACTIONS` of the observed bounds."""
    lo, hi = minmax(h)
    for _ in range(2):
        if hi > 0:
            cands = hi * SEARCH_FRACTIONS
            hi = float(cands[np.argmin(cost(np.full_like(cands, lo), cands))])
        if lo < 0:
            cands = lo * SEARCH_FRACTIONS
            lo = float(cands[np.argmin(cost(cands, np.full_like(cands, hi)))])
    return lo, hi


def mse(h: StreamingHistogram, levels: int = 256, transfer: Transfer = IDENTITY) -> Range:
    """The clipping range minimising :func:`expected_error` (coordinate search on the histogram)."""
    return _coordinate_search(h, lambda los, his: _errors(h, los, his, levels, transfer))


def _kl(h: StreamingHistogram, los: Array, his: Array, levels: int) -> Array:
    """KL(P || Q) per candidate range: P is the histogram re-binned on [lo, hi] with the tails
    folded into the edge bins, Q the same after merging each quantization level's bins and
    spreading the level's mass evenly over the bins P occupies."""
    los, his = np.minimum(los, 0.0)[:, None], np.maximum(his, 0.0)[:, None]
    edges = los + (his - los) * np.linspace(0.0, 1.0, levels * KL_BINS_PER_LEVEL + 1)[None, :]
    cdf = _cdf_at(h, edges)
    p = np.diff(cdf, axis=1)
    p[:, 0] += cdf[:, 0]
    p[:, -1] += h.total - cdf[:, -1]
    groups = p.reshape(len(p), levels, KL_BINS_PER_LEVEL)
    occupied = groups > 0
    spread = groups.sum(2, keepdims=True) / np.maximum(occupied.sum(2, keepdims=True), 1)
    q = np.where(occupied, spread, 1.0).reshape(p.shape)
    p = p / np.maximum(p.sum(1, keepdims=True), 1e-300)
    q = q / np.maximum(np.where(p > 0, q, 0.0).sum(1, keepdims=True), 1e-300)
    terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0) / q), 0.0)
    return terms.sum(1)


def kl_divergence(h: StreamingHistogram, lo: float, hi: float, levels: int = 256) -> float:
    """KL divergence between the tensor's distribution and its quantized version on [lo, hi]."""
    return float(_kl(h, np.array([lo]), np.array([hi]), levels)[0])


def entropy(h: StreamingHistogram, levels: int = 256, transfer: Transfer = IDENTITY) -> Range:
    """The clipping range minimising :func:`kl_divergence` (coordinate search; ``transfer`` unused:
    KL judges the tensor's own distribution)."""
    return _coordinate_search(h, lambda los, his: _kl(h, los, his, levels))


METHODS: dict[str, Callable[..., Range]] = {
    "minmax": minmax,
    "percentile": percentile,
    "mse": mse,
    "entropy": entropy,
}


def choose_range(
    h: StreamingHistogram, method: str = "auto", levels: int = 256, transfer: Transfer = IDENTITY
) -> tuple[Range, str]:
    """The range for one tensor and the method that produced it.

    ``auto`` scores every method's range by :func:`expected_error` through ``transfer`` and keeps
    the widest one within :data:`AUTO_TOLERANCE` of the least error.
    """
    if method != "auto":
        if method not in METHODS:
            raise ValueError(f"unknown range method {method!r}; choose auto or one of {sorted(METHODS)}")
        return METHODS[method](h, levels, transfer), method
    candidates = {name: fn(h, levels, transfer) for name, fn in METHODS.items()}
    errors = {name: expected_error(h, *r, levels, transfer) for name, r in candidates.items()}
    best = min(errors.values())
    near = [n for n in candidates if errors[n] <= best * AUTO_TOLERANCE]
    chosen = max(near, key=lambda n: candidates[n][1] - candidates[n][0])
    return candidates[chosen], chosen


def floor_logits(rng: Range) -> Range:
    """``rng`` of a logit read through a sigmoid, with its low end raised to :data:`LOGIT_FLOOR`."""
    lo, hi = rng
    return max(lo, LOGIT_FLOOR), hi


def consumer_transfers(model: onnx.ModelProto) -> dict[str, Transfer]:
    """Tensors read only as SiLU's input (``Sigmoid(x)`` and ``Mul(x, Sigmoid(x))``) -> :data:`SILU`.

    Tensors not listed are used linearly (:data:`IDENTITY`); graph outputs always are.
    """
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for x in dict.fromkeys(node.input):
            readers.setdefault(x, []).append(node)
    outputs = {o.name for o in model.graph.output}
    found = {}
    for x, nodes in readers.items():
        if x and x not in outputs and all(_silu_part(n, x, readers, outputs) for n in nodes):
            found[x] = SILU
    return found


def _silu_part(node: onnx.NodeProto, x: str, readers: Mapping[str, list[onnx.NodeProto]], outputs: set[str]) -> bool:
    """Whether ``node`` is the Sigmoid or the Mul of a SiLU computed from ``x``."""
    if node.op_type == "Sigmoid":
        s = node.output[0]
        return s not in outputs and all(_is_mul_of(m, x, s) for m in readers.get(s, []))
    if node.op_type == "Mul" and len(node.input) == 2:
        other = node.input[1] if node.input[0] == x else node.input[0]
        return any(n.op_type == "Sigmoid" and n.output[0] == other for n in readers.get(x, []))
    return False


def _is_mul_of(node: onnx.NodeProto, x: str, s: str) -> bool:
    return node.op_type == "Mul" and sorted(node.input) == sorted([x, s])
