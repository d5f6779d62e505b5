"""Conversion settings as data (one frozen dataclass), shared by the CLI and the Python API."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

SplitMode = Literal["smart", "combined"]
WeightRounding = Literal["gptq", "nearest"]


@dataclass(frozen=True)
class ConvertConfig:
    """How to convert a model.

    Attributes:
        split: ``smart`` cuts the graph at the head's per-scale endpoints (each its own INT8
            scale, decode in float on the CPU); ``combined`` quantizes the whole graph with its
            single concatenated output (the upstream baseline).
        calib_count: use the first N calibration images (None: all).
        calib_method: range setting for intermediate tensors: percentile (clip the 0.001 % most
            extreme values of each tail; the best measured on YOLOv8 box and mask mAP) | auto
            (per tensor, the candidate with the least expected error as seen through the
            tensor's consumers, e.g. after SiLU) | minmax | mse | entropy (see
            :mod:`edgeq.calib.ranges`).
        output_method: range setting for the artifact's outputs; min/max keeps the rare
            high-confidence logits that ranking depends on.
        split_hints: optional EdgeFirst split_hints (YAML/JSON file) to check and name the cut.
        threads: CPU threads for calibration inference (None: onnxruntime's default).
        int16: activations to keep in int16 (TFLite 16x8 kernels); each name promotes every
            tensor sharing its quantization parameters.
        int16_budget: percent of activation elements that may be int16: the head outputs
            first when they fit, then the activations whose int8 quantization costs the most
            head accuracy (measured on the first few calibration images; see
            :mod:`edgeq.quant.mixed`). None: off.
        bias_correction: fold the per-channel error INT8 adds at each conv into its bias,
            front to back on a fake-quantized run (:mod:`edgeq.quant.bias_correction`). Off:
            on YOLOv8n it measured within noise of no correction (COCO person set 0.6071 both
            ways with auto ranges; percentile ranges 0.6063 with it, 0.6085 without) while it
            adds ~40 s and ~0.5 GB to a conversion.
        equalize: cross-layer equalization of the conv pairs where it is exact (linear or
            positively homogeneous ops between them; :mod:`edgeq.graph.passes.equalize`). Off:
            YOLOv8 has almost no exact pairs (SiLU everywhere) and on the few there are (the -seg
            Proto upsample, SPPF without its SiLU) it measured no gain.
        weight_rounding: how conv weights get their INT8 codes: gptq (each filter's rounding
            errors spread over its later weights to minimise the conv's output error on 32
            calibration images, :mod:`edgeq.quant.gptq`; YOLOv5n: per-conv output error 4x lower,
            head SQNR +1 to +4 dB, ~12 s; a no-op for weights already on the INT8 grid) | nearest.
        guard: check the written outputs against the float graph and warn when one collapses
            (:mod:`edgeq.quant.guard`).
    """

    split: SplitMode = "smart"
    calib_count: int | None = None
    calib_method: str = "percentile"
    output_method: str = "minmax"
    split_hints: Path | None = None
    threads: int | None = None
    int16: tuple[str, ...] = ()
    int16_budget: float | None = None
    bias_correction: bool = False
    equalize: bool = False
    weight_rounding: WeightRounding = "gptq"
    guard: bool = True

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["split_hints"] = self.split_hints.name if self.split_hints else None
        return d
