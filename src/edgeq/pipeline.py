"""The conversion pipeline: graph -> calib -> quant -> export -> meta, one function per stage."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from tqdm import tqdm

from edgeq.calib.collect import collect_histograms
from edgeq.calib.dataset import CalibrationSet, calibration_set
from edgeq.calib.histogram import NUM_BINS, StreamingHistogram
from edgeq.calib.ranges import IDENTITY, SCORE_FLOOR, choose_range, consumer_transfers, floor_logits
from edgeq.config import ConvertConfig
from edgeq.errors import EdgeqError
from edgeq.graph.cut import cut_at_head
from edgeq.graph.heads import HeadSpec, apply_split_hints, discover_head
from edgeq.graph.load import LoadedModel, load_model
from edgeq.graph.passes.equalize import equalize
from edgeq.graph.passes.normalize_boxes import normalize_boxes
from edgeq.meta.build import build_meta, combined_family, combined_outputs, smart_outputs
from edgeq.meta.embed import append_zip, metadata_files
from edgeq.meta.schema import ModelMeta
from edgeq.quant.build import plan_from_ranges
from edgeq.quant.derived import observed_tensors, with_derived_ranges
from edgeq.quant.plan import QParams, QuantPlan

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """The float graph to quantize and how it relates to the source model."""

    loaded: LoadedModel
    graph: onnx.ModelProto
    head: HeadSpec | None
    normalized_boxes: bool
    techniques: dict[str, Any] = field(default_factory=dict)
    #: the float graph before weight rounding: what the guard checks the artifact against
    reference: onnx.ModelProto | None = None


@dataclass
class ConversionResult:
    """What ``convert`` produced."""

    path: Path
    meta: ModelMeta
    plan: QuantPlan
    head: HeadSpec | None
    graph: onnx.ModelProto


def _load_hints(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        import yaml  # optional: only for YAML hint files

        data = yaml.safe_load(text)
    return data.get("split_hints", data) if isinstance(data, dict) else data


def prepare(model_path: str | Path, config: ConvertConfig) -> Prepared:
    """Load, normalize and (for ``smart``) cut the graph at the discovered head."""
    loaded = load_model(model_path)
    if config.split == "combined":
        normalized = normalize_boxes(loaded.model, loaded.info.imgsz)
        return _equalized(Prepared(loaded, loaded.model, None, normalized), config)
    head = discover_head(loaded.model, loaded.info)
    hints = _load_hints(config.split_hints) if config.split_hints else _embedded_hints(loaded)
    if hints:
        head = apply_split_hints(head, hints)
    return _equalized(Prepared(loaded, cut_at_head(loaded.model, head), head, False), config)


def _equalized(prep: Prepared, config: ConvertConfig) -> Prepared:
    """Cross-layer equalization of the exact conv pairs, if enabled (data-free: ``prepare`` stays
    image-free, and ``edgeq analyze`` rebuilds the same graph from the recorded config)."""
    if config.equalize:
        eq = equalize(prep.graph)
        prep.graph = eq.model
        prep.techniques["equalize"] = eq.record
    return prep


def _embedded_hints(loaded: LoadedModel) -> list[dict[str, Any]]:
    text = loaded.info.props.get("split_hints") or loaded.info.props.get("edgefirst")
    if not text:
        return []
    data = json.loads(text)
    return data.get("split_hints", []) if isinstance(data, dict) else data


def calibrate(graph: onnx.ModelProto, calib: CalibrationSet, imgsz: tuple[int, int], config: ConvertConfig, progress: bool) -> dict[str, StreamingHistogram]:
    """Stream the calibration images through the float graph; returns per-tensor histograms."""
    images = tqdm(calib.images(imgsz), total=len(calib), desc="calibrating", unit="img", disable=not progress)
    minmax_only = config.calib_method == "minmax" and config.output_method == "minmax"
    return collect_histograms(graph, images, threads=config.threads, bins=0 if minmax_only else NUM_BINS,
                              names=observed_tensors(graph))


def round_weights(prep: Prepared, calib: CalibrationSet, config: ConvertConfig) -> Prepared:
    """Replace the graph's conv weights by their GPTQ-rounded INT8 values (``weight_rounding``).

    Runs before :func:`calibrate`, so the activation ranges are those of the weights the artifact
    will hold. A no-op (no calibration pass) when every weight is already on its INT8 grid.
    """
    if config.weight_rounding != "gptq":
        prep.techniques["weight_rounding"] = {"method": "nearest"}
        return prep
    from itertools import islice

    from edgeq.quant.gptq import IMAGES, gptq_round

    rounded = gptq_round(prep.graph, islice(calib.images(prep.loaded.info.imgsz), IMAGES), threads=config.threads)
    prep.techniques["weight_rounding"] = rounded.record
    if rounded.record["convs"]:
        if prep.reference is None:
            prep.reference = prep.graph
        prep.graph = rounded.model
    return prep


def _score_logits(prep: Prepared) -> set[str]:
    return set() if prep.head is None else prep.head.score_logits()


def make_plan(
    graph: onnx.ModelProto, hists: dict[str, StreamingHistogram], config: ConvertConfig,
    int16: Iterable[str] = (), logits: Iterable[str] = (), int8_views: Mapping[str, QParams] | None = None,
) -> QuantPlan:
    """Choose a range per tensor, then the constrained INT8 parameters.

    ``int16``: the 16x8 tensors. They take their exact min/max range: at 16 bits rounding is
    negligible, so clipping would be the only error left. Their int8 consumers read them with
    ``int8_views`` (the plain int8 plan's parameters). ``logits``: score-logit outputs, floored
    at ``logit(SCORE_FLOOR)`` in int8.
    """
    outputs = {o.name for o in graph.graph.output}
    logits, int16 = set(logits), set(int16)
    inputs = {i.name for i in graph.graph.input}  # pinned to the input quantization: no range to choose
    transfers = consumer_transfers(graph)
    ranges, methods = {}, {}
    for name, h in hists.items():
        if name in inputs:
            continue
        method = "minmax" if name in int16 else config.output_method if name in outputs else config.calib_method
        ranges[name], methods[name] = choose_range(h, method, transfer=transfers.get(name, IDENTITY))
        if name in logits and name not in int16:
            ranges[name] = floor_logits(ranges[name])
            methods[name] += "+score_floor"
    ranges, derived = with_derived_ranges(graph, ranges)
    methods.update(dict.fromkeys(derived, "derived"))
    plan = plan_from_ranges(graph, ranges, methods=methods, int16=int16, int8_views=int8_views)
    plan.notes["range_methods"] = dict(sorted(Counter(methods.values()).items()))
    plan.notes["range_transfers"] = dict(sorted(Counter(t.name for n, t in transfers.items() if n in hists).items()))
    return plan


def _mixed_precision(prep: Prepared, hists: dict[str, StreamingHistogram], plan: QuantPlan, calib: CalibrationSet, config: ConvertConfig) -> tuple[QuantPlan, dict[str, Any]]:
    """Re-plan with the ``--int16`` / ``--int16-budget`` activations in int16 (16x8)."""
    from itertools import islice

    from edgeq.quant.mixed import SENSITIVITY_IMAGES, mixed_precision

    images = islice(calib.images(prep.loaded.info.imgsz), SENSITIVITY_IMAGES) if config.int16_budget is not None else None
    int16, record = mixed_precision(prep.graph, plan.activations, names=config.int16, budget_percent=config.int16_budget,
                                    images=images, head=prep.head, threads=config.threads)
    return make_plan(prep.graph, hists, config, int16=int16, logits=_score_logits(prep), int8_views=plan.activations), record


def _calib_fingerprint(calib: CalibrationSet) -> str:
    h = hashlib.sha256()
    for p in calib.paths:
        h.update(p.name.encode() + b"\0" + str(p.stat().st_size).encode() + b"\n")
    return h.hexdigest()[:16]


def _provenance(prep: Prepared, calib: CalibrationSet, plan: QuantPlan, config: ConvertConfig) -> dict[str, Any]:
    info = prep.loaded.info
    return {
        "source": {"file": prep.loaded.path.name, "sha256": info.source_sha256},
        "target": "tflite",
        "split": config.split,
        "input_dtype": "uint8",
        "output_dtype": "+".join(sorted({plan.activations[o.name].dtype for o in prep.graph.graph.output})),
        "boxes_normalized": prep.normalized_boxes if prep.head is None else False,
        "head": None if prep.head is None else {"family": prep.head.family, "reg_max": prep.head.reg_max, "strides": list(prep.head.strides), "nc": prep.head.nc, "nm": prep.head.nm},
        "calibration": {
            "source": Path(calib.source).name,
            "count": len(calib),
            "fingerprint": _calib_fingerprint(calib),
            "method": config.calib_method,
            "output_method": config.output_method,
            "score_floor": SCORE_FLOOR if _score_logits(prep) else None,
            "methods_used": plan.notes.get("range_methods", {}),
            "transfers": plan.notes.get("range_transfers", {}),
        },
        "techniques": {
            "equalize": prep.techniques.get("equalize", False),
            "bias_correction": prep.techniques.get("bias_correction", False),
            "weight_rounding": prep.techniques.get("weight_rounding", {"method": "nearest"}),
        },
        "config": config.to_json(),
    }


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder, so a failure never leaves a partial artifact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _bias_corrected(prep: Prepared, plan: QuantPlan, calib: CalibrationSet, config: ConvertConfig) -> onnx.ModelProto:
    """The graph to write: ``prep.graph`` with conv biases absorbing INT8's mean error (if enabled)."""
    if not config.bias_correction:
        return prep.graph
    from itertools import islice

    from edgeq.quant.bias_correction import IMAGES, correct_biases

    images = list(islice(calib.images(prep.loaded.info.imgsz), IMAGES))
    corrected = correct_biases(prep.graph, plan, images)
    prep.techniques["bias_correction"] = corrected.record
    return corrected.model


def _guard(prep: Prepared, written: Any, outputs: list[Any], calib: CalibrationSet, config: ConvertConfig) -> dict[str, Any]:
    """Check every output of the written artifact against the float graph; log what collapsed."""
    from itertools import islice

    from edgeq.quant.guard import IMAGES, check_artifact, components

    info = prep.loaded.info
    parts = components(outputs, len(info.names), info.imgsz[0])
    images = list(islice(calib.images(info.imgsz), IMAGES))
    report = check_artifact(prep.reference or prep.graph, written.buffer, written.layouts, parts, images, split=config.split, threads=config.threads)
    for c in report.warnings:
        log.warning("%s %s: %s. Fix: %s", c.name, c.status, c.reason, c.fix)
    return report.to_json()


def default_output(model_path: Path, config: ConvertConfig) -> Path:
    return model_path.with_name(f"{model_path.stem}-{config.split}-int8.tflite")


def export_artifact(
    prep: Prepared,
    hists: dict[str, StreamingHistogram],
    calib_set: CalibrationSet,
    out_path: Path,
    config: ConvertConfig,
) -> ConversionResult:
    """Plan, write and embed metadata from calibration statistics (the stages after calibrate)."""
    from edgeq.export.tflite import write_tflite

    info = prep.loaded.info
    plan = make_plan(prep.graph, hists, config, logits=_score_logits(prep))
    mixed = None
    if config.int16 or config.int16_budget is not None:
        plan, mixed = _mixed_precision(prep, hists, plan, calib_set, config)
    graph = _bias_corrected(prep, plan, calib_set, config)
    written = write_tflite(graph, plan, description=f"edgeq {config.split} int8")
    if prep.head is not None:
        family = prep.head.family
        outputs = smart_outputs(prep.head, written.outputs)
    else:
        family = combined_family(written.outputs[0].shape)
        outputs = combined_outputs(info, written.outputs, prep.normalized_boxes, family)
    name = prep.loaded.path.stem
    provenance = _provenance(prep, calib_set, plan, config)
    if mixed is not None:
        provenance["mixed_precision"] = mixed
    if config.guard:
        provenance["guard"] = _guard(prep, written, outputs, calib_set, config)
    meta = build_meta(info, outputs, written.inputs[0], provenance, name=name, decoder_version=family)
    files = metadata_files(meta.to_json(), meta.labels)
    _write_atomic(out_path, append_zip(written.buffer, files))
    log.info("wrote %s", out_path)
    return ConversionResult(out_path, meta, plan, prep.head, prep.graph)


def convert(
    model_path: str | Path,
    calib: str | Path,
    output: str | Path | None = None,
    config: ConvertConfig = ConvertConfig(),
    *,
    progress: bool = True,
) -> ConversionResult:
    """Convert an ONNX model to a fully-integer, self-describing TFLite artifact.

    Args:
        model_path: float ONNX export (Ultralytics YOLOv8/YOLO11 detect or segment for ``smart``;
            any supported graph for ``combined``).
        calib: image folder, dataset folder with ``images/``, or COCO instances.json.
        output: artifact path (default: ``<model>-<split>-int8.tflite`` beside the model).
        config: conversion settings.
        progress: show progress bars.
    """
    model_path = Path(model_path)
    out_path = Path(output) if output else default_output(model_path, config)
    prep = prepare(model_path, config)
    calib_set = calibration_set(calib, count=config.calib_count)
    prep = round_weights(prep, calib_set, config)
    hists = calibrate(prep.graph, calib_set, prep.loaded.info.imgsz, config, progress)
    return export_artifact(prep, hists, calib_set, out_path, config)


__all__ = ["convert", "prepare", "round_weights", "calibrate", "make_plan", "export_artifact", "ConversionResult", "EdgeqError"]
