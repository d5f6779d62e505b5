"""edgeq analyze: float vs artifact per tensor, per-layer sensitivity, reports (few images, fast)."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import shared_path
from edgeq.cli import app
from edgeq.config import ConvertConfig
from edgeq.analysis.analyze import analyze, artifact_params, open_interpreter, stored_perm, to_html, to_markdown, write_reports
from edgeq.quant.sensitivity import ErrorAccumulator, FloatActivations, unit_sensitivity
from edgeq.pipeline import convert, prepare
from edgeq.export.tflite.constraints import TFLITE
from edgeq.families import get_family
from edgeq.quant.mixed import promotable, promotion_units

CALIB_N = 2


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("analyze") / "yolov8n-smart.tflite"
    convert(shared_path("models", "yolov8n.onnx"), shared_path("coco-calib"), out, ConvertConfig(calib_count=CALIB_N, on_collapse="warn"), progress=False)
    return out


@pytest.fixture(scope="module")
def analysis(artifact):
    return analyze(shared_path("models", "yolov8n.onnx"), artifact, shared_path("coco-val-dev"), count=1, sensitivity=False)


@pytest.fixture(scope="module")
def float_setup(artifact):
    prep = prepare(shared_path("models", "yolov8n.onnx"), ConvertConfig())
    from edgeq.calib.dataset import calibration_set

    images = list(calibration_set(shared_path("coco-val-dev"), count=1).images(prep.loaded.info.imgsz))
    acts = FloatActivations(prep.graph, images)
    params = artifact_params(open_interpreter(artifact))
    return prep, acts, params


def test_stored_perm_prefers_nhwc_then_identity():
    assert stored_perm((1, 16, 320, 320), (1, 320, 320, 16)) == (0, 2, 3, 1)
    assert stored_perm((1, 1, 1, 1), (1, 1, 1, 1)) == (0, 2, 3, 1)
    assert stored_perm((1, 84, 8400), (1, 84, 8400)) == (0, 1, 2)
    assert stored_perm((1, 84, 8400), (1, 8400, 84)) == (0, 2, 1)
    assert stored_perm((1, 3), (1, 4)) is None


def test_table_covers_most_tensors_with_finite_sqnr(analysis):
    assert analysis.split == "smart" and analysis.images == 1
    assert analysis.shared_tensors >= 0.9 * analysis.float_tensors
    finite = [r for r in analysis.tensors if math.isfinite(r.sqnr_db)]
    assert len(finite) >= 0.95 * len(analysis.tensors)
    assert all(-1.0 <= r.cosine <= 1.0 + 1e-9 for r in analysis.tensors)
    # the uint8 input is exact; early tensors are close to float
    first = analysis.tensors[0]
    assert first.name == "images" and first.sqnr_db > 40
    assert np.median([r.cosine for r in analysis.tensors]) > 0.95


def test_artifact_outputs_sqnr_in_sane_band(analysis):
    err = analysis.artifact_error
    assert set(err["outputs_db"]) == {f"{k}_{i}" for k in ("boxes", "scores") for i in range(3)}
    for name, db in err["outputs_db"].items():
        assert 5.0 < db < 60.0, (name, db)
    assert set(err["kinds_db"]) == {"scores", "boxes"}
    assert 5.0 < err["head_sqnr_db"] < 40.0


def test_sensitivity_is_deterministic_and_ranks(float_setup):
    prep, acts, params = float_setup
    units = [u for u in promotion_units(prep.graph, params, TFLITE) if acts.input_name not in u]
    # late layers are cheap to re-run (their downstream graph is small); add one early layer
    subset = units[-12:] + [units[3]]
    a = unit_sensitivity(acts, subset, params, head=prep.head)
    b = unit_sensitivity(acts, subset, params, head=prep.head)
    assert [s.noise for s in a] == [s.noise for s in b]
    rank_a = sorted(range(len(a)), key=lambda i: (-a[i].noise, a[i].name))
    rank_b = sorted(range(len(b)), key=lambda i: (-b[i].noise, b[i].name))
    assert rank_a == rank_b
    assert all(s.noise > 0 and math.isfinite(s.error.sqnr_db) for s in a)
    assert all(s.elements > 0 for s in a)


def test_quantizing_an_output_alone_matches_numpy_fake_quant(float_setup):
    _, acts, params = float_setup
    name = "scores_1"
    sens = unit_sensitivity(acts, [[name]], params, head=None)[0]
    ref = acts.head(0)
    p = params[name]
    fq = dict(ref)
    fq[name] = p.dequantize(p.quantize(ref[name]))
    acc = ErrorAccumulator()
    acc.add(ref, fq, None)
    expect = acc.result()
    assert sens.error.raw[name] == pytest.approx(expect.raw[name], rel=1e-3)
    assert all(v == 0 for k, v in sens.error.raw.items() if k != name)


def test_units_group_shared_parameters(float_setup):
    prep, _, params = float_setup
    units = promotion_units(prep.graph, params, TFLITE)
    members = [m for u in units for m in u]
    assert len(members) == len(set(members))
    unit_of = {m: tuple(u) for u in units for m in u}
    for node in prep.graph.graph.node:
        if node.op_type == "Split":
            assert all(unit_of[o] == unit_of[node.input[0]] for o in node.output)
    assert not promotable(unit_of[prep.graph.graph.input[0].name], prep.graph)  # uint8 pixels stay
    assert promotable(unit_of["scores_0"], prep.graph)  # int16 outputs are allowed
    assert promotable(unit_of["/model.1/conv/Conv_output_0"], prep.graph)


def test_reports_are_written(analysis, tmp_path):
    paths = write_reports(analysis, tmp_path / "rep")
    assert [p.suffix for p in paths] == [".md", ".html", ".json"]
    md = paths[0].read_text()
    assert "Per-tensor error" in md and "/model.0/conv/Conv_output_0" in md
    assert "<svg" in to_html(analysis) and "<table>" in to_html(analysis)
    data = json.loads(paths[2].read_text())
    assert data["split"] == "smart" and len(data["tensors"]) == analysis.shared_tensors
    assert to_markdown(analysis).count("\n") > analysis.shared_tensors


def test_cli_analyze_without_sensitivity(artifact, tmp_path):
    res = CliRunner().invoke(app, [
        "analyze", str(shared_path("models", "yolov8n.onnx")), str(artifact),
        "--images", str(shared_path("coco-val-dev")), "--count", "1", "--no-sensitivity", "-q",
        "--report", str(tmp_path / "cli"),
    ])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cli.html").exists()
    assert "head SQNR" in res.output


def test_score_outputs_resolution_and_clipping(analysis):
    assert [r.name for r in analysis.scores] == ["scores_0", "scores_1", "scores_2"]
    for r in analysis.scores:
        assert 0 < r.live_codes <= 256 and 0 < r.p_max <= 1 and 0 <= r.clipped_top <= 1 and r.step > 0
    assert all(0 <= t.clipped <= 1 for t in analysis.tensors)
    assert all(t.clipped == 0 for t in analysis.tensors if t.op == "Sigmoid")
    clipped = dataclasses.replace(analysis, scores=[dataclasses.replace(analysis.scores[0], clipped_top=0.02)])
    assert any("clip confident detections" in line for line in clipped.advice())


def test_layer_tables_and_advice_render(analysis, tmp_path):
    from rich.console import Console

    from edgeq.analysis.analyze import LayerRow, print_analysis

    rows = [
        LayerRow(rank=1, name="/model.1/act/Mul_output_0", op="Mul", members=("/model.1/act/Mul_output_0",),
                 elements=819200, int16_elements=1638400, dtype="int8",
                 int16_tensors=("/model.1/act/Mul_output_0", "/model.2/cv1/conv/Conv_output_0"), noise=0.02, share=0.5, head_sqnr_db=17.0,
                 kinds_db={"scores": 15.0, "boxes": 28.0}, promotable=True),
        LayerRow(rank=2, name="scores_2", op="Conv", members=("scores_2",), elements=32000, int16_elements=32000,
                 int16_tensors=("scores_2",),
                 dtype="int8", noise=0.02, share=0.5, head_sqnr_db=17.0, kinds_db={"scores": 15.0, "boxes": math.inf},
                 promotable=False),
    ]
    a = dataclasses.replace(analysis, layers=rows)
    console = Console(record=True, width=200)
    print_analysis(a, console)
    text = console.export_text()
    assert "/model.1/act/Mul_output_0" in text and "--int16 /model.1/act/Mul_output_0" in text
    assert a.predicted_sqnr_after(1) == pytest.approx(a.predicted_sqnr_after(0) + 10 * math.log10(2))
    md = to_markdown(a)
    assert "reaches an output" in md and "| 1 | `/model.1/act/Mul_output_0`" in md
    assert "<svg" in to_html(a) and json.loads(json.dumps(a.to_json()))["layers"][1]["kinds_db"]["boxes"] == "inf"


def _anchor_head():
    from edgeq.graph.heads import Endpoint, HeadSpec

    na, nc, h, w = 3, 2, 4, 4
    eps = (Endpoint("b", "boxes", "boxes_0", (1, na * 4, h, w), 8, 0),
           Endpoint("o", "objectness", "objectness_0", (1, na, h, w), 8, 0),
           Endpoint("s", "scores", "scores_0", (1, na * nc, h, w), 8, 0))
    head = HeadSpec("yolov5", "detect", nc, 1, (8,), eps, anchors=(((10, 13), (16, 30), (33, 23)),))
    rng = np.random.default_rng(0)
    ref = {"boxes_0": rng.normal(0, 1, (1, na * 4, h, w)), "objectness_0": rng.normal(-3, 3, (1, na, h, w)),
           "scores_0": rng.normal(-3, 3, (1, na * nc, h, w))}
    return head, ref


def test_anchor_heads_get_decoded_errors_and_floored_score_logits():
    """YOLOv5: scores as obj x cls, boxes in pixels weighted by score; logits below the floor are free."""
    from edgeq.calib.ranges import LOGIT_FLOOR

    head, ref = _anchor_head()
    ref["objectness_0"][0, 0, 0, 0] = -25.0
    floored = dict(ref, objectness_0=np.maximum(ref["objectness_0"], LOGIT_FLOOR))
    acc = ErrorAccumulator()
    acc.add(ref, floored, head, get_family("yolov5").decoded_errors)
    err = acc.result()
    assert set(err.decoded) == {"scores", "boxes"}
    assert err.raw["objectness_0"] == 0 and err.decoded["boxes"] == 0
    assert err.decoded["scores"] < 1e-7  # sigmoid(-9.2) vs sigmoid(-25): nothing a threshold sees
    moved = dict(ref, boxes_0=ref["boxes_0"] + 0.1)
    acc = ErrorAccumulator()
    acc.add(ref, moved, head, get_family("yolov5").decoded_errors)
    err = acc.result()
    assert err.decoded["boxes"] > 0 and err.decoded["scores"] == 0


def test_output_rounding_model_rounds_the_float_graph_like_the_artifact(artifact):
    """Float graph + only the artifact's output rounding: values on the artifact's grid, in its
    NHWC layout (scores_0 is 80x80x80, where a shape test cannot tell the layouts apart)."""
    import cv2

    from edgeq.analysis.attribution import output_rounding_model
    from edgeq.runtime import load

    art = load(artifact)
    mixed = output_rounding_model(artifact, shared_path("models", "yolov8n.onnx"))
    image = cv2.imread(str(shared_path("coco-val-dev", "images", "000000000139.jpg")))
    x, _ = art.preprocess(image)
    got, codes = mixed.run(x), art.run(x)
    for d in art.backend.outputs:
        scale, zp = float(d.quant.scale), float(d.quant.zero_point)
        q = got[d.name] / scale + zp
        assert got[d.name].shape == codes[d.name].shape
        np.testing.assert_allclose(q, np.round(q), atol=2e-3)  # on the artifact's grid
        assert q.min() >= -128.001 and q.max() <= 127.001
        real = (codes[d.name].astype(np.float32) - zp) * scale
        # near the artifact's own values: only the inner int8 noise differs (about 20 dB)
        assert np.mean((got[d.name] - real) ** 2) < 0.1 * np.var(real), d.name
    assert [int(c) for c in mixed.predict(image, conf=0.5).class_ids[:1]] == [int(c) for c in art.predict(image, conf=0.5).class_ids[:1]]


def test_float_outputs_model_swaps_one_branch_for_float(artifact):
    """Scores from the float graph (off the int8 grid), boxes exactly the artifact's own values."""
    import cv2

    from edgeq.errors import ArtifactError
    from edgeq.calib.ranges import LOGIT_FLOOR
    from edgeq.analysis.attribution import float_outputs_model, output_kinds
    from edgeq.runtime import load

    art = load(artifact)
    assert output_kinds(art) == ["boxes", "scores"]
    source = shared_path("models", "yolov8n.onnx")
    swapped = float_outputs_model(artifact, source, "scores")
    x, _ = art.preprocess(cv2.imread(str(shared_path("coco-val-dev", "images", "000000000139.jpg"))))
    got, codes = swapped.run(x), art.run(x)
    for d in art.backend.outputs:
        real = (codes[d.name].astype(np.float32) - float(d.quant.zero_point)) * float(d.quant.scale)
        if d.name.startswith("boxes"):
            np.testing.assert_array_equal(got[d.name], real)
        else:
            q = got[d.name] / float(d.quant.scale) + float(d.quant.zero_point)
            assert np.mean(np.abs(q - np.round(q))) > 0.1, "float values, not int8 codes"
            above = real > LOGIT_FLOOR + 1  # the artifact's score logits are floored, the float ones are not
            assert np.mean((got[d.name][above] - real[above]) ** 2) < 0.1 * np.var(real[above]), d.name
    with pytest.raises(ArtifactError, match="objectness"):
        float_outputs_model(artifact, source, "objectness")
