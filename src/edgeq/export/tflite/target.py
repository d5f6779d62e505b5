"""The ``tflite`` target: fully-integer TFLite (uint8 input, int8/int16 activations) for LiteRT,
i.MX 8M Plus (VX delegate) and as the input of Vela and vendor converters."""
from __future__ import annotations

from pathlib import Path

import onnx

from edgeq.export.base import Backend, Emitted, Target
from edgeq.export.tflite.constraints import TFLITE
from edgeq.quant.observe import TensorProbe
from edgeq.quant.plan import QuantPlan


class TFLiteTarget(Target):
    """Direct ONNX -> TFLite writer; metadata as an appended ZIP (EdgeFirst's embedding)."""

    name = "tflite"
    suffix = ".tflite"
    constraints = TFLITE
    layout = "nhwc"

    def emit(self, graph: onnx.ModelProto, plan: QuantPlan, *, description: str = "") -> Emitted:
        from edgeq.export.tflite.writer import write_tflite

        return write_tflite(graph, plan, description=description)

    def backend(self, path: Path, threads: int | None = None) -> Backend:
        from edgeq.export.tflite.runtime import TFLiteBackend

        return TFLiteBackend(path, threads)

    def probe(self, emitted: Emitted, threads: int | None = None) -> TensorProbe:
        from edgeq.export.tflite.probe import ArtifactProbe

        return ArtifactProbe(emitted.buffer, emitted.layouts, threads)
