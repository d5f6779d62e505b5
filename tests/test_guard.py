"""Collapse guard: output components from metadata, verdicts on shared vs separate scales, and the
warning a combined conversion with pixel boxes gets."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx
import pytest
from onnx import helper

from _writer_helpers import make_model, ranges_from, run_onnx, to_float
from conftest import shared_path
from edgeq.config import ConvertConfig
from edgeq.export.tflite import write_tflite
from edgeq.meta.schema import Output
from edgeq.export.tflite.constraints import TFLITE
from edgeq.export.tflite.probe import ArtifactProbe
from edgeq.quant.build import plan_from_ranges
from edgeq.quant.guard import Component, check_artifact, components

SIZE = 8


def test_components_follow_the_output_metadata():
    smart = [
        Output("boxes", "boxes", [1, 4, 100], encoding="dfl", children=[Output("boxes_0", "boxes", [1, 10, 10, 64])]),
        Output("scores", "scores", [1, 80, 100], activation_required="sigmoid",
               children=[Output("scores_0", "scores", [1, 10, 10, 80])]),
        Output("protos", "protos", [1, 160, 160, 32]),
    ]
    assert [(c.tensor, c.kind, c.sigmoid) for c in components(smart, 80, 640)] == [
        ("boxes_0", "logits", False), ("scores_0", "logits", True), ("protos", "values", False)]
    v8 = [Output("output0", "detection", [1, 116, 8400], normalized=True, score_format="per_class")]
    parts = components(v8, 80, 640)
    assert [(c.kind, c.axis, c.start, c.stop, c.unit) for c in parts] == [
        ("boxes", 1, 0, 4, 640.0), ("scores", 1, 4, 84, 1.0), ("values", 1, 84, None, 1.0)]
    v5 = [Output("output0", "detection", [1, 25200, 85], normalized=False, score_format="obj_x_class")]
    assert [(c.kind, c.axis, c.start, c.unit) for c in components(v5, 80, 640)] == [
        ("boxes", 2, 0, 1.0), ("scores", 2, 4, 1.0)]


def _head(combined: bool) -> onnx.ModelProto:
    """Pixel boxes (0..~640) and sigmoid scores, concatenated into one output or kept apart."""
    rng = np.random.default_rng(0)
    inits = {"wb": (rng.uniform(0.5, 1, (4, 3, 1, 1)) * 300).astype(np.float32),
             "ws": rng.normal(0, 2, (2, 3, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "wb"], ["boxes"]),
             helper.make_node("Conv", ["x", "ws"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["scores"])]
    if combined:
        nodes.append(helper.make_node("Concat", ["boxes", "scores"], ["det"], axis=1))
    return make_model(nodes, {"x": [1, 3, SIZE, SIZE]}, ["det"] if combined else ["boxes", "scores"], inits)


def _images(lo: int = 0, hi: int = 256, n: int = 3, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(lo, hi, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(n)]


def _check(model: onnx.ModelProto, parts: list[Component], split: str,
           calib: list[np.ndarray] | None = None, images: list[np.ndarray] | None = None):
    """Calibrate on ``calib``, then guard on ``images`` (both default to the same random images)."""
    calib = calib if calib is not None else _images()
    images = images if images is not None else calib
    ranges = ranges_from(run_onnx(model, {"x": to_float(i.transpose(2, 0, 1)[None])}) for i in calib)
    written = write_tflite(model, plan_from_ranges(model, constraints=TFLITE, ranges=ranges))
    return check_artifact(model, ArtifactProbe(written.buffer, written.layouts), parts, images, split=split)


def test_one_scale_for_boxes_and_scores_collapses_the_scores():
    parts = [Component("det", "boxes", 1, 0, 4), Component("det", "scores", 1, 4, None)]
    report = _check(_head(combined=True), parts, "combined")
    by_kind = {c.kind: c for c in report.checks}
    assert by_kind["scores"].status == "collapse" and by_kind["scores"].codes_used <= 2
    assert "--split smart" in by_kind["scores"].fix
    assert by_kind["boxes"].status == "warn" and by_kind["boxes"].step > 2.0, "2.5-px box steps"
    assert report.to_json()["status"] == "collapse"


def test_separate_scales_pass():
    parts = [Component("boxes", "values"), Component("scores", "scores")]
    report = _check(_head(combined=False), parts, "smart")
    assert [c.status for c in report.checks] == ["ok", "ok"]
    assert report.to_json()["status"] == "ok" and not report.warnings
    scores = report.checks[1]
    assert scores.sqnr_db > 30 and scores.step == pytest.approx(1 / 256)


def test_combined_yolov8n_with_pixel_boxes_is_flagged(tmp_path, monkeypatch, caplog):
    import edgeq.pipeline as pipeline
    import edgeq.prepare
    from edgeq.errors import CollapseError

    monkeypatch.setattr(edgeq.prepare, "normalize_boxes", lambda model, imgsz: False)  # the upstream failure
    cfg = ConvertConfig(split="combined", calib_count=4, bias_correction=False, equalize=False)
    out = tmp_path / "refused.tflite"
    with pytest.raises(CollapseError, match=r"collapsed 1 output\(s\), so no artifact was written: output0\[scores\]") as info:
        pipeline.convert(shared_path("models", "yolov8n.onnx"), shared_path("coco-calib"), out, cfg, progress=False)
    assert not out.exists() and "--split smart" in info.value.fix and "--on-collapse warn" in info.value.fix
    cfg = dataclasses.replace(cfg, on_collapse="warn")
    with caplog.at_level(logging.WARNING, logger="edgeq.pipeline"):
        res = pipeline.convert(shared_path("models", "yolov8n.onnx"), shared_path("coco-calib"), tmp_path / "c.tflite",
                               cfg, progress=False)
    guard = res.meta.edgeq["guard"]
    assert guard["status"] == "collapse"
    collapsed = [w for w in guard["warnings"] if w["status"] == "collapse"]
    assert [w["name"] for w in collapsed] == ["output0[scores]"]
    assert "output0[scores] collapse" in caplog.text and "--split smart" in caplog.text


def test_score_logits_below_the_floor_count_as_the_floor():
    """A floored score output clips logits no threshold reads; only its sigmoid-read part is judged."""
    from edgeq.calib.ranges import LOGIT_FLOOR
    from edgeq.quant.guard import _Stats

    ref = np.array([-30.0, -20.0, -12.0, -2.0, 0.5, 3.0])
    floored = np.maximum(ref, LOGIT_FLOOR)  # what a floored int8 range returns (plus rounding)
    plain, judged = _Stats(), _Stats()
    plain.add(ref, floored)
    judged.add(ref, floored, sigmoid=True)
    assert plain.sqnr_db < 5 and judged.sqnr_db == float("inf")
    judged.add(ref, ref + 0.5, sigmoid=True)  # a real error above the floor still counts
    assert judged.sqnr_db < 30


# -- saturated scores, clipped tops -------------------------------------------------------------------
def _affine(name: str, gain: float, bias: float) -> onnx.ModelProto:
    """``name = gain * (r + g + b) + bias`` per pixel (inputs in 0..1): a score head whose value the
    image's brightness sets."""
    inits = {"w": np.full((1, 3, 1, 1), gain, np.float32), "b": np.array([bias], np.float32)}
    return make_model([helper.make_node("Conv", ["x", "w", "b"], [name])], {"x": [1, 3, SIZE, SIZE]}, [name], inits)


DARK, BRIGHT = _images(0, 100), _images(150, 256, seed=2)  # logits -3..-0.6 / +0.5..+3 below


def test_score_logits_calibrated_below_zero_collapse():
    """Calibrated on images that never give a positive logit, the range tops out at logit 0: every
    score is capped at 0.5, on any image, and the guard says so even where the float graph agrees."""
    parts = [Component("logits", "logits", sigmoid=True)]
    model = _affine("logits", 2.0, -3.0)
    report = _check(model, parts, "smart", calib=DARK, images=BRIGHT)
    (c,) = report.checks
    assert c.status == "collapse" and report.to_json()["status"] == "collapse"
    assert c.reason.startswith("logits can never exceed 0.50: its INT8 range tops out at logit 0.00")
    assert "clipped at the top" in c.reason and c.clipped == 1.0, "every bright-image logit lies above the range"
    assert ">= 100" in c.fix and "colour" in c.fix and "letterboxed" in c.fix
    assert c.range_max == pytest.approx(0.0, abs=1e-6)
    # the guard's own images are calibration images in the pipeline: nothing clips, still collapsed
    (same,) = _check(model, parts, "smart", calib=DARK).checks
    assert same.status == "collapse" and same.sqnr_db > 30 and same.clipped == 0.0
    assert "can never exceed 0.50" in same.reason and "clipped" not in same.reason


def test_score_logits_capped_below_confident_warn_and_calibrated_ones_pass():
    parts = [Component("logits", "logits", sigmoid=True)]
    model = _affine("logits", 2.0, -3.0)
    (capped,) = _check(model, parts, "smart", calib=_images(0, 150)).checks  # tops out near logit 0.3
    cap = 1 / (1 + np.exp(-capped.range_max))
    assert capped.status == "warn" and 0.55 < cap < 0.75
    assert capped.reason.startswith(f"logits can never exceed {cap:.2f}: its INT8 range tops out at logit")
    (good,) = _check(model, parts, "smart", calib=_images(0, 256)).checks
    assert good.status == "ok" and good.range_max > 2.0 and not good.reason


def test_probability_output_capped_at_half_collapses():
    parts = [Component("p", "scores")]
    model = _affine("p", 0.4 / 3, 0.05)  # 0.05..0.45 on any image
    (c,) = _check(model, parts, "smart", calib=_images() + [np.full((SIZE, SIZE, 3), 255, np.uint8)]).checks
    assert c.status == "collapse"
    assert c.reason.startswith("p can never exceed 0.45: its largest INT8 code dequantizes to 0.45")


def test_heavy_clipping_at_the_top_warns():
    """Calibrated on pixels up to 200, evaluated on full-range ones: the top of the output clips."""
    parts = [Component("y", "values")]
    model = _affine("y", 1.0, 0.0)
    (c,) = _check(model, parts, "smart", calib=_images(0, 200, n=8), images=_images(0, 256, n=8, seed=3)).checks
    assert c.status == "warn" and c.sqnr_db > SQNR_WARN, "only the tail is lost"
    assert "clipped at the top" in c.reason and c.clipped > 0.01
    assert ">= 100" in c.fix
    (same,) = _check(model, parts, "smart", calib=_images(0, 200, n=8)).checks
    assert same.status == "ok" and same.clipped == 0.0


SQNR_WARN = 10.0
