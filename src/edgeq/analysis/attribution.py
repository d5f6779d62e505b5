"""Where an artifact's mAP goes: the float graph with only the artifact's *output* rounding.

:func:`output_rounding_model` rebuilds the float cut graph the artifact was converted from (as
:func:`edgeq.prepare.prepare_as_recorded` rebuilds from the artifact's recorded settings), runs it in onnxruntime,
and rounds each output with the artifact's own quantization (scale, zero point, dtype), clamping
to the dtype's range exactly as the integer kernel would. The artifact's metadata then decodes the
dequantized values. Validated beside the float model and the artifact itself, it splits the
artifact's drop in two: what the outputs' own rounding costs, and what everything inside the graph
(int8 activations and weights) costs.

:func:`float_outputs_model` splits it the other way, by head branch: the artifact's own outputs,
except those of one logical kind (``boxes``, ``scores``, ``objectness``, ``mask_coefs``,
``protos``), which come from the float graph. What the mAP recovers is what that branch's
accumulated int8 error costs (YOLOv5n, COCO person set: float boxes recover 0.7 of a 1.3-point
drop, float objectness 0.4, float class scores 0.1).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.graph.session import make_session
from edgeq.errors import ArtifactError
from edgeq.meta.read import TensorDesc
from edgeq.meta.schema import Quant
from edgeq.quant.plan import QRANGE, QParams
from edgeq.runtime.artifact import Model, load


def _qparams(q: Quant, dtype: str) -> QParams:
    """The artifact's quantization of one output as :class:`QParams` (per-axis when it has several scales)."""
    return QParams(q.scale, q.zero_point, dtype, q.axis if np.size(q.scale) > 1 else None)  # type: ignore[arg-type]


class OutputRoundingBackend:
    """The float cut graph, each output rounded to the artifact's output quantization.

    Takes the artifact's uint8 NHWC input and returns float outputs in the artifact's layout.
    """

    def __init__(self, source: str | Path, artifact: Model, threads: int | None = None) -> None:
        from edgeq.prepare import prepare_as_recorded

        prep = prepare_as_recorded(source, artifact.meta.edgeq or {}, artifact.path)
        self.sess = make_session(prep.graph, threads)
        self._in_name = self.sess.get_inputs()[0].name
        names = [o.name for o in self.sess.get_outputs()]
        self.inputs = artifact.backend.inputs
        self.outputs = [TensorDesc(d.name, d.shape, "float32", None) for d in artifact.backend.outputs]
        self._quant = [d.quant for d in artifact.backend.outputs]
        self._dtypes = [d.dtype for d in artifact.backend.outputs]
        missing = [d.name for d in self.outputs if d.name not in names]
        if missing:
            raise ArtifactError(f"the float graph rebuilt from {source} has no outputs named {missing}",
                                "pass the ONNX model this artifact was converted from")
        self._order = [names.index(d.name) for d in self.outputs]

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return [self._round(v, desc, q, dt) for v, desc, q, dt in zip(self._float(x), self.outputs, self._quant, self._dtypes)]

    def run_float(self, x: np.ndarray) -> list[np.ndarray]:
        """The float graph's outputs in the artifact's order and layout, not rounded."""
        return [self._round(v, desc, None, dt) for v, desc, dt in zip(self._float(x), self.outputs, self._dtypes)]

    def _float(self, x: np.ndarray) -> list[np.ndarray]:
        real = np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)  # uint8 NHWC in
        outs = self.sess.run(None, {self._in_name: real})
        return [outs[i] for i in self._order]

    @staticmethod
    def _round(v: np.ndarray, desc: TensorDesc, q: Quant | None, dtype: str) -> np.ndarray:
        """One float output in the artifact's layout, rounded to its codes and dequantized."""
        if v.ndim == 4 and tuple(v.shape[i] for i in (0, 2, 3, 1)) == tuple(desc.shape):
            # edgeq stores 4-D outputs NHWC (also when C == H == W, as in scores_0 of YOLOv8n)
            v = v.transpose(0, 2, 3, 1)
        if q is None:
            return np.ascontiguousarray(v)
        if dtype not in QRANGE:
            raise ArtifactError(f"output {desc.name!r} has dtype {dtype}, which this attribution cannot round")
        p = _qparams(q, dtype)
        return np.ascontiguousarray(p.dequantize(p.quantize(v)))


class FloatOutputsBackend:
    """The artifact's outputs (dequantized), with the outputs named in ``swap`` from the float graph."""

    def __init__(self, source: str | Path, artifact: Model, swap: set[str], threads: int | None = None) -> None:
        self.artifact = artifact.backend
        self.reference = OutputRoundingBackend(source, artifact, threads)
        self.inputs = self.artifact.inputs
        self.outputs = self.reference.outputs
        self._swap = [d.name in swap for d in self.artifact.outputs]
        self._quant = [d.quant for d in self.artifact.outputs]
        self._dtypes = [d.dtype for d in self.artifact.outputs]

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        real = self.reference.run_float(x)
        out = []
        for use_float, f, q, quant, dtype in zip(self._swap, real, self.artifact.run(x), self._quant, self._dtypes):
            if use_float:
                out.append(f)
            elif quant is None:
                out.append(np.asarray(q, np.float32))
            else:
                out.append(np.ascontiguousarray(_qparams(quant, dtype).dequantize(q), dtype=np.float32))
        return out


def _float_meta(art: Model) -> Any:
    meta = copy.deepcopy(art.meta)
    for out in meta.outputs:
        for phys in out.physical:
            phys.quantization, phys.dtype = None, "float32"
    return meta


def output_kinds(artifact: Model) -> list[str]:
    """The logical output kinds of an artifact (``boxes``, ``scores``, ...), in metadata order."""
    return list(dict.fromkeys(o.type for o in artifact.meta.outputs))


def float_outputs_model(artifact: str | Path, source: str | Path, kind: str, threads: int | None = None) -> Model:
    """A predictor: ``artifact`` with its ``kind`` outputs (every scale) taken from the float graph.

    Args:
        artifact: an edgeq ``.tflite`` artifact.
        source: the float ONNX model it was converted from.
        kind: a logical output type of the artifact (see :func:`output_kinds`).
        threads: onnxruntime threads.

    Raises:
        ArtifactError: the artifact has no output of that kind.
    """
    art = load(artifact, threads=threads)
    swap = {p.name for o in art.meta.outputs if o.type == kind for p in o.physical}
    if not swap:
        raise ArtifactError(f"{artifact} has no {kind!r} outputs", f"choose one of {output_kinds(art)}")
    return Model(Path(artifact), FloatOutputsBackend(source, art, swap, threads), _float_meta(art))


def output_rounding_model(artifact: str | Path, source: str | Path, threads: int | None = None) -> Model:
    """A predictor: the float graph of ``source`` with only ``artifact``'s output rounding.

    Args:
        artifact: an edgeq ``.tflite`` artifact.
        source: the float ONNX model it was converted from.
        threads: onnxruntime threads.
    """
    art = load(artifact, threads=threads)
    return Model(Path(artifact), OutputRoundingBackend(source, art, threads), _float_meta(art))


__all__ = ["OutputRoundingBackend", "FloatOutputsBackend", "output_rounding_model", "float_outputs_model", "output_kinds"]
