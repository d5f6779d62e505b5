"""Observe an artifact next to its float ONNX graph, tensor by tensor.

A target's emitter names every artifact tensor that holds an ONNX tensor after it and records its
axis order, so a target's :class:`TensorProbe` (``edgeq.export.tflite.probe.ArtifactProbe`` for
TFLite) can read each one back, dequantized and in ONNX layout, and compare it with the float
graph's value on the same image (:class:`FloatProbe`). The collapse guard and the analysis build
on this; nothing here changes a model.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np
import onnx

from edgeq.calib.preprocess import to_nchw_float
from edgeq.graph.session import BoundRunner, expose_all, make_session


class TensorProbe(Protocol):
    """Runs an artifact keeping its intermediates, and reads tensors by ONNX name (ONNX layout)."""

    def names(self) -> list[str]:
        """ONNX tensor names readable from the artifact."""
        ...

    def run(self, rgb: np.ndarray) -> None:
        """Invoke on one letterboxed RGB uint8 HWC image."""
        ...

    def codes(self, name: str) -> np.ndarray:
        """The integer codes of ``name`` from the last run."""
        ...

    def value(self, name: str) -> np.ndarray:
        """The dequantized value of ``name`` from the last run."""
        ...

    def scale(self, name: str) -> float:
        """The quantization step of ``name``."""
        ...

    def zero_point(self, name: str) -> int:
        """The zero point of ``name``: the code that stands for 0.0 (``value = (code - zp) * scale``)."""
        ...


class FloatProbe:
    """Runs the float ONNX graph exposing the tensors asked for."""

    def __init__(self, model: onnx.ModelProto, names: Iterable[str], threads: int | None = None) -> None:
        self.names = list(dict.fromkeys(names))
        self.session = make_session(expose_all(model, self.names), threads)
        self.input_name = self.session.get_inputs()[0].name
        self._run = BoundRunner(self.session, self.names)

    def run(self, rgb: np.ndarray) -> dict[str, np.ndarray]:
        """Float values of the exposed tensors on one letterboxed RGB uint8 HWC image (valid until
        the next call: the buffers are reused, which keeps memory flat)."""
        return dict(self._run(self.input_name, to_nchw_float(rgb)))


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when identical)."""
    noise = float(np.mean((reference.astype(np.float64) - approx) ** 2))
    signal = float(np.mean(reference.astype(np.float64) ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(max(signal, 1e-30) / noise))


__all__ = ["FloatProbe", "TensorProbe", "sqnr_db"]
