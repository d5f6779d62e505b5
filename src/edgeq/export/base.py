"""``Target``: everything that differs between deployment formats, behind one interface.

A target is one package under :mod:`edgeq.export` holding one ``Target`` subclass, and one line
in the registry (``edgeq.export.TARGETS``). The pipeline hands every target the same float graph
and the same target-neutral :class:`~edgeq.quant.plan.QuantPlan`; the target owns the rest:

* **constraints**: how its integer kernels tie an op's output parameters to its inputs'
  (:attr:`constraints`, read by the planner so the plan already meets them);
* **the emitter**: float graph + plan -> artifact bytes and its interface (:meth:`emit`);
* **embedding**: where ``edgefirst.json`` and ``labels.txt`` go in its format (:meth:`embed`);
* **the runtime**: a backend that runs its artifacts (:meth:`backend`) and a probe that reads
  their tensors by ONNX name (:meth:`probe`, for the collapse guard and the analysis).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np
import onnx

from edgeq.meta.build import TensorLike
from edgeq.meta.embed import append_zip, zip_start
from edgeq.meta.read import TensorDesc
from edgeq.quant.constraints import Constraints
from edgeq.quant.observe import TensorProbe
from edgeq.quant.plan import QuantPlan


class Emitted(Protocol):
    """What an emitter wrote: the artifact bytes (before metadata) and its interface.

    ``outputs`` are in ONNX graph-output order and named as the ONNX outputs; ``layouts`` maps
    an ONNX tensor name to the permutation from ONNX to stored axis order.
    """

    buffer: bytes
    inputs: Sequence[TensorLike]
    outputs: Sequence[TensorLike]
    layouts: Mapping[str, tuple[int, ...]]


class Backend(Protocol):
    """An inference engine holding one loaded artifact."""

    inputs: list[TensorDesc]
    outputs: list[TensorDesc]

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """Run on one input tensor; outputs in the order of :attr:`outputs`."""
        ...


class Target(ABC):
    """One deployment format (TFLite INT8, ...)."""

    #: registry key, ``--target`` value and the artifact's ``edgeq.target``
    name: ClassVar[str]
    #: the artifact file suffix (``.tflite``)
    suffix: ClassVar[str]
    #: the operator constraints its integer kernels impose
    constraints: ClassVar[Constraints]
    #: the layout of 4-D tensors in its artifacts (``nhwc`` | ``nchw``), as the metadata describes them
    layout: ClassVar[str] = "nhwc"

    @abstractmethod
    def emit(self, graph: onnx.ModelProto, plan: QuantPlan, *, description: str = "") -> Emitted:
        """Write ``graph`` quantized as ``plan`` says (no metadata yet)."""

    def embed(self, artifact: bytes, files: dict[str, bytes]) -> bytes:
        """``artifact`` carrying the metadata ``files``; default: an appended ZIP (EdgeFirst)."""
        return append_zip(artifact, files)

    @abstractmethod
    def backend(self, path: Path, threads: int | None = None) -> Backend:
        """A runtime for an artifact file of this target."""

    @abstractmethod
    def probe(self, emitted: Emitted, threads: int | None = None) -> TensorProbe:
        """Run ``emitted`` keeping intermediates, reading tensors by ONNX name."""

    def model_bytes(self, artifact: bytes) -> bytes:
        """The artifact without its embedded metadata (what ``edgeq.model_sha256`` covers)."""
        end = zip_start(artifact)
        return artifact if end is None else artifact[:end]

    def owns(self, path: Path) -> bool:
        """Whether ``path`` is an artifact of this target (by suffix)."""
        return path.suffix.lower() == self.suffix
