"""Read a written TFLite artifact tensor by tensor (the target's :class:`~edgeq.quant.observe.TensorProbe`).

The writer names every tensor that holds an ONNX tensor after it and records its axis order
(:attr:`edgeq.export.tflite.TFLiteResult.layouts`), so each INT8 tensor can be read back
(``experimental_preserve_all_tensors``), dequantized and put back into ONNX layout.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgeq.export.tflite import layout


@dataclass(frozen=True)
class StoredTensor:
    """One artifact tensor: where it is and how to read it."""

    index: int
    scale: float
    zero_point: int
    perm: tuple[int, ...]


class ArtifactProbe:
    """Runs a TFLite flatbuffer keeping every intermediate, and reads tensors by ONNX name."""

    def __init__(self, buffer: bytes, layouts: Mapping[str, Sequence[int]], threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        # No delegate: a delegated partition would leave its intermediate buffers unfilled.
        self.interp = Interpreter(
            model_content=buffer,
            num_threads=threads,
            experimental_preserve_all_tensors=True,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        self.interp.allocate_tensors()
        self.input_index = self.interp.get_input_details()[0]["index"]
        self.tensors = _stored_tensors(self.interp.get_tensor_details(), layouts)

    def names(self) -> list[str]:
        """ONNX tensor names readable from the artifact."""
        return list(self.tensors)

    def run(self, rgb: np.ndarray) -> None:
        """Invoke on one letterboxed RGB uint8 HWC image (the artifact takes raw pixels)."""
        self.interp.set_tensor(self.input_index, np.ascontiguousarray(rgb[None]))
        self.interp.invoke()

    def codes(self, name: str) -> np.ndarray:
        """The integer codes of ``name`` from the last run, in ONNX layout."""
        t = self.tensors[name]
        return self.interp.get_tensor(t.index).transpose(layout.inverse(t.perm))

    def value(self, name: str) -> np.ndarray:
        """The dequantized value of ``name`` from the last run, in ONNX layout."""
        t = self.tensors[name]
        return (self.codes(name).astype(np.float32) - t.zero_point) * np.float32(t.scale)

    def scale(self, name: str) -> float:
        """The quantization step of ``name``."""
        return self.tensors[name].scale

    def zero_point(self, name: str) -> int:
        """The zero point of ``name`` (``value = (code - zero_point) * scale``)."""
        return self.tensors[name].zero_point


def _stored_tensors(details: list[dict], layouts: Mapping[str, Sequence[int]]) -> dict[str, StoredTensor]:
    found = {}
    for d in details:
        name, (scale, zp) = d["name"], d["quantization"]
        if name in layouts and scale > 0 and np.dtype(d["dtype"]).kind in "iu":
            found[name] = StoredTensor(d["index"], float(scale), int(zp), tuple(layouts[name]))
    return found


__all__ = ["ArtifactProbe", "StoredTensor"]
