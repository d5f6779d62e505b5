"""``edgeq analyze``: where an INT8 artifact loses accuracy, tensor by tensor and layer by layer.

Two measurements on the same letterboxed images:

1. **Float vs artifact, per tensor.** The float graph the artifact was made from (rebuilt with
   :func:`edgeq.pipeline.prepare` and the artifact's recorded ``split``) and the artifact itself
   (LiteRT reference kernels, every intermediate tensor kept) are run side by side. Every tensor
   the two share by name is compared after dequantizing and undoing the stored layout (NHWC):
   SQNR in dB and cosine similarity. The error here is *accumulated*: everything upstream adds.
2. **Sensitivity, per layer.** One unit at a time (a tensor plus any tensors sharing its
   parameters) is quantized with the artifact's own scale and zero point inside the float graph,
   everything else in float; the head-output error this causes is that layer's own cost (see
   :mod:`edgeq.quant.sensitivity`). Noise powers of independent layers add, so each layer's share
   of the sum says how much of the total INT8 loss it explains, and what promoting it to int16
   (whose noise is 256 times smaller in amplitude) would win back.

The result is an :class:`Analysis`: a rich table, and a Markdown + self-contained HTML report
(inline SVG charts, no plotting dependency) with plain-language advice.
"""
from __future__ import annotations

import html
import itertools
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.calib.dataset import calibration_set
from edgeq.errors import ArtifactError
from edgeq.fileio import check_writable_output, write_text_atomic
from edgeq.quant.sensitivity import (
    DecodedErrors,
    ErrorAccumulator,
    FloatActivations,
    HeadError,
    sqnr_db,
    unit_sensitivity,
)
from edgeq.quant.constraints import Constraints, Rule
from edgeq.quant.mixed import activation_elements, closure, interface, promotion_units
from edgeq.quant.plan import QParams

#: Layers whose share of the summed sensitivity noise is at least this are called out.
CALL_OUT_SHARE = 0.05


# ----------------------------------------------------------------------------- artifact tensors


def open_interpreter(path: str | Path) -> Any:
    """A LiteRT interpreter that keeps every intermediate tensor (reference builtin kernels:
    a delegate would compute its partition without filling the intermediate buffers)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:
        interp = Interpreter(
            model_path=str(path),
            experimental_preserve_all_tensors=True,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise ArtifactError(f"LiteRT cannot load {path}: {e}") from None
    return interp


def artifact_params(interp: Any) -> dict[str, QParams]:
    """Per-tensor quantization of every int8/uint8/int16 tensor of an artifact, by name.

    Per-channel tensors (weights) and int32 biases are skipped; when names repeat, the first
    tensor wins. Callers look up activations by their ONNX names, so the few quantized
    constants that also appear here are never used.
    """
    params: dict[str, QParams] = {}
    for d in interp.get_tensor_details():
        dtype = np.dtype(d["dtype"]).name
        qp = d.get("quantization_parameters", {})
        scales = np.asarray(qp.get("scales", []))
        if dtype not in ("int8", "uint8", "int16") or scales.size != 1 or d["name"] in params:
            continue
        zps = np.asarray(qp.get("zero_points", [0]))
        params[d["name"]] = QParams(np.float32(scales[0]), int(zps[0]), dtype)  # type: ignore[arg-type]
    return params


def stored_perm(onnx_shape: Sequence[int], stored_shape: Sequence[int]) -> tuple[int, ...] | None:
    """The permutation ``p`` with ``onnx.transpose(p)`` shaped like the stored tensor.

    The writer keeps 4-D activations NHWC and others in ONNX order, so those are preferred
    when several permutations fit (size-1 or equal axes); None when none fits.
    """
    onnx_shape, stored_shape = tuple(onnx_shape), tuple(stored_shape)
    if len(onnx_shape) != len(stored_shape):
        return None
    preferred = [(0, 2, 3, 1)] if len(onnx_shape) == 4 else []
    preferred.append(tuple(range(len(onnx_shape))))
    for p in preferred:
        if tuple(onnx_shape[i] for i in p) == stored_shape:
            return p
    if len(onnx_shape) > 6:
        return None
    for p in itertools.permutations(range(len(onnx_shape))):
        if tuple(onnx_shape[i] for i in p) == stored_shape:
            return p
    return None


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class TensorRow:
    """Float vs artifact for one tensor (accumulated error, over all images)."""

    name: str
    index: int  # position in the float graph's activation order
    op: str
    dtype: str
    scale: float
    sqnr_db: float
    cosine: float
    clipped: float = 0.0  # share of float values outside the tensor's representable range


@dataclass(frozen=True)
class ScoreResolution:
    """How finely a quantized class-logit output can rank detections (smart split, per level).

    Attributes:
        name: the scores output.
        step: logit quantization step.
        p_max: the highest score it can represent (sigmoid of its top code).
        live: float candidates (anchor x class) scoring above the validation floor.
        clipped_top: share of those above ``p_max`` (they all tie at ``p_max``).
        live_codes: integer codes between the floor and ``p_max``: how many score levels
            detections can be ranked into (candidates on one code tie).
    """

    name: str
    step: float
    p_max: float
    live: int
    clipped_top: float
    live_codes: int


#: Scores above this count as detections for :class:`ScoreResolution` (``yolo val``'s conf).
LIVE_SCORE = 0.001

#: Advise about score-output clipping when at least this share of live candidates clips.
CLIPPED_TOP_WARN = 0.001


@dataclass(frozen=True)
class LayerRow:
    """One unit's own cost in int8 (sensitivity pass)."""

    rank: int
    name: str
    op: str
    members: tuple[str, ...]
    elements: int
    int16_elements: int  # elements made int16 by promoting it (its closure, see quant.mixed)
    int16_tensors: tuple[str, ...]  # that closure
    dtype: str  # dtype in the artifact
    noise: float
    share: float  # of the summed noise of all units
    head_sqnr_db: float
    kinds_db: dict[str, float]
    promotable: bool


@dataclass
class Analysis:
    """Everything ``edgeq analyze`` measured."""

    model: str
    artifact: str
    split: str
    images: int
    tensors: list[TensorRow]
    layers: list[LayerRow]
    artifact_error: dict[str, Any]
    total_elements: int
    shared_tensors: int
    float_tensors: int
    scores: list[ScoreResolution] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tensor_elements: dict[str, int] = field(default_factory=dict)  # activation -> elements
    calib_method: str | None = None  # the artifact's recorded range method (None: unknown)

    # -- derived ---------------------------------------------------------------------------------
    @property
    def total_noise(self) -> float:
        return sum(r.noise for r in self.layers)

    def predicted_sqnr_after(self, k: int) -> float:
        """Predicted head SQNR (dB, from the summed layer noises) with the top ``k`` promotable
        layers promoted: a layer's noise is removed once every tensor of its closure is int16."""
        chosen = {t for r in self.promotable_layers()[:k] for t in r.int16_tensors}
        removed = sum(r.noise for r in self.promotable_layers() if set(r.int16_tensors) <= chosen)
        return sqnr_db(max(self.total_noise - removed, 1e-30))

    def promotable_layers(self) -> list[LayerRow]:
        return [r for r in self.layers if r.promotable and r.dtype != "int16"]

    def advice(self, top: int = 5) -> list[str]:
        """Plain-language findings and what to do about them."""
        lines: list[str] = []
        total = self.total_noise
        if total <= 0 or not self.layers:
            return self._output_advice(lines)
        art_db = self.artifact_error.get("head_sqnr_db")
        if art_db is not None:
            lines.append(
                f"The artifact's head outputs (decoded scores/boxes{'/masks' if 'mask_coefs' in self.artifact_error.get('kinds_db', {}) else ''}) "
                f"have an SQNR of {art_db:.1f} dB against float; adding up the layers' own errors below predicts {sqnr_db(total):.1f} dB."
            )
        called = [r for r in self.layers if r.share >= CALL_OUT_SHARE]
        if called:
            parts = [f"{r.name} ({r.op}, {100 * r.share:.0f}%)" for r in called[:top]]
            lines.append(
                f"{len(called)} layer(s) each cause at least {100 * CALL_OUT_SHARE:.0f}% of the activation error: "
                + "; ".join(parts) + "."
            )
        top_share = sum(r.share for r in self.layers[:top])
        lines.append(f"The top {min(top, len(self.layers))} layers explain {100 * top_share:.0f}% of it.")
        prom = self.promotable_layers()[:top]
        if prom:
            names = ",".join(r.name for r in prom[:3])
            top3 = {t for r in prom[:3] for t in r.int16_tensors}
            pct = 100.0 * sum(self.tensor_elements.get(t, 0) for t in top3) / max(self.total_elements, 1)
            lines.append(
                f"To win this back, keep the most sensitive activations in int16 (16x8 kernels): "
                f"`edgeq convert ... --int16 {names}` ({pct:.1f}% of activation elements, with the ops reading them; predicted head SQNR "
                f"{sqnr_db(total):.1f} -> {self.predicted_sqnr_after(3):.1f} dB), or let edgeq choose with "
                f"`--int16-budget 5` (at most 5% of activation elements in int16). LiteRT runs 16x8 ops on its "
                f"reference-style kernels, not XNNPACK: expect the CPU latency to grow several-fold, most for early, "
                f"high-resolution layers."
            )
        early = [r for r in self.layers[:top] if r.op in ("Conv", "Mul") and r.share >= CALL_OUT_SHARE]
        # only the clipping methods the artifact was not made with (percentile is the default)
        clipping = [m for m in ("percentile", "mse") if m != (self.calib_method or "percentile")]
        if early and clipping and any(r.name.startswith(("/model.0/", "/model.1/", "/model.2/")) for r in early):
            methods = " or ".join(f"`--calib-method {m}`" for m in clipping)
            lines.append(
                "The worst layers sit at the start of the backbone, where min/max ranges are wide "
                f"(rare large activations): a clipping range method ({methods}) also narrows them without int16."
            )
        return self._output_advice(lines)

    def _output_advice(self, lines: list[str]) -> list[str]:
        clipped = [r for r in self.scores if r.clipped_top >= CLIPPED_TOP_WARN]
        if clipped:
            parts = [f"{r.name} tops out at score {r.p_max:.3f} and {100 * r.clipped_top:.2f}% of its candidates are clipped there"
                     for r in clipped]
            lines.append(
                "Score outputs clip confident detections: " + "; ".join(parts) + ". Clipped detections tie, so "
                "their ranking is lost; give the score outputs headroom above the calibration maximum."
            )
        kinds = self.artifact_error.get("kinds_db", {})
        if kinds:
            worst = min(kinds, key=kinds.get)
            lines.append(f"Of the head outputs, {worst} degrade most ({kinds[worst]:.1f} dB).")
        return lines

    # -- serialization -----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            return v

        d = {
            "model": self.model, "artifact": self.artifact, "split": self.split, "images": self.images,
            "artifact_error": self.artifact_error, "total_elements": self.total_elements,
            "total_noise": self.total_noise, "predicted_head_sqnr_db": sqnr_db(self.total_noise),
            "shared_tensors": self.shared_tensors, "float_tensors": self.float_tensors,
            "advice": self.advice(), "notes": self.notes,
            "score_resolution": [asdict(r) for r in self.scores],
            "layers": [asdict(r) for r in self.layers],
            "tensors": [asdict(r) for r in self.tensors],
        }
        return clean(d)


# ----------------------------------------------------------------------------- running


def _dequantized(interp: Any, d: dict[str, Any]) -> np.ndarray:
    q = interp.get_tensor(d["index"])
    scales = d["quantization_parameters"]["scales"]
    zps = d["quantization_parameters"]["zero_points"]
    return ((q.astype(np.float32) - np.float32(zps[0])) * np.float32(scales[0])).astype(np.float32)


def _artifact_head(interp: Any, outputs: Sequence[str], shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    by_name = {d["name"]: d for d in interp.get_output_details()}
    result = {}
    for name in outputs:
        d = by_name.get(name)
        if d is None:
            continue
        x = _dequantized(interp, d)
        perm = stored_perm(shapes[name], x.shape)
        if perm is not None:
            result[name] = x.transpose(np.argsort(perm))
    return result


def analyze(
    model_path: str | Path,
    artifact_path: str | Path,
    images: str | Path,
    *,
    count: int = 4,
    sensitivity: bool = True,
    threads: int | None = None,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
    notify: Callable[[str], None] | None = None,
) -> Analysis:
    """Compare an artifact with its float graph and rank the layers by their own INT8 cost.

    Args:
        model_path: the float ONNX model the artifact was converted from.
        artifact_path: an edgeq ``.tflite`` artifact (its provenance gives the split).
        images: an image folder, dataset folder or COCO json (as ``--calib``).
        count: images to use (the first ``count`` in name order).
        sensitivity: also run the per-layer sensitivity pass (the slow part).
        threads: onnxruntime threads.
        progress: ``progress(label, total)`` returns a per-step callback (for progress bars).
        notify: called with a line for the user, e.g. how long the sensitivity pass will take
            (measured on its first layer, before the rest runs).
    """
    from edgeq.export import get_target
    from edgeq.families import get_family
    from edgeq.meta.read import read_meta
    from edgeq.prepare import prepare_as_recorded

    meta = read_meta(artifact_path)
    prov = meta.edgeq
    notes = []
    if not prov:
        notes.append("the artifact has no edgeq provenance; assumed split=smart")
    prep = prepare_as_recorded(model_path, prov, artifact_path)
    split = "combined" if prep.head is None else "smart"
    constraints = get_target(prov.get("target") or "tflite").constraints
    decoded = get_family(prep.head.family).decoded_errors if prep.head is not None else None
    imgsz = prep.loaded.info.imgsz
    # the artifact's own input: its family's preprocessing and pixel convention, as in calibration
    image_set = replace(calibration_set(images, count=count), input_convention=prep.input_convention,
                        preprocessing=meta.raw.get("validation", {}).get("preprocessing", "letterbox"))
    rgbs = list(image_set.images(imgsz))
    acts = FloatActivations(prep.graph, rgbs, threads)
    interp = open_interpreter(artifact_path)
    params = artifact_params(interp)
    tensors, art_err = _compare(acts, interp, rgbs, prep.head, constraints, decoded)
    missing_outputs = [o for o in acts.outputs if o not in params]
    if missing_outputs:
        notes.append(f"graph outputs not found by name in the artifact: {missing_outputs}")
    layers: list[LayerRow] = []
    if sensitivity:
        all_units = promotion_units(prep.graph, params, constraints)
        units = [u for u in all_units if acts.input_name not in u]
        step = progress("sensitivity", len(units)) if progress else None
        sens = _timed_sensitivity(acts, units, params, prep, decoded, threads, step, notify)
        total = sum(s.noise for s in sens) or 1.0
        ranked = sorted(sens, key=lambda s: (-s.noise, s.name))
        sizes, keep = activation_elements(prep.graph), interface(prep.graph)
        layers = []
        for i, s in enumerate(ranked):
            promoted = closure(s.members, prep.graph, all_units)
            layers.append(LayerRow(
                rank=i + 1, name=s.name, op=s.op, members=s.members, elements=s.elements,
                int16_elements=sum(sizes.get(t, 0) for t in promoted), int16_tensors=tuple(promoted),
                dtype=params[s.name].dtype,
                noise=s.noise, share=s.noise / total, head_sqnr_db=s.error.sqnr_db,
                kinds_db=s.error.kind_sqnr_db(), promotable=not keep.intersection(promoted),
            ))
    tensor_elements = activation_elements(prep.graph)
    total_elements = sum(tensor_elements.values())
    scores = score_resolution(acts, params, prep.head)
    return Analysis(
        model=str(model_path), artifact=str(artifact_path), split=split, images=len(rgbs),
        tensors=tensors, layers=layers, artifact_error=art_err, total_elements=total_elements,
        shared_tensors=len(tensors), float_tensors=len(acts.names), scores=scores, notes=notes,
        tensor_elements=tensor_elements, calib_method=(prov.get("calibration") or {}).get("method"),
    )


def _downstream_nodes(graph: Any, units: Sequence[Sequence[str]]) -> list[int]:
    """Per unit, how many nodes its tensors reach (what its sensitivity subgraph runs)."""
    consumers: dict[str, list[Any]] = {}
    for node in graph.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    sizes = []
    for unit in units:
        seen: set[int] = set()
        todo = list(unit)
        while todo:
            for node in consumers.get(todo.pop(), ()):
                if id(node) not in seen:
                    seen.add(id(node))
                    todo.extend(node.output)
        sizes.append(len(seen))
    return sizes


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _timed_sensitivity(acts: FloatActivations, units: list, params: dict[str, QParams], prep: Any,
                       decoded: DecodedErrors | None, threads: int | None, step: Any,
                       notify: Callable[[str], None] | None) -> list:
    """The sensitivity pass; with ``notify``, the first unit is timed and the whole pass estimated
    from it (each unit costs about as much as the nodes it reaches) before the rest runs."""
    def run(us: list) -> list:
        return unit_sensitivity(acts, us, params, head=prep.head, decoded=decoded, threads=threads, progress=step)

    if notify is None or not units:
        return run(units)
    t0 = time.perf_counter()
    first = run(units[:1])
    took = time.perf_counter() - t0
    sizes = _downstream_nodes(prep.graph, units)
    rest = took * sum(sizes[1:]) / max(sizes[0], 1)
    notify(f"sensitivity pass: {len(units)} layers x {len(acts)} images, about {_duration(took + rest)} "
           f"(the first layer took {took:.1f} s)")
    return first + run(units[1:])


def _clipped(f: np.ndarray, d: dict[str, Any]) -> float:
    """How many float values fall outside the representable range of artifact tensor ``d``."""
    qp = d["quantization_parameters"]
    scale, zp = float(qp["scales"][0]), int(qp["zero_points"][0])
    info = np.iinfo(np.dtype(d["dtype"]))
    lo, hi = scale * (info.min - zp - 0.5), scale * (info.max - zp + 0.5)
    return float(np.count_nonzero((f < lo) | (f > hi)))


def score_resolution(acts: FloatActivations, params: dict[str, QParams], head: Any, floor: float = LIVE_SCORE) -> list[ScoreResolution]:
    """Clipping and ties of each quantized class-logit output over the live float candidates."""
    if head is None or not head.of_kind("scores"):
        return []
    logit_floor = math.log(floor / (1 - floor))
    rows = []
    for e in head.of_kind("scores"):
        p = params.get(e.name)
        if p is None:
            continue
        live, top = 0, 0
        for i in range(len(acts)):
            f = acts.images[i][e.name].reshape(-1)
            f = f[f > logit_floor]
            live += f.size
            top += int(np.count_nonzero(f > float(p.real_range()[1][0]) + 0.5 * float(p.scale[0])))
        hi = float(p.real_range()[1][0])
        codes = max(0, p.qmax - int(p.quantize(np.array([logit_floor], np.float32))[0]))
        rows.append(ScoreResolution(e.name, float(p.scale[0]), 1.0 / (1.0 + math.exp(-hi)), live,
                                    top / max(live, 1), codes))
    return rows


def _compare(acts: FloatActivations, interp: Any, rgbs: Sequence[np.ndarray], head: Any, constraints: Constraints,
             decoded: DecodedErrors | None) -> tuple[list[TensorRow], dict[str, Any]]:
    """Per-tensor SQNR/cosine and the head error of the artifact against float."""
    details = {}
    for d in interp.get_tensor_details():
        if d["name"] in acts.images[0] and d["name"] not in details and len(d["quantization_parameters"]["scales"]) == 1:
            details[d["name"]] = d
    order = {n: i for i, n in enumerate(acts.names)}
    op_of = {o: n.op_type for n in acts.graph.graph.node for o in n.output}
    # fixed-range outputs (Sigmoid's [0, 1)) saturate by design: not counted as clipping
    fixed = {n: constraints(op_of.get(n, "")).rule is Rule.FIXED for n in details}
    sums: dict[str, list[float]] = {n: [0.0, 0.0, 0.0, 0.0, 0.0] for n in details}  # |x-f|^2, |f|^2, x.f, |x|^2, clipped
    perms: dict[str, tuple[int, ...] | None] = {}
    head_acc = ErrorAccumulator()
    shapes = {n: acts.images[0][n].shape for n in acts.outputs}
    in_index = interp.get_input_details()[0]["index"]
    for i, rgb in enumerate(rgbs):
        interp.set_tensor(in_index, rgb[None])
        interp.invoke()
        for name, d in details.items():
            f = acts.images[i][name]
            x = _dequantized(interp, d)
            if name not in perms:
                perms[name] = stored_perm(f.shape, x.shape)
            if perms[name] is None:
                continue
            x = x.transpose(np.argsort(perms[name])).astype(np.float64)
            f64 = f.astype(np.float64)
            s = sums[name]
            s[0] += float(np.sum((x - f64) ** 2))
            s[1] += float(np.sum(f64 * f64))
            s[2] += float(np.sum(x * f64))
            s[3] += float(np.sum(x * x))
            if not fixed.get(name, False):
                s[4] += _clipped(f, d)
        head_acc.add(acts.head(i), _artifact_head(interp, acts.outputs, shapes), head, decoded)
    rows = []
    counts = {n: sum(acts.images[i][n].size for i in range(len(rgbs))) for n in details}
    for name, (noise, signal, dot, qq, clipped) in sums.items():
        if perms.get(name) is None:
            continue
        cos = dot / math.sqrt(signal * qq) if signal > 0 and qq > 0 else (1.0 if noise == 0 else 0.0)
        d = details[name]
        rows.append(TensorRow(
            name=name, index=order[name], op=op_of.get(name, "input"), dtype=np.dtype(d["dtype"]).name,
            scale=float(d["quantization_parameters"]["scales"][0]), sqnr_db=sqnr_db(noise, signal), cosine=float(cos),
            clipped=clipped / max(counts[name], 1),
        ))
    rows.sort(key=lambda r: r.index)
    err: HeadError = head_acc.result()
    art = {
        "head_sqnr_db": err.sqnr_db,
        "raw_sqnr_db": err.raw_sqnr_db,
        "kinds_db": err.kind_sqnr_db(),
        "outputs_db": {k: sqnr_db(v) for k, v in err.raw.items()},
        "noise": err.noise,
    }
    return rows, art


# ----------------------------------------------------------------------------- reports


def _fmt_db(v: float) -> str:
    return "inf" if not math.isfinite(v) else f"{v:.1f}"


def print_analysis(a: Analysis, console: Any, top: int = 15) -> None:
    """Rich tables: the head error, the top layers by sensitivity and the advice."""
    from rich.table import Table

    console.print(f"[bold]{Path(a.artifact).name}[/] vs float {Path(a.model).name} (split {a.split}, {a.images} images)")
    err = a.artifact_error
    kinds = ", ".join(f"{k} {_fmt_db(v)} dB" for k, v in err.get("kinds_db", {}).items())
    console.print(f"  head SQNR {_fmt_db(err['head_sqnr_db'])} dB ({kinds}); raw outputs {_fmt_db(err['raw_sqnr_db'])} dB")
    console.print(f"  {a.shared_tensors} of {a.float_tensors} float tensors found in the artifact")
    if a.scores:
        t = Table("score output", "logit step", "top score", "codes for p > 0.001", "candidates", "clipped at top",
                  title=f"Score outputs: resolution over float candidates above {LIVE_SCORE}")
        for r in a.scores:
            t.add_row(r.name, f"{r.step:.3f}", f"{r.p_max:.4f}", str(r.live_codes), f"{r.live:,}", f"{100 * r.clipped_top:.2f}%")
        console.print(t)
    if a.layers:
        t = Table("#", "layer (tensor)", "op", "dtype", "int16 cost", "share", "head SQNR dB", "cum. share", "tensor SQNR dB",
                  title="Per-layer sensitivity: head error with only this layer quantized (artifact's own scale)")
        by_name = {r.name: r for r in a.tensors}
        cum = 0.0
        for r in a.layers[:top]:
            cum += r.share
            tr = by_name.get(r.name)
            name = r.name + (f" (+{len(r.members) - 1})" if len(r.members) > 1 else "")
            cost = f"{100 * r.int16_elements / max(a.total_elements, 1):.2f}%"
            t.add_row(str(r.rank), name, r.op, r.dtype + ("" if r.promotable else "*"), cost,
                      f"{100 * r.share:.1f}%", _fmt_db(r.head_sqnr_db), f"{100 * cum:.0f}%",
                      _fmt_db(tr.sqnr_db) if tr else "")
        console.print(t)
        console.print("  int16 cost: share of activation elements made int16 by promoting the layer (with the ops reading it);"
                      " * = reaches a graph output, stays int8")
    for line in a.advice():
        console.print(f"  - {line}")


def to_markdown(a: Analysis, top: int = 25) -> str:
    err = a.artifact_error
    out = [
        f"# edgeq analyze: {Path(a.artifact).name}",
        "",
        (f"Float model `{Path(a.model).name}`, split `{a.split}`, {a.images} images. "
         f"{a.shared_tensors} of {a.float_tensors} float tensors matched by name."),
        "",
        "## Findings",
        "",
        *[f"- {line}" for line in a.advice()],
        "",
        "## Head error (artifact vs float)",
        "",
        "| output | SQNR dB |",
        "|---|---|",
        *[f"| {k} (decoded) | {_fmt_db(v)} |" for k, v in err.get("kinds_db", {}).items()],
        *[f"| {k} (raw) | {_fmt_db(v)} |" for k, v in err.get("outputs_db", {}).items()],
        "",
    ]
    if a.scores:
        out += [
            "## Score outputs: resolution over live candidates",
            "",
            f"Candidates: anchor x class pairs whose float score exceeds {LIVE_SCORE}.",
            "",
            "| output | logit step | top score | codes for p > 0.001 | candidates | clipped at top |",
            "|---|---|---|---|---|---|",
            *[f"| {r.name} | {r.step:.3f} | {r.p_max:.4f} | {r.live_codes} | {r.live:,} | {100 * r.clipped_top:.2f}% |" for r in a.scores],
            "",
        ]
    if a.layers:
        out += [
            "## Per-layer sensitivity",
            "",
            ("Each row: only this layer (and the tensors sharing its parameters) quantized with the "
             "artifact's scale and zero point, the rest of the graph in float. *share* is its part of "
             "the summed head noise of all layers; promoting a layer to int16 removes about that share "
             "(*int16 cost*: elements made int16, the layer plus the outputs of the ops reading it)."),
            "",
            "| # | layer | op | dtype | int16 cost | share | cum. | head SQNR dB | " + " | ".join(sorted(a.layers[0].kinds_db)) + " |",
            "|---|---|---|---|---|---|---|---|" + "---|" * len(a.layers[0].kinds_db),
        ]
        cum = 0.0
        for r in a.layers[:top]:
            cum += r.share
            kinds = " | ".join(_fmt_db(r.kinds_db[k]) for k in sorted(r.kinds_db))
            flag = "" if r.promotable else " (reaches an output)"
            cost = f"{100 * r.int16_elements / max(a.total_elements, 1):.2f}%"
            out.append(f"| {r.rank} | `{r.name}`{flag} | {r.op} | {r.dtype} | {cost} | {100 * r.share:.1f}% | "
                       f"{100 * cum:.0f}% | {_fmt_db(r.head_sqnr_db)} | {kinds} |")
        out += ["", "| top-k int16 | predicted head SQNR dB |", "|---|---|"]
        for k in (0, 1, 2, 3, 5, 10):
            out.append(f"| {k} | {_fmt_db(a.predicted_sqnr_after(k))} |")
        out.append("")
    out += ["## Per-tensor error (accumulated, artifact vs float)", "",
            "| # | tensor | op | dtype | scale | SQNR dB | cosine | clipped |", "|---|---|---|---|---|---|---|---|"]
    for r in a.tensors:
        out.append(f"| {r.index} | `{r.name}` | {r.op} | {r.dtype} | {r.scale:.4g} | {_fmt_db(r.sqnr_db)} | {r.cosine:.5f} | {100 * r.clipped:.3f}% |")
    if a.notes:
        out += ["", "## Notes", "", *[f"- {n}" for n in a.notes]]
    return "\n".join(out) + "\n"


def _svg_bars(labels: Sequence[str], values: Sequence[float], title: str, unit: str = "%") -> str:
    """A horizontal bar chart as inline SVG."""
    row, left, width = 18, 330, 380
    height = 30 + row * len(values)
    vmax = max(values, default=1.0) or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 70}" height="{height}" font-family="sans-serif" font-size="11">',
             f'<text x="4" y="14" font-weight="bold">{html.escape(title)}</text>']
    for i, (lab, v) in enumerate(zip(labels, values)):
        y = 24 + i * row
        w = max(1.0, width * v / vmax)
        short = lab if len(lab) <= 52 else "..." + lab[-49:]
        parts.append(f'<text x="{left - 6}" y="{y + 12}" text-anchor="end">{html.escape(short)}</text>')
        parts.append(f'<rect x="{left}" y="{y + 2}" width="{w:.1f}" height="{row - 5}" fill="#d9534f"><title>{html.escape(lab)}</title></rect>')
        parts.append(f'<text x="{left + w + 4:.1f}" y="{y + 12}">{v:.1f}{unit}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _svg_line(points: Sequence[tuple[int, float]], title: str, ylabel: str) -> str:
    """Per-tensor SQNR along the graph as an inline SVG polyline."""
    w, h, pad = 760, 240, 40
    finite = [(x, y) for x, y in points if math.isfinite(y)]
    if not finite:
        return ""
    xs, ys = [p[0] for p in finite], [p[1] for p in finite]
    x0, x1 = min(xs), max(xs) or 1
    y0, y1 = min(ys), max(ys)
    y1 = y1 if y1 > y0 else y0 + 1

    def px(x: float) -> float:
        return pad + (w - 2 * pad) * (x - x0) / max(x1 - x0, 1)

    def py(y: float) -> float:
        return h - pad + (2 * pad - h) * (y - y0) / (y1 - y0)

    path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in finite)
    ticks = "".join(f'<text x="{pad - 4}" y="{py(v) + 4:.1f}" text-anchor="end">{v:.0f}</text>'
                    for v in np.linspace(y0, y1, 5))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">'
            f'<text x="4" y="14" font-weight="bold">{html.escape(title)}</text>{ticks}'
            f'<text x="{w / 2}" y="{h - 8}" text-anchor="middle">tensor index in graph order</text>'
            f'<text x="12" y="{h / 2}" transform="rotate(-90 12 {h / 2})" text-anchor="middle">{html.escape(ylabel)}</text>'
            f'<polyline points="{path}" fill="none" stroke="#337ab7" stroke-width="1.5"/></svg>')


def to_html(a: Analysis, top: int = 25) -> str:
    """A self-contained HTML report (inline SVG charts)."""
    layers = a.layers[:top]
    bars = _svg_bars([r.name for r in layers], [100 * r.share for r in layers],
                     "Share of activation quantization noise (one layer quantized at a time)") if layers else ""
    line = _svg_line([(r.index, r.sqnr_db) for r in a.tensors], "Accumulated SQNR, artifact vs float", "SQNR dB")
    md_rows = to_markdown(a, top).split("\n")
    table_html = _markdown_tables_to_html(md_rows)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>edgeq analyze {html.escape(Path(a.artifact).name)}</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:2px 6px}code{font-size:11px}</style></head><body>"
        f"{table_html}<h2>Charts</h2>{bars}<br>{line}</body></html>"
    )


def _markdown_tables_to_html(lines: Sequence[str]) -> str:
    """The minimal Markdown this module writes (headings, bullets, tables, text) as HTML."""
    import re

    def inline(s: str) -> str:
        return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(s))

    out: list[str] = []
    table: list[list[str]] = []
    bullets: list[str] = []

    def flush() -> None:
        if table:
            head, *body = table
            out.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in body) + "</table>")
            table.clear()
        if bullets:
            out.append("<ul>" + "".join(f"<li>{inline(b)}</li>" for b in bullets) + "</ul>")
            bullets.clear()

    for ln in lines:
        if ln.startswith("|"):
            cells = [c.strip() for c in ln.strip("|").split("|")]
            if not all(set(c) <= {"-"} for c in cells):
                table.append(cells)
            continue
        if ln.startswith("- "):
            bullets.append(ln[2:])
            continue
        flush()
        if ln.startswith("#"):
            level = len(ln) - len(ln.lstrip("#"))
            out.append(f"<h{level}>{inline(ln.lstrip('#').strip())}</h{level}>")
        elif ln.strip():
            out.append(f"<p>{inline(ln)}</p>")
    flush()
    return "\n".join(out)


def report_paths(prefix: str | Path) -> list[Path]:
    """``PREFIX.md``, ``PREFIX.html`` and ``PREFIX.json`` (creates nothing)."""
    prefix = Path(prefix)
    return [prefix.with_name(prefix.name + ext) for ext in (".md", ".html", ".json")]


def check_report_paths(prefix: str | Path, inputs: Sequence[str | Path] = ()) -> list[Path]:
    """Refuse, before the analysis runs, report paths that are inputs, folders or unwritable."""
    return [check_writable_output(p, inputs=inputs, kind="report") for p in report_paths(prefix)]


def write_reports(a: Analysis, prefix: str | Path) -> list[Path]:
    """``PREFIX.md``, ``PREFIX.html`` and ``PREFIX.json``, each written atomically."""
    paths = report_paths(prefix)
    for path, text in zip(paths, (to_markdown(a), to_html(a), json.dumps(a.to_json(), indent=1))):
        write_text_atomic(path, text)
    return paths


__all__ = [
    "Analysis",
    "LayerRow",
    "ScoreResolution",
    "TensorRow",
    "analyze",
    "artifact_params",
    "check_report_paths",
    "open_interpreter",
    "print_analysis",
    "report_paths",
    "score_resolution",
    "stored_perm",
    "to_html",
    "to_markdown",
    "write_reports",
]

