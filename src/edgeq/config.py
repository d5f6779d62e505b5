"""Conversion settings as data (one frozen dataclass), shared by the CLI, the Python API and the
artifact's provenance. A config validates itself when it is made, so a bad setting fails before any
work starts, whoever built it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

from edgeq.calib.ranges import METHODS
from edgeq.errors import ConfigError
from edgeq.export import TARGETS

SplitMode = Literal["smart", "combined"]
OnCollapse = Literal["error", "warn"]
WeightRounding = Literal["gptq", "nearest"]

#: accepted values of the range-setting options (``auto`` chooses per tensor among the methods)
RANGE_METHODS: tuple[str, ...] = ("auto", *METHODS)


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
        target: the artifact format, a name in :data:`edgeq.export.TARGETS` (``tflite``).
        split_hints: optional EdgeFirst split_hints (YAML/JSON file) to check and name the cut.
        threads: CPU threads of the artifact's own runtime in the collapse guard (None: its
            default). The float passes run on one thread whatever this is, so that the artifact
            does not depend on it (see ``edgeq.pipeline.FLOAT_PASS_THREADS``); not recorded.
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
        on_collapse: what a collapsed output does: ``error`` (nothing is written; the error names
            the outputs and the fix) or ``warn`` (the artifact is written, the warnings logged and
            recorded; for deliberate baselines such as ``combined``).
        skip_bad_images: calibrate without the calibration images that cannot be decoded
            (logged with a count) instead of refusing to start.
    """

    split: SplitMode = "smart"
    target: str = "tflite"
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
    on_collapse: OnCollapse = "error"
    skip_bad_images: bool = False

    def __post_init__(self) -> None:
        _one_of("split", self.split, get_args(SplitMode))
        _one_of("target", self.target, tuple(TARGETS))
        _one_of("calib_method", self.calib_method, RANGE_METHODS)
        _one_of("output_method", self.output_method, RANGE_METHODS)
        _one_of("weight_rounding", self.weight_rounding, get_args(WeightRounding))
        _one_of("on_collapse", self.on_collapse, get_args(OnCollapse))
        if self.calib_count is not None and (not isinstance(self.calib_count, int) or self.calib_count < 1):
            _bad("calib_count", f"must be a positive number of images, not {self.calib_count!r}",
                 "omit it to use every calibration image")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            _bad("threads", f"must be a positive integer, not {self.threads!r}", "omit it for the runtime's default")
        if isinstance(self.int16, str) or not all(isinstance(n, str) and n.strip() for n in self.int16):
            _bad("int16", f"must be tensor names, not {self.int16!r}",
                 "pass e.g. ('boxes_0', 'boxes_1'); `edgeq analyze` lists the names")
        object.__setattr__(self, "int16", tuple(self.int16))
        budget = self.int16_budget
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                                   or not math.isfinite(budget) or not 0 < budget <= 100):
            _bad("int16_budget", f"must be a percentage in (0, 100], not {budget!r}",
                 "e.g. 5 for the head outputs plus the most sensitive layers; omit it for W8A8")
        if self.split == "combined" and self.split_hints is not None:
            _bad("split_hints", "name the smart cut, but split is 'combined'", "use split 'smart' or drop the hints")
        if self.split_hints is not None:
            object.__setattr__(self, "split_hints", Path(self.split_hints))
        for f in fields(self):
            if f.type == "bool" and not isinstance(getattr(self, f.name), bool):
                _bad(f.name, f"must be True or False, not {getattr(self, f.name)!r}")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["split_hints"] = self.split_hints.name if self.split_hints else None
        return d


def _bad(option: str, problem: str, fix: str | None = None) -> None:
    raise ConfigError(f"{option} {problem}", fix, option=option)


def _one_of(option: str, value: Any, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ConfigError(f"unknown {option} {value!r}", f"use one of: {', '.join(accepted)}", option=option)
