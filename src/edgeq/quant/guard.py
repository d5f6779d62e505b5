"""Collapse guard: check, after conversion, that every output survived INT8.

The failure this exists for is silent: an artifact that loads, runs and decodes, but whose
outputs have lost their information, because one INT8 scale had to cover values of very
different sizes. The upstream "combined" YOLOv8 output is the standard example: boxes, class
scores and mask coefficients share one scale, so with pixel boxes (0..640) every score rounds
to 0, and with mask coefficients (about +-20) every box moves in 16-pixel steps.

The guard runs the float graph and the written artifact on a few calibration images and checks
each output *component* (a whole smart output, or the boxes / scores / coefficient rows of a
combined one) in the units that matter to decoding:

* the quantization **step** in natural units: pixels for boxes, probability for scores, logits
  for pre-sigmoid scores and DFL logits;
* **levels**: how many INT8 steps span the component's observed float range;
* **SQNR** (dB) of the dequantized artifact against the float graph;
* the **representable maximum** (the largest code, dequantized): a score output that cannot
  rise above ~0.5 (a sigmoid-read logit output whose range tops out at logit 0, the mark of a
  calibration set that never produced a confident detection) has lost its ranking, whatever its
  SQNR on the same images says;
* **clipping**: how much of the float output on the guard's images lies above that maximum.

Each component is ``ok``, ``warn`` or ``collapse``; the pipeline logs warnings with the
concrete fix and records the report in the artifact's provenance. Intermediate tensors are
checked too, and reported when they have collapsed (almost no signal left).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from edgeq.calib.ranges import LOGIT_FLOOR
from edgeq.meta.schema import Output
from edgeq.quant.observe import FloatProbe, TensorProbe

#: Calibration images the guard runs.
IMAGES = 4

#: kind -> (warn, collapse) limits on the quantization step in the kind's natural unit.
STEP_LIMITS: Mapping[str, tuple[float, float]] = {
    "boxes": (2.0, 8.0),  # pixels
    "scores": (0.01, 0.05),  # probability
    "logits": (0.5, 1.0),  # pre-sigmoid / DFL logits
}
#: (warn, collapse): fewest INT8 steps that must span a component's float range.
LEVEL_LIMITS = (64, 16)
#: (warn, collapse): least SQNR (dB) of an output component against the float graph.
SQNR_LIMITS = (10.0, 4.0)
#: An intermediate tensor below this SQNR (dB) is reported as collapsed.
TENSOR_COLLAPSE_DB = 0.0
#: (warn, collapse): the highest probability a score output must be able to express (its largest
#: code, dequantized; through the sigmoid for a logit output). At 0.55 fewer than ~5 INT8 steps lie
#: above logit 0, so every confident detection ties at the cap; a well calibrated YOLOv8n
#: (200 COCO images) reaches 0.89 at its weakest scale.
SCORE_CAP_LIMITS = (0.75, 0.55)
#: kind -> spread of the float values (over the guard's images) below which an output is *flat*:
#: the float model itself says the same thing for every image and anchor (untrained or damaged
#: weights), so INT8 has nothing to lose. Real heads span tens of logits, hundreds of pixels.
FLAT_SPREAD: Mapping[str, float] = {"logits": 1.0, "scores": 0.02, "boxes": 1.0, "values": 1e-3}
#: Clipping at the top that warns: this share of the float values above the largest code ...
CLIP_SHARE = 0.01
#: ... or the float maximum above it by this much: in probability for scores (sigmoid-read logits
#: through the sigmoid), else as a fraction of the representable range's width.
CLIP_MARGIN = {"scores": 0.05, "values": 0.25}


@dataclass(frozen=True)
class Component:
    """A part of one output that is decoded one way.

    Attributes:
        tensor: the output's ONNX (= artifact) tensor name.
        kind: ``boxes`` (coordinates), ``scores`` (probabilities), ``logits`` (pre-sigmoid
            scores, DFL or anchor logits) or ``values`` (mask coefficients, protos, other).
        axis / start / stop: the slice of the output (ONNX layout) the component covers
            (``axis`` None: the whole tensor).
        unit: multiplies the step to get natural units (input size for normalized boxes).
        sigmoid: the decoder reads it through a sigmoid (score logits): logits below
            :data:`~edgeq.calib.ranges.LOGIT_FLOOR` never pass a threshold, so they count as equal to it (the
            planner floors such outputs' ranges there).
    """

    tensor: str
    kind: str
    axis: int | None = None
    start: int = 0
    stop: int | None = None
    unit: float = 1.0
    sigmoid: bool = False

    @property
    def label(self) -> str:
        return self.tensor if self.axis is None else f"{self.tensor}[{self.kind}]"

    def take(self, x: np.ndarray) -> np.ndarray:
        if self.axis is None:
            return x
        index = [slice(None)] * x.ndim
        index[self.axis] = slice(self.start, self.stop)
        return x[tuple(index)]


@dataclass
class Check:
    """The verdict on one component (or collapsed intermediate tensor)."""

    name: str
    kind: str
    status: str
    sqnr_db: float
    step: float
    levels: float
    codes_used: int
    reason: str = ""
    fix: str = ""
    #: the largest value the output can hold (its top code, dequantized; logits for a logit output)
    range_max: float = float("nan")
    #: share of the float values on the guard's images above ``range_max`` (by more than half a step)
    clipped: float = 0.0


@dataclass
class GuardReport:
    """All checks; ``warnings`` are the ones to tell the user about."""

    checks: list[Check] = field(default_factory=list)
    images: int = 0

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status != "ok"]

    @property
    def collapsed(self) -> bool:
        return any(c.status == "collapse" for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "status": "collapse" if self.collapsed else ("warn" if self.warnings else "ok"),
            "outputs": [_rounded(c) for c in self.checks if c.kind != "tensor"],
            "warnings": [_rounded(c) for c in self.warnings],
        }


def _rounded(c: Check) -> dict[str, Any]:
    d = asdict(c)
    for k in ("sqnr_db", "step", "levels", "range_max", "clipped"):
        d[k] = None if not np.isfinite(d[k]) else round(float(d[k]), 4)
    return {k: v for k, v in d.items() if v not in ("", None)}


def components(outputs: Sequence[Output], nc: int, imgsz: int) -> list[Component]:
    """The components of an artifact's outputs, from its metadata."""
    found: list[Component] = []
    for out in outputs:
        for phys in out.physical:
            found.extend(_components_of(out, phys, nc, imgsz))
    return found


def _components_of(out: Output, phys: Output, nc: int, imgsz: int) -> list[Component]:
    name = phys.name
    if out.type == "detection" and not out.children:
        return _combined(name, phys, nc, imgsz, bool(out.normalized))
    sigmoid = (phys.activation_required or out.activation_required) == "sigmoid"
    if out.type in ("boxes", "scores") and (out.encoding == "dfl" or sigmoid):
        return [Component(name, "logits", sigmoid=sigmoid)]
    if out.type == "detection" or sigmoid:
        return [Component(name, "logits", sigmoid=sigmoid)]
    if out.type == "scores":
        return [Component(name, "scores")]
    return [Component(name, "values")]


def _combined(name: str, phys: Output, nc: int, imgsz: int, normalized: bool) -> list[Component]:
    """[1, 4+nc(+nm), N] (YOLOv8: features on axis 1) or [1, N, 5+nc] (YOLOv5: axis 2)."""
    unit = float(imgsz) if normalized else 1.0
    if phys.score_format == "obj_x_class":
        return [Component(name, "boxes", 2, 0, 4, unit), Component(name, "scores", 2, 4, None)]
    parts = [Component(name, "boxes", 1, 0, 4, unit), Component(name, "scores", 1, 4, 4 + nc)]
    if phys.shape[1] > 4 + nc:
        parts.append(Component(name, "values", 1, 4 + nc, None))
    return parts


@dataclass(frozen=True)
class _Range:
    """What an integer tensor can represent: its smallest and largest code, dequantized."""

    lo: float
    hi: float
    scale: float
    dtype: str  # INT8, INT16, UINT8

    @classmethod
    def of(cls, probe: TensorProbe, name: str) -> _Range:
        dtype = probe.codes(name).dtype
        info = np.iinfo(dtype)
        scale, zp = probe.scale(name), probe.zero_point(name)
        return cls((info.min - zp) * scale, (info.max - zp) * scale, scale, dtype.name.upper())


class _Stats:
    """Signal, noise, observed range, codes and clipping of one component over the images."""

    def __init__(self) -> None:
        self.signal = self.noise = 0.0
        self.lo, self.hi = np.inf, -np.inf
        self.seen = np.zeros(1 << 16, bool)
        self.values = self.above = 0

    def add(self, ref: np.ndarray, approx: np.ndarray, codes: np.ndarray | None = None, sigmoid: bool = False,
            rng: _Range | None = None) -> None:
        self.lo, self.hi = min(self.lo, float(ref.min())), max(self.hi, float(ref.max()))
        if rng is not None:
            self.values += ref.size
            self.above += int(np.count_nonzero(ref > rng.hi + 0.5 * rng.scale))
        ref64, approx = ref.astype(np.float64), approx.astype(np.float64)
        if sigmoid:
            ref64, approx = np.maximum(ref64, LOGIT_FLOOR), np.maximum(approx, LOGIT_FLOOR)
        self.signal += float(np.sum(ref64**2))
        self.noise += float(np.sum((ref64 - approx) ** 2))
        if codes is not None:
            self.seen[(codes.astype(np.int64).ravel() + (1 << 15)) & 0xFFFF] = True

    @property
    def clipped(self) -> float:
        """Share of the float values above the representable range (0 when not measured)."""
        return self.above / self.values if self.values else 0.0

    @property
    def codes_used(self) -> int:
        return int(self.seen.sum())

    @property
    def sqnr_db(self) -> float:
        if self.noise == 0:
            return float("inf")
        return 10.0 * float(np.log10(max(self.signal, 1e-30) / self.noise))


def check_artifact(graph: onnx.ModelProto, probe: TensorProbe, parts: Sequence[Component],
                   images: Sequence[np.ndarray], *, split: str = "smart", threads: int | None = None) -> GuardReport:
    """Run the float graph and the artifact on ``images`` and judge every component.

    Args:
        graph: the float graph the artifact was written from.
        probe: the written artifact, readable tensor by tensor (its target's ``probe``).
        parts: output components (see :func:`components`).
        images: letterboxed RGB uint8 HWC images (a few calibration images).
        split: the artifact's split mode, for the suggested fix.
    """
    names = [n for n in probe.names() if n not in {i.name for i in graph.graph.input}]
    floats = FloatProbe(graph, names, threads)
    stats = {p.label: _Stats() for p in parts}
    tensors = {n: _Stats() for n in names}
    ranges: dict[str, _Range] = {}
    for rgb in images:
        probe.run(rgb)
        ref = floats.run(rgb)
        for p in parts:
            if p.tensor not in ranges:
                ranges[p.tensor] = _Range.of(probe, p.tensor)
            stats[p.label].add(p.take(ref[p.tensor]), p.take(probe.value(p.tensor)), p.take(probe.codes(p.tensor)),
                               p.sigmoid, ranges[p.tensor])
        for n in names:
            tensors[n].add(ref[n], probe.value(n))
    checks = [_judge(p, stats[p.label], probe.scale(p.tensor), ranges.get(p.tensor), split) for p in parts]
    outputs = {p.tensor for p in parts}
    checks.extend(_tensor_check(n, s, probe.scale(n)) for n, s in tensors.items()
                  if n not in outputs and s.sqnr_db < TENSOR_COLLAPSE_DB)
    return GuardReport(checks, len(images))


def _judge(p: Component, s: _Stats, scale: float, rng: _Range | None, split: str) -> Check:
    step = scale * p.unit
    levels = (s.hi - s.lo) / scale if s.hi > s.lo else float("inf")
    range_max = rng.hi if rng is not None else float("nan")
    if _flat(p, s):
        return Check(p.label, p.kind, "warn", s.sqnr_db, step, levels, s.codes_used,
                     f"the float model's own output is flat on these images (values {s.lo:.4g} .. {s.hi:.4g}): "
                     "it carries no signal for INT8 to lose", "check that the model's weights are trained; "
                     "a real head's outputs vary with the image", range_max, s.clipped)
    limits = STEP_LIMITS.get(p.kind)
    capped = _score_cap(p, rng) if rng is not None else None
    clipped = _clipping(p, s, rng) if rng is not None else ""
    for verdict, i in (("collapse", 1), ("warn", 0)):
        coarse = []
        if limits and step >= limits[i]:
            coarse.append(f"step {step:.4g} {_UNITS[p.kind]} (limit {limits[i]:g})")
        if levels < LEVEL_LIMITS[i]:
            coarse.append(f"only {levels:.0f} steps span its range (limit {LEVEL_LIMITS[i]})")
        noisy = s.sqnr_db < SQNR_LIMITS[i]
        cap = capped is not None and capped <= SCORE_CAP_LIMITS[i]
        clip = bool(clipped) and verdict == "warn"  # clipping warns; it is named whenever present
        if coarse or noisy or cap or clip:
            reasons = ([_cap_reason(p, rng, capped, i)] if cap else []) + coarse + \
                      ([f"SQNR {s.sqnr_db:.1f} dB (limit {SQNR_LIMITS[i]:g} dB)"] if noisy else []) + ([clipped] if clipped else [])
            fix = _CALIBRATE_FIX if cap or (clip and not coarse and not noisy) else _fix(p, split, coarse=bool(coarse))
            return Check(p.label, p.kind, verdict, s.sqnr_db, step, levels, s.codes_used, "; ".join(reasons), fix,
                         range_max, s.clipped)
    return Check(p.label, p.kind, "ok", s.sqnr_db, step, levels, s.codes_used, range_max=range_max, clipped=s.clipped)


def _flat(p: Component, s: _Stats) -> bool:
    """The float values barely vary: below :data:`FLAT_SPREAD` in the kind's natural unit."""
    if not np.isfinite(s.lo) or not np.isfinite(s.hi):
        return False
    return (s.hi - s.lo) * p.unit < FLAT_SPREAD.get(p.kind, 0.0)


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0))))


def _score_cap(p: Component, rng: _Range) -> float | None:
    """The highest probability a score output can express (None: not a score output)."""
    if p.sigmoid:
        return _sigmoid(rng.hi)
    return rng.hi if p.kind == "scores" else None


def _cap_reason(p: Component, rng: _Range, cap: float, i: int) -> str:
    where = (f"its {rng.dtype} range tops out at logit {rng.hi:.2f}" if p.sigmoid
             else f"its largest {rng.dtype} code dequantizes to {rng.hi:.2f}")
    return f"{p.label} can never exceed {cap:.2f}: {where} (limit {SCORE_CAP_LIMITS[i]:g})"


def _clipping(p: Component, s: _Stats, rng: _Range) -> str:
    """Why the top of ``p``'s float values is clipped heavily on the guard's images ("" when it is not)."""
    if not s.values or s.hi <= rng.hi + 0.5 * rng.scale:
        return ""
    if p.sigmoid or p.kind == "scores":
        f = _sigmoid if p.sigmoid else float
        excess, margin = f(s.hi) - f(rng.hi), CLIP_MARGIN["scores"]
        over = f"float scores reach {f(s.hi):.3f}, the artifact's at most {f(rng.hi):.3f}"
    else:
        excess, margin = (s.hi - rng.hi) / max(rng.hi - rng.lo, 1e-30), CLIP_MARGIN["values"]
        over = f"float values reach {s.hi:.4g}, {excess:.0%} of its range above its largest code {rng.hi:.4g}"
    if s.clipped <= CLIP_SHARE and excess <= margin:
        return ""
    return f"clipped at the top: {s.clipped:.2%} of the values on the guard's images lie above its range ({over})"


_CALIBRATE_FIX = ("the range stops where the calibration images stopped (they never gave higher values here): "
                  "calibrate on >= 100 representative colour images letterboxed like deployment, e.g. a sample of "
                  "the training or validation set")


_UNITS = {"boxes": "px", "scores": "(probability)", "logits": "logits", "values": ""}


def _fix(p: Component, split: str, coarse: bool) -> str:
    """The concrete remedy: the output's own scale is too coarse, or the error arrives from upstream."""
    if p.axis is not None or split == "combined":
        return ("convert with --split smart: every head output then gets its own INT8 scale "
                "(the combined output shares one scale across boxes, scores and mask coefficients)")
    if coarse:
        return ("the output's range is set by rare extreme values: calibrate on more, representative "
                "images (letterboxed like deployment, >= 100)")
    return ("the error accumulates upstream: calibrate on >= 100 representative images, run "
            "`edgeq analyze` to find the layers that cost it, and keep them in int16 "
            "(--int16 NAME, or --int16-budget 5 for the outputs plus the most sensitive layers)")


def _tensor_check(name: str, s: _Stats, scale: float) -> Check:
    levels = (s.hi - s.lo) / scale if s.hi > s.lo else float("inf")
    return Check(name, "tensor", "warn", s.sqnr_db, scale, levels, 0,
                 f"intermediate SQNR {s.sqnr_db:.1f} dB: the INT8 value carries almost no signal",
                 f"try --calib-method minmax, or --int16 {name}")


__all__ = ["Check", "Component", "GuardReport", "check_artifact", "components"]
