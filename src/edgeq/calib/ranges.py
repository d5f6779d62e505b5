"""Range-setting methods: from a streaming histogram to a float clipping range (lo, hi).

Each method is one small function registered in ``METHODS``; ``auto`` evaluates the candidates'
expected quantization error on the histogram and keeps the best per tensor.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgeq.calib.histogram import StreamingHistogram

Range = tuple[float, float]
PERCENTILE = 99.99


def _with_zero(lo: float, hi: float) -> Range:
    return min(lo, 0.0), max(hi, 0.0)


def minmax(h: StreamingHistogram, levels: int = 256) -> Range:
    """The exact observed range."""
    return _with_zero(h.min, h.max)


def percentile(h: StreamingHistogram, levels: int = 256, p: float = PERCENTILE) -> Range:
    """Clip both tails at ``p`` percent of the values (never inside the bulk)."""
    cdf = np.cumsum(h.counts) / max(h.total, 1)
    c = h.centres()
    lo = c[min(np.searchsorted(cdf, 1 - p / 100), len(c) - 1)]
    hi = c[min(np.searchsorted(cdf, p / 100), len(c) - 1)]
    return _with_zero(max(float(lo), h.min), min(float(hi), h.max))


def expected_error(h: StreamingHistogram, lo: float, hi: float, levels: int = 256) -> float:
    """Mean squared error of uniform quantization on [lo, hi] (rounding + clipping) over the histogram."""
    lo, hi = _with_zero(lo, hi)
    step = max(hi - lo, 1e-12) / (levels - 1)
    c = h.centres()
    q = np.clip(np.round((c - lo) / step), 0, levels - 1) * step + lo
    return float(np.sum(h.counts * (c - q) ** 2) / max(h.total, 1))


def mse(h: StreamingHistogram, levels: int = 256) -> Range:
    """The clipping range minimising expected squared error, by coordinate search on the histogram."""
    lo, hi = minmax(h)
    fractions = np.linspace(0.2, 1.0, 81)
    for _ in range(2):
        his = [hi * f for f in fractions] if hi > 0 else [hi]
        hi = min(his, key=lambda v: expected_error(h, lo, v, levels))
        los = [lo * f for f in fractions] if lo < 0 else [lo]
        lo = min(los, key=lambda v: expected_error(h, v, hi, levels))
    return float(lo), float(hi)


METHODS: dict[str, Callable[..., Range]] = {"minmax": minmax, "percentile": percentile, "mse": mse}


def choose_range(h: StreamingHistogram, method: str = "auto", levels: int = 256) -> tuple[Range, str]:
    """The range for one tensor and the method that produced it."""
    if method != "auto":
        return METHODS[method](h, levels), method
    candidates = {name: fn(h, levels) for name, fn in METHODS.items()}
    best = min(candidates, key=lambda n: expected_error(h, *candidates[n], levels))
    return candidates[best], best
