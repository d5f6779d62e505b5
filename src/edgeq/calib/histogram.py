"""A streaming histogram per tensor: fixed memory, whatever the number of images."""
from __future__ import annotations

import numpy as np

NUM_BINS = 2048
#: Values binned per update at most: larger tensors are sampled with a regular stride (min/max
#: stay exact). 256k samples per image resolve a 2048-bin histogram's tails well (a 200-image
#: calibration bins >50M values per tensor), and binning is most of calibration's cost.
MAX_SAMPLES = 1 << 18


class StreamingHistogram:
    """Exact min/max plus a histogram whose range grows to cover every value seen.

    When new values fall outside the current range, the range is widened and the old counts
    are re-binned at their bin centres (a small smear, bounded by one old bin width).
    """

    def __init__(self, bins: int = NUM_BINS, max_samples: int = MAX_SAMPLES) -> None:
        """``bins=0`` keeps only the exact min/max (all that the min/max method needs).

        ``total`` counts the values in the histogram (``counts.sum()``), which is fewer than the
        values seen when updates are sampled.
        """
        self.bins = bins
        self.max_samples = max_samples
        self.counts = np.zeros(bins, np.int64)
        self.lo = np.inf
        self.hi = -np.inf
        self.min = np.inf
        self.max = -np.inf
        self.total = 0

    def update(self, x: np.ndarray) -> None:
        x = x.reshape(-1)
        xmin, xmax = float(x.min()), float(x.max())
        self.min, self.max = min(self.min, xmin), max(self.max, xmax)
        if not self.bins:
            self.total += x.size
            return
        if xmin < self.lo or xmax > self.hi:
            self._widen(xmin, xmax)
        if x.size > self.max_samples:
            x = x[:: -(-x.size // self.max_samples)]
        scale = self.bins / (self.hi - self.lo)
        idx = ((x - np.float32(self.lo)) * np.float32(scale)).astype(np.int32)
        np.clip(idx, 0, self.bins - 1, out=idx)
        self.counts += np.bincount(idx, minlength=self.bins)
        self.total += x.size

    def _widen(self, xmin: float, xmax: float) -> None:
        if self.total == 0:
            lo, hi = xmin, xmax
            if hi - lo < 1e-12:
                lo, hi = lo - 1e-6, hi + 1e-6
            self.lo, self.hi = lo, hi
            return
        old_centres, old_counts = self.centres(), self.counts
        width = self.hi - self.lo
        lo, hi = min(self.lo, xmin), max(self.hi, xmax)
        # widen by a margin so a slowly drifting range does not re-bin on every image
        margin = 0.1 * max(hi - lo, width)
        lo = lo - margin if xmin < self.lo else lo
        hi = hi + margin if xmax > self.hi else hi
        self.lo, self.hi = lo, hi
        self.counts = np.histogram(old_centres, bins=self.bins, range=(lo, hi), weights=old_counts)[0].astype(np.int64)

    def centres(self) -> np.ndarray:
        edges = np.linspace(self.lo, self.hi, self.bins + 1)
        return ((edges[:-1] + edges[1:]) / 2).astype(np.float64)
