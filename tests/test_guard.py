"""Collapse guard: output components from metadata, verdicts on shared vs separate scales, and the
warning a combined conversion with pixel boxes gets."""
from __future__ import annotations

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


def _check(model: onnx.ModelProto, parts: list[Component], split: str):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(3)]
    ranges = ranges_from(run_onnx(model, {"x": to_float(i.transpose(2, 0, 1)[None])}) for i in images)
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

    monkeypatch.setattr(edgeq.prepare, "normalize_boxes", lambda model, imgsz: False)  # the upstream failure
    cfg = ConvertConfig(split="combined", calib_count=4, bias_correction=False, equalize=False)
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
