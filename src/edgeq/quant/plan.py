"""The quantization plan: the one description of how every tensor is quantized.

Every exporter consumes a :class:`QuantPlan`; nothing downstream re-derives ranges. Tensor names
are the ONNX tensor names of the (cut, normalized) float graph the plan was made for. Axes are in
ONNX layout (NCHW for activations, OIHW for Conv weights, IOHW for ConvTranspose weights); an
exporter that changes layout maps them itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

QDType = Literal["uint8", "int8", "int16", "int32"]

QRANGE: dict[str, tuple[int, int]] = {
    "uint8": (0, 255),
    "int8": (-128, 127),
    "int16": (-32768, 32767),
    "int32": (-(2**31), 2**31 - 1),
}


@dataclass(frozen=True)
class QParams:
    """Affine quantization ``real = scale * (q - zero_point)``, per tensor or per channel.

    ``scale`` and ``zero_point`` are 1-D arrays: length 1 for per-tensor, length C with ``axis``
    set for per-channel.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: QDType
    axis: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", np.atleast_1d(np.asarray(self.scale, np.float32)))
        object.__setattr__(self, "zero_point", np.atleast_1d(np.asarray(self.zero_point, np.int64)))
        if self.scale.shape != self.zero_point.shape:
            raise ValueError("scale and zero_point must have the same length")
        if self.scale.size > 1 and self.axis is None:
            raise ValueError("per-channel parameters need an axis")

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    @property
    def qmin(self) -> int:
        return QRANGE[self.dtype][0]

    @property
    def qmax(self) -> int:
        return QRANGE[self.dtype][1]

    def real_range(self) -> tuple[np.ndarray, np.ndarray]:
        """The representable float interval (per channel)."""
        return self.scale * (self.qmin - self.zero_point), self.scale * (self.qmax - self.zero_point)

    def same_as(self, other: "QParams") -> bool:
        """True when both describe the identical integer mapping (so no requantization is needed)."""
        return (
            self.dtype == other.dtype
            and self.axis == other.axis
            and np.array_equal(self.scale, other.scale)
            and np.array_equal(self.zero_point, other.zero_point)
        )

    def _bcast(self, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        if self.axis is None:
            return self.scale[0], self.zero_point[0]
        shape = [1] * ndim
        shape[self.axis] = -1
        return self.scale.reshape(shape), self.zero_point.reshape(shape)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Round-to-nearest quantization with saturation."""
        s, z = self._bcast(x.ndim)
        q = np.clip(np.round(x / s) + z, self.qmin, self.qmax)
        return q.astype(np.dtype(self.dtype))

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        s, z = self._bcast(q.ndim)
        return ((q.astype(np.float32) - z) * s).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"dtype": self.dtype}
        d["scale"] = self.scale.tolist() if self.per_channel else float(self.scale[0])
        d["zero_point"] = self.zero_point.tolist() if self.per_channel else int(self.zero_point[0])
        if self.per_channel:
            d["axis"] = self.axis
        return d


def activation_params(lo: float, hi: float, dtype: QDType = "int8") -> QParams:
    """Asymmetric per-tensor parameters covering [lo, hi] (always including 0, as TFLite requires).

    int16 activations are symmetric (zero point 0), per the TFLite 16x8 scheme.
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    qmin, qmax = QRANGE[dtype]
    if dtype == "int16":
        m = max(abs(lo), abs(hi), 1e-8)
        return QParams(np.float32(m / qmax), 0, dtype)
    if hi - lo < 1e-8:
        hi = lo + 1e-8
    scale = (hi - lo) / (qmax - qmin)
    zp = int(np.clip(np.round(qmin - lo / scale), qmin, qmax))
    return QParams(np.float32(scale), zp, dtype)


def symmetric_weight_params(w: np.ndarray, axis: int) -> QParams:
    """Per-channel symmetric int8 weight parameters (range [-127, 127], zero point 0)."""
    reduce_axes = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=reduce_axes)
    scale = np.where(amax > 0, amax / 127.0, 1e-8).astype(np.float32)
    return QParams(scale, np.zeros_like(scale, dtype=np.int64), "int8", axis=axis)


@dataclass
class QuantPlan:
    """How each tensor of one float graph is quantized.

    Attributes:
        activations: ONNX activation tensor name (graph input, intermediate, output) -> params.
        weights: initializer name of a Conv/ConvTranspose weight -> per-channel params.
        int8_views: int16 activation -> the int8 parameters its int8 consumers read it with (the
            asymmetric parameters of its calibrated range). Without them an int16 -> int8
            boundary would use a symmetric int8 range, losing up to a bit on one-sided
            tensors (SiLU outputs) compared with plain int8.
        methods: tensor name -> range-setting method that produced its params (provenance).
        notes: free-form provenance recorded in the artifact (techniques applied, counts).
    """

    activations: dict[str, QParams] = field(default_factory=dict)
    weights: dict[str, QParams] = field(default_factory=dict)
    int8_views: dict[str, QParams] = field(default_factory=dict)
    methods: dict[str, str] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def activation(self, name: str) -> QParams:
        try:
            return self.activations[name]
        except KeyError:
            raise KeyError(f"quantization plan has no parameters for tensor {name!r}") from None
