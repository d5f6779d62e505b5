"""The conversion pipeline: graph -> calib -> quant -> export -> meta, one function per stage."""
from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from tqdm import tqdm

from edgeq.calib.collect import collect_histograms
from edgeq.calib.dataset import CalibrationSet, calibration_set, check_images
from edgeq.calib.histogram import NUM_BINS, StreamingHistogram
from edgeq.calib.ranges import IDENTITY, SCORE_FLOOR, choose_range, consumer_transfers, floor_logits
from edgeq.config import ConvertConfig
from edgeq.errors import CollapseError, EdgeqError
from edgeq.export import get_target
from edgeq.export.base import Emitted, Target
from edgeq.families import get_family
from edgeq.fileio import check_writable_output, write_atomic
from edgeq.graph.heads import HeadSpec
from edgeq.meta.build import build_meta, combined_family, combined_outputs
from edgeq.meta.embed import metadata_files
from edgeq.meta.schema import ModelMeta, Output
from edgeq.prepare import Prepared
from edgeq.prepare import prepare as prepare_graph
from edgeq.quant.build import plan_from_ranges
from edgeq.quant.derived import observed_tensors, with_derived_ranges
from edgeq.quant.plan import QParams, QuantPlan

log = logging.getLogger(__name__)

#: onnxruntime intra-op threads of every float pass whose numbers reach the artifact (calibration,
#: GPTQ's Hessians, mixed-precision sensitivity, the guard's float side). onnxruntime's CPU
#: convolutions split their sums differently with the thread count (yolov8n: /model.7/conv/Conv
#: differs by ~1 ulp between 1-3 and 4+ threads), which moves ranges, scales and so the artifact's
#: bytes; one thread makes the artifact the same whatever ``threads`` is and whatever the core count
#: (on one kind of CPU: other SIMD kernels round differently).
FLOAT_PASS_THREADS = 1


@dataclass
class ConversionResult:
    """What ``convert`` produced."""

    path: Path
    meta: ModelMeta
    plan: QuantPlan
    head: HeadSpec | None
    graph: onnx.ModelProto


def prepare(model_path: str | Path, config: ConvertConfig) -> Prepared:
    """The graph stage with ``config``'s graph settings (split, split hints, equalization)."""
    return prepare_graph(model_path, split=config.split, split_hints=config.split_hints, equalized=config.equalize)


def calibrate(graph: onnx.ModelProto, calib: CalibrationSet, imgsz: tuple[int, int], config: ConvertConfig, progress: bool,
              label: str = "") -> dict[str, StreamingHistogram]:
    """Stream the calibration images through the float graph; returns per-tensor histograms of the
    tensors the target's kernels do not derive from another. ``label``: the model's name, shown
    on the progress bar (``yolov8n: calibrating``)."""
    desc = f"{label}: calibrating" if label else "calibrating"
    images = tqdm(calib.images(imgsz), total=len(calib), desc=desc, unit="img", disable=not progress)
    minmax_only = config.calib_method == "minmax" and config.output_method == "minmax"
    return collect_histograms(graph, images, threads=FLOAT_PASS_THREADS, bins=0 if minmax_only else NUM_BINS,
                              names=observed_tensors(graph, get_target(config.target).constraints))


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

    rounded = gptq_round(prep.graph, islice(calib.images(prep.loaded.info.imgsz), IMAGES), threads=FLOAT_PASS_THREADS)
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
    input_params: QParams | None = None,
) -> QuantPlan:
    """Choose a range per tensor, then the constrained INT8 parameters.

    ``int16``: the 16x8 tensors. They take their exact min/max range: at 16 bits rounding is
    negligible, so clipping would be the only error left. Their int8 consumers read them with
    ``int8_views`` (the plain int8 plan's parameters). ``logits``: score-logit outputs, floored
    at ``logit(SCORE_FLOOR)`` in int8. ``input_params``: the graph input's quantization (default
    uint8 scale 1/255: see :func:`input_params`).
    """
    constraints = get_target(config.target).constraints
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
    ranges, derived = with_derived_ranges(graph, ranges, constraints)
    methods.update(dict.fromkeys(derived, "derived"))
    plan = plan_from_ranges(graph, ranges, constraints=constraints, methods=methods, int16=int16, int8_views=int8_views,
                            input_name_params=input_params)
    plan.notes["range_methods"] = dict(sorted(Counter(methods.values()).items()))
    plan.notes["range_transfers"] = dict(sorted(Counter(t.name for n, t in transfers.items() if n in hists).items()))
    return plan


def input_params(prep: Prepared) -> QParams | None:
    """The input quantization of the model's input convention: raw uint8 pixels whose scale is the
    model's pixel scale (None: the planner's default, uint8 scale 1/255)."""
    conv = prep.input_convention
    return None if conv.unit_scale else QParams(np.float32(conv.pixel_scale), 0, "uint8")


def _mixed_precision(prep: Prepared, hists: dict[str, StreamingHistogram], plan: QuantPlan, calib: CalibrationSet, config: ConvertConfig) -> tuple[QuantPlan, dict[str, Any]]:
    """Re-plan with the ``--int16`` / ``--int16-budget`` activations in int16 (16x8)."""
    from itertools import islice

    from edgeq.quant.mixed import SENSITIVITY_IMAGES, mixed_precision

    images = islice(calib.images(prep.loaded.info.imgsz), SENSITIVITY_IMAGES) if config.int16_budget is not None else None
    decoded = get_family(prep.head.family).decoded_errors if prep.head is not None else None
    int16, record = mixed_precision(prep.graph, plan.activations, constraints=get_target(config.target).constraints,
                                    names=config.int16, budget_percent=config.int16_budget,
                                    images=images, head=prep.head, decoded=decoded, threads=FLOAT_PASS_THREADS)
    return make_plan(prep.graph, hists, config, int16=int16, logits=_score_logits(prep), int8_views=plan.activations,
                     input_params=input_params(prep)), record


def _calib_fingerprint(calib: CalibrationSet) -> str:
    h = hashlib.sha256()
    for p in calib.paths:
        h.update(p.name.encode() + b"\0" + str(p.stat().st_size).encode() + b"\n")
    return h.hexdigest()[:16]


def _provenance(prep: Prepared, calib: CalibrationSet, plan: QuantPlan, config: ConvertConfig) -> dict[str, Any]:
    info = prep.loaded.info
    return {
        "source": {"file": prep.loaded.path.name, "sha256": info.source_sha256},
        "target": config.target,
        "split": config.split,
        "split_hints": prep.techniques.get("split_hints"),
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
            "checks": prep.techniques.get("calibration_checks", []),
        },
        "techniques": {
            "equalize": prep.techniques.get("equalize", False),
            "bias_correction": prep.techniques.get("bias_correction", False),
            "weight_rounding": prep.techniques.get("weight_rounding", {"method": "nearest"}),
        },
        # threads only schedules work (the float passes run on FLOAT_PASS_THREADS): recording it would
        # make two otherwise identical artifacts differ
        "config": {k: v for k, v in config.to_json().items() if k != "threads"},
    }


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder (:func:`edgeq.fileio.write_atomic`): a failure
    or Ctrl-C never leaves a partial artifact or a temporary file; the mode follows the umask."""
    write_atomic(path, data)


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


def _guard(prep: Prepared, target: Target, written: Emitted, outputs: list[Output], calib: CalibrationSet, config: ConvertConfig) -> dict[str, Any]:
    """Check every output of the written artifact against the float graph; log what collapsed."""
    from itertools import islice

    from edgeq.quant.guard import IMAGES, check_artifact, components

    info = prep.loaded.info
    parts = components(outputs, len(info.names), info.imgsz[0])
    images = list(islice(calib.images(info.imgsz), IMAGES))
    probe = target.probe(written, config.threads)
    report = check_artifact(prep.reference or prep.graph, probe, parts, images, split=config.split, threads=FLOAT_PASS_THREADS)
    collapsed = [c for c in report.warnings if c.status == "collapse"]
    if collapsed and config.on_collapse == "error":
        raise CollapseError(
            f"{prep.loaded.path.name}: INT8 collapsed {len(collapsed)} output(s), so no artifact was written: "
            + "; ".join(f"{c.name}: {c.reason}" for c in collapsed),
            f"{collapsed[0].fix} (or --on-collapse warn to write it anyway)",
        )
    for c in report.warnings:
        log.warning("%s %s: %s. Fix: %s", c.name, c.status, c.reason, c.fix)
    return report.to_json()


def default_output(model_path: Path, config: ConvertConfig) -> Path:
    """``<model>-<split>-int8<suffix>`` beside the model (the target's suffix)."""
    return model_path.with_name(f"{model_path.stem}-{config.split}-int8{get_target(config.target).suffix}")


def export_artifact(
    prep: Prepared,
    hists: dict[str, StreamingHistogram],
    calib_set: CalibrationSet,
    out_path: Path,
    config: ConvertConfig,
) -> ConversionResult:
    """Plan, write and embed metadata from calibration statistics (the stages after calibrate)."""
    target = get_target(config.target)
    info = prep.loaded.info
    plan = make_plan(prep.graph, hists, config, logits=_score_logits(prep), input_params=input_params(prep))
    mixed = None
    if config.int16 or config.int16_budget is not None:
        plan, mixed = _mixed_precision(prep, hists, plan, calib_set, config)
    graph = _bias_corrected(prep, plan, calib_set, config)
    written = target.emit(graph, plan, description=f"edgeq {config.split} int8")
    if prep.head is not None:
        family = get_family(prep.head.family)
        outputs = family.outputs(prep.head, written.outputs, target.layout)
    else:
        family = get_family(combined_family(written.outputs[0].shape))
        outputs = combined_outputs(info, written.outputs, prep.normalized_boxes, family.name)
    name = prep.loaded.path.stem
    provenance = _provenance(prep, calib_set, plan, config)
    if mixed is not None:
        provenance["mixed_precision"] = mixed
    if config.guard:
        provenance["guard"] = _guard(prep, target, written, outputs, calib_set, config)
    provenance["model_sha256"] = hashlib.sha256(written.buffer).hexdigest()  # checked by edgeq.load
    meta = build_meta(info, outputs, written.inputs[0], provenance, name=name, decoder_version=family.name,
                      nms=family.nms, iou=family.iou, preprocessing=family.preprocessing,
                      input_convention=prep.input_convention.to_json(), end2end=getattr(prep.head, "end2end", None))
    files = metadata_files(meta.to_json(), meta.labels)
    _write_atomic(out_path, target.embed(written.buffer, files))
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
    """Convert an ONNX model to a self-describing artifact for ``config.target`` (INT8 TFLite by default).

    Args:
        model_path: float ONNX export (Ultralytics YOLOv8/YOLO11 detect or segment for ``smart``;
            any supported graph for ``combined``).
        calib: image folder, dataset folder with ``images/``, or COCO instances.json.
        output: artifact path (default: ``<model>-<split>-int8<target suffix>`` beside the model).
            Checked before any work: never the model or a calibration file (under any name), not
            a folder, in a folder that can be written (:class:`edgeq.fileio.OutputError`).
        config: conversion settings.
        progress: show progress bars.
    """
    model_path = Path(model_path)
    out_path = Path(output) if output else default_output(model_path, config)
    # before any work: never overwrite an input, never find out after calibration that we cannot write
    check_writable_output(out_path, inputs=(model_path, calib), kind="artifact")
    prep = prepare(model_path, config)
    if config.int16:
        from edgeq.quant.mixed import check_names

        check_names(prep.graph, config.int16)
    calib_set = calibration_set(calib, count=config.calib_count)
    if prep.head is not None:  # the family's preprocessing (classifiers centre-crop), as prediction does it
        calib_set = replace(calib_set, preprocessing=get_family(prep.head.family).preprocessing)
    calib_set = replace(calib_set, input_convention=prep.input_convention)  # its channels, scale and pad
    calib_set = _checked(calib_set, out_path, config, progress, model_path.stem)
    prep.techniques["calibration_checks"] = _calibration_checks(calib_set, prep.loaded.info.imgsz)
    prep = round_weights(prep, calib_set, config)
    hists = calibrate(prep.graph, calib_set, prep.loaded.info.imgsz, config, progress, label=model_path.stem)
    return export_artifact(prep, hists, calib_set, out_path, config)


def _calibration_checks(calib: CalibrationSet, imgsz: tuple[int, int]) -> list[dict[str, str]]:
    """Warn about a degenerate calibration set (too few, duplicates, grey, 16-bit, ...); the
    warnings are also recorded in the artifact's provenance."""
    from edgeq.calib.checks import check_calibration_set

    found = check_calibration_set(calib, imgsz)
    for w in found:
        log.log(w.log_level, "calibration set: %s. Fix: %s", w.what, w.fix)
    return [{"code": w.code, "level": w.level, "what": w.what} for w in found]


def _checked(calib: CalibrationSet, out_path: Path, config: ConvertConfig, progress: bool, label: str) -> CalibrationSet:
    """Before the slow stages: the artifact must not overwrite a calibration file, and every
    calibration image must decode (or, with ``skip_bad_images``, the unreadable ones are dropped)."""
    check_writable_output(out_path, inputs=calib.files, kind="artifact")
    with tqdm(total=len(calib), desc=f"{label}: checking images", unit="img", disable=not progress, leave=False) as bar:
        return check_images(calib, skip_bad=config.skip_bad_images, on_image=bar.update)


__all__ = ["convert", "prepare", "round_weights", "calibrate", "make_plan", "export_artifact", "ConversionResult", "EdgeqError"]
