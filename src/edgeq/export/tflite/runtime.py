"""Run a TFLite artifact with LiteRT (the target's runtime backend)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeq.errors import ArtifactError
from edgeq.meta.read import describe_interpreter
from edgeq.meta.verify import check_tflite_structure


class TFLiteBackend:
    """LiteRT interpreter (the default CPU kernels, XNNPACK where applicable)."""

    def __init__(self, path: Path, threads: int | None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        # LiteRT crashes (rather than raises) on some malformed flatbuffers: refuse those first
        data = check_tflite_structure(Path(path).read_bytes(), str(path))
        try:
            self.interp = Interpreter(model_content=data, num_threads=threads)
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ArtifactError(f"LiteRT cannot load {path}: {e}") from None
        self.inputs, self.outputs = describe_interpreter(self.interp)
        self._in_index = self.interp.get_input_details()[0]["index"]
        self._out_index = [d["index"] for d in self.interp.get_output_details()]

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        self.interp.set_tensor(self._in_index, x)
        self.interp.invoke()
        return [self.interp.get_tensor(i) for i in self._out_index]


__all__ = ["TFLiteBackend"]
