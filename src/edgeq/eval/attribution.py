"""Where an artifact's mAP goes: the float graph with only the artifact's *output* rounding.

:func:`output_rounding_model` rebuilds the float cut graph the artifact was converted from (as
:func:`edgeq.pipeline.prepare` does, with the artifact's recorded split), runs it in onnxruntime,
and rounds each output with the artifact's own quantization (scale, zero point, dtype), clamping
to the dtype's range exactly as the integer kernel would. The artifact's metadata then decodes the
dequantized values. Validated beside the float model and the artifact itself, it splits the
artifact's drop in two: what the outputs' own rounding costs, and what everything inside the graph
(int8 activations and weights) costs.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from edgeq.calib.collect import make_session
from edgeq.config import ConvertConfig
from edgeq.errors import ArtifactError
from edgeq.meta.read import TensorDesc
from edgeq.meta.schema import Quant
from edgeq.quant.plan import QRANGE, QParams
from edgeq.runtime.artifact import Model, load


class OutputRoundingBackend:
    """The float cut graph, each output rounded to the artifact's output quantization.

    Takes the artifact's uint8 NHWC input and returns float outputs in the artifact's layout.
    """

    def __init__(self, source: str | Path, artifact: Model, threads: int | None = None) -> None:
        from edgeq.pipeline import prepare

        split = (artifact.meta.edgeq or {}).get("split") or "smart"
        prep = prepare(source, ConvertConfig(split=split))  # type: ignore[arg-type]
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
        real = np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)  # uint8 NHWC in
        outs = self.sess.run(None, {self._in_name: real})
        return [self._round(outs[i], desc, q, dt) for i, desc, q, dt in zip(self._order, self.outputs, self._quant, self._dtypes)]

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
        p = QParams(q.scale, q.zero_point, dtype, q.axis if np.size(q.scale) > 1 else None)  # type: ignore[arg-type]
        return np.ascontiguousarray(p.dequantize(p.quantize(v)))


def output_rounding_model(artifact: str | Path, source: str | Path, threads: int | None = None) -> Model:
    """A predictor: the float graph of ``source`` with only ``artifact``'s output rounding.

    Args:
        artifact: an edgeq ``.tflite`` artifact.
        source: the float ONNX model it was converted from.
        threads: onnxruntime threads.
    """
    art = load(artifact, threads=threads)
    meta = copy.deepcopy(art.meta)
    for out in meta.outputs:
        for phys in out.physical:
            phys.quantization, phys.dtype = None, "float32"
    return Model(Path(artifact), OutputRoundingBackend(source, art, threads), meta)


__all__ = ["OutputRoundingBackend", "output_rounding_model"]
