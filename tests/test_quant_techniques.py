"""Range setting (entropy, transfer-aware MSE, auto), the fake-quant simulator, bias correction,
cross-layer equalization, and their provenance in a real conversion."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import onnx
import pytest
from onnx import helper

from _writer_helpers import conv_weights, make_model, ranges_from, run_onnx, run_tflite, to_float
from conftest import shared_path
from edgeq.calib.histogram import StreamingHistogram
from edgeq.calib.ranges import (
    IDENTITY,
    SILU,
    choose_range,
    consumer_transfers,
    entropy,
    expected_error,
    kl_divergence,
    minmax,
    mse,
)
from edgeq.config import ConvertConfig
from edgeq.export.tflite import write_tflite
from edgeq.graph.passes.equalize import channel_ranges, equalize, find_pairs
from edgeq.quant.bias_correction import channel_shift, correct_biases
from edgeq.export.tflite.constraints import TFLITE
from edgeq.quant.build import plan_from_ranges
from edgeq.quant.simulate import simulate

SIZE = 16


def _hist(x: np.ndarray) -> StreamingHistogram:
    h = StreamingHistogram()
    h.update(x.astype(np.float32))
    return h


# -- range setting ---------------------------------------------------------------------------------
def test_entropy_clips_outliers_and_lowers_kl():
    rng = np.random.default_rng(0)
    h = _hist(np.concatenate([rng.normal(0, 1, 200_000), [40.0, -35.0]]))
    lo, hi = entropy(h)
    assert -10 < lo < -2 and 2 < hi < 10
    assert kl_divergence(h, lo, hi) < kl_divergence(h, *minmax(h))


def test_silu_aware_mse_cuts_the_flat_negative_tail_only():
    rng = np.random.default_rng(1)
    # a typical pre-activation: mostly very negative (SiLU ~ 0 there), a positive tail that matters
    h = _hist(np.concatenate([rng.normal(-12, 6, 100_000), rng.exponential(3, 5_000)]))
    plain, aware = mse(h, transfer=IDENTITY), mse(h, transfer=SILU)
    assert aware[0] > -15 > plain[0] > h.min, "through SiLU the negative tail is worth little"
    assert aware[1] >= 0.5 * h.max, "the positive tail feeds the next layer: keep it"
    assert expected_error(h, *aware, transfer=SILU) < expected_error(h, *plain, transfer=SILU)


def test_auto_picks_per_tensor_and_rejects_unknown_methods():
    rng = np.random.default_rng(2)
    flat = _hist(rng.uniform(-1, 1, 100_000))  # nothing to clip: the widest near-best range wins
    assert choose_range(flat, "auto")[1] == "minmax"
    tailed = _hist(rng.laplace(0, 1, 400_000))  # long tails: clipping them is worth it
    (lo, hi), method = choose_range(tailed, "auto")
    assert method != "minmax" and hi < 0.85 * tailed.max and lo > 0.85 * tailed.min
    assert expected_error(tailed, lo, hi) < expected_error(tailed, *minmax(tailed))
    with pytest.raises(ValueError, match="unknown range method"):
        choose_range(flat, "nope")


def _silu(x: str, y: str) -> list[onnx.NodeProto]:
    return [helper.make_node("Sigmoid", [x], [f"{y}_s"]), helper.make_node("Mul", [x, f"{y}_s"], [y])]


def test_consumer_transfers_find_silu_inputs():
    w = np.ones((2, 1, 1, 1), np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), *_silu("c", "a"),
             helper.make_node("Conv", ["x", "w"], ["d"]), *_silu("d", "b"), helper.make_node("Add", ["d", "b"], ["o"])]
    m = make_model(nodes, {"x": [1, 1, 4, 4]}, ["a", "o"], {"w": w})
    t = consumer_transfers(m)
    assert t.get("c") is SILU and "d" not in t, "a tensor also read by Add is used linearly"


# -- a small SiLU network ----------------------------------------------------------------------------
def _silu_net(seed: int = 0) -> onnx.ModelProto:
    """conv-SiLU x3 then a plain conv output: a miniature YOLO backbone + head."""
    rng = np.random.default_rng(seed)
    inits = {"w0": conv_weights(rng, 8, 3, 3), "b0": rng.normal(-1, 1, 8).astype(np.float32),
             "w1": conv_weights(rng, 8, 8, 3), "b1": rng.normal(-1, 1, 8).astype(np.float32),
             "w2": conv_weights(rng, 8, 8, 1), "b2": rng.normal(0, 1, 8).astype(np.float32),
             "w3": conv_weights(rng, 4, 8, 1), "b3": np.zeros(4, np.float32)}
    pads = [1, 1, 1, 1]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=pads), *_silu("c0", "a0"),
             helper.make_node("Conv", ["a0", "w1", "b1"], ["c1"], pads=pads), *_silu("c1", "a1"),
             helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"]), *_silu("c2", "a2"),
             helper.make_node("Conv", ["a2", "w3", "b3"], ["out"])]
    return make_model(nodes, {"x": [1, 3, SIZE, SIZE]}, ["out"], inits)


def _images(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (SIZE, SIZE, 3))
    return [np.clip(base + rng.integers(-40, 40, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8) for _ in range(n)]


def _nchw(rgb: np.ndarray) -> np.ndarray:
    return to_float(rgb.transpose(2, 0, 1)[None])


def _plan(model: onnx.ModelProto, images: list[np.ndarray]):
    return plan_from_ranges(model, constraints=TFLITE, ranges=ranges_from(run_onnx(model, {"x": _nchw(i)}) for i in images))


def test_simulator_matches_the_tflite_integer_kernels():
    model = _silu_net()
    images = _images(4, 0)
    plan = _plan(model, images)
    written = write_tflite(model, plan)
    step = float(plan.activations["out"].scale[0])
    sims = simulate(model, plan, [_nchw(i) for i in images])
    lite = [run_tflite(written, i.transpose(2, 0, 1)[None], preserve_all=False).values["out"] for i in images]
    ref = [run_onnx(model, {"x": _nchw(i)}, all_tensors=False)["out"] for i in images]
    diff = np.concatenate([(a - b["out"]).ravel() for a, b in zip(lite, sims)])
    # equal up to fixed-point rounding (one-step differences, rarely compounding)...
    assert np.abs(diff).max() <= 4.5 * step and np.mean(np.abs(diff)) < 0.25 * step
    # ...so the simulated error is the artifact's error
    err = lambda outs: float(np.mean([(o - r) ** 2 for o, r in zip(outs, ref)]))
    assert err([s["out"] for s in sims]) == pytest.approx(err(lite), rel=0.25)


def test_channel_shift_is_the_mean_difference_for_linear_consumers():
    rng = np.random.default_rng(3)
    f = [rng.normal(0, 1, (1, 3, 5, 5)) for _ in range(2)]
    q = [x + np.array([0.5, -1.0, 0.0]).reshape(1, 3, 1, 1) for x in f]
    np.testing.assert_allclose(channel_shift(f, q), [0.5, -1.0, 0.0], atol=1e-9)
    # through SiLU, the shift is fitted where SiLU is not flat
    np.testing.assert_allclose(channel_shift(f, q, SILU), [0.5, -1.0, 0.0], atol=0.05)


def test_bias_correction_fits_each_conv_after_its_consumer():
    model = _silu_net(1)
    calib = _images(8, 1)
    plan = _plan(model, calib)
    result = correct_biases(model, plan, calib)
    assert set(result.shifts) == {"c0", "c1", "c2"}, "graph outputs are not corrected by default"
    assert result.record["convs"] == 3 and result.record["images"] == 8
    assert "out" in correct_biases(model, plan, calib, outputs=True).shifts
    assert run_onnx(model, {"x": _nchw(calib[0])})["c0"].shape == (1, 8, SIZE, SIZE)  # input untouched

    def silu_error(m: onnx.ModelProto) -> float:  # the first conv sees exact inputs: a clean check
        sims = simulate(m, plan, [_nchw(i) for i in calib], keep=["a0"])
        refs = [run_onnx(model, {"x": _nchw(i)})["a0"] for i in calib]
        return float(np.mean([(s["a0"] - r) ** 2 for s, r in zip(sims, refs)]))

    assert silu_error(result.model) < silu_error(model)


def test_bias_correction_raises_head_sqnr_on_unseen_images(calib_dir, val_dev):
    from edgeq.calib.dataset import calibration_set
    from edgeq.pipeline import prepare
    from edgeq.quant.observe import sqnr_db

    prep = prepare(shared_path("models", "yolov8n.onnx"), ConvertConfig())
    calib = list(calibration_set(calib_dir, count=6).images((640, 640)))
    test = [_chw(i) for i in calibration_set(val_dev / "images", count=2).images((640, 640))]
    plan = plan_from_ranges(prep.graph, constraints=TFLITE, ranges=ranges_from(run_onnx(prep.graph, {"images": _chw(i)}) for i in calib))
    corrected = correct_biases(prep.graph, plan, calib).model
    refs = [run_onnx(prep.graph, {"images": x}, all_tensors=False) for x in test]

    def head_sqnr(m: onnx.ModelProto) -> float:
        sims = simulate(m, plan, test)
        return float(np.mean([sqnr_db(r[k], s[k]) for r, s in zip(refs, sims) for k in ("boxes_0", "boxes_1", "boxes_2")]))

    assert head_sqnr(corrected) > head_sqnr(prep.graph) + 1.0


def _chw(rgb: np.ndarray) -> np.ndarray:
    return rgb.transpose(2, 0, 1)[None].astype(np.float32) / np.float32(255)


# -- cross-layer equalization ---------------------------------------------------------------------------
def _cle_net() -> onnx.ModelProto:
    """ConvTranspose -> Conv (exact pair); conv -> MaxPool -> Concat -> conv (exact, with offsets);
    conv -> SiLU -> conv (not exact)."""
    rng = np.random.default_rng(4)
    scales = np.array([0.1, 1.0, 8.0, 0.5], np.float32)  # a badly imbalanced producer
    inits = {"wt": (rng.normal(0, 1, (3, 4, 2, 2)) * scales[None, :, None, None]).astype(np.float32),
             "bt": rng.normal(0, 1, 4).astype(np.float32),
             "w1": conv_weights(rng, 4, 4, 3), "b1": np.zeros(4, np.float32),
             "w2": conv_weights(rng, 4, 8, 1), "b2": np.zeros(4, np.float32),
             "w3": conv_weights(rng, 4, 4, 1), "b3": np.zeros(4, np.float32),
             "w4": conv_weights(rng, 2, 4, 1)}
    nodes = [helper.make_node("ConvTranspose", ["x", "wt", "bt"], ["up"], strides=[2, 2]),
             helper.make_node("Conv", ["up", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["c1"], ["p1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Concat", ["c1", "p1"], ["cat"], axis=1),
             helper.make_node("Conv", ["cat", "w2", "b2"], ["c2"]), *_silu("c2", "a2"),
             helper.make_node("Conv", ["a2", "w3", "b3"], ["c3"]), *_silu("c3", "a3"),
             helper.make_node("Conv", ["a3", "w4"], ["out"])]
    return make_model(nodes, {"x": [1, 3, 8, 8]}, ["out"], inits)


def test_equalize_finds_only_exact_pairs_and_keeps_the_function():
    model = _cle_net()
    pairs = {p.producer.output[0]: sorted(off for _, off in p.consumers) for p in find_pairs(model)}
    assert pairs == {"up": [0], "c1": [0, 4]}, "SiLU breaks the equivalence: c2 and c3 are not pairs"
    x = np.random.default_rng(5).uniform(0, 1, (1, 3, 8, 8)).astype(np.float32)
    for ranges in (None, channel_ranges(model, [x], ["up", "c1"])):
        eq = equalize(model, ranges)
        assert eq.record["pairs"] == 2
        before, after = run_onnx(model, {"x": x}), run_onnx(eq.model, {"x": x})
        np.testing.assert_allclose(after["out"], before["out"], rtol=1e-4, atol=1e-5)
    spread = lambda v: float(np.abs(v).max(axis=(0, 2, 3)).max() / np.median(np.abs(v).max(axis=(0, 2, 3))))
    assert spread(after["up"]) < spread(before["up"]), "the imbalanced ConvTranspose output is evened out"


# -- the pipeline ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seg_artifact(tmp_path_factory):
    from edgeq.pipeline import convert

    out = tmp_path_factory.mktemp("tech") / "seg.tflite"
    return convert(shared_path("models", "yolov8n-seg.onnx"), shared_path("coco-calib"), out,
                   ConvertConfig(calib_count=6, calib_method="auto", equalize=True, bias_correction=True,
                                 on_collapse="warn"), progress=False)


def test_conversion_records_the_techniques_it_ran(seg_artifact):
    prov = json.loads(zipfile.ZipFile(seg_artifact.path).read("edgefirst.json"))["edgeq"]
    cal, tech = prov["calibration"], prov["techniques"]
    assert cal["method"] == "auto" and sum(cal["methods_used"].values()) > 100
    assert cal["transfers"]["silu"] > 50, "conv outputs feeding SiLU are judged after SiLU"
    assert tech["equalize"]["pairs"] == 1, "the Proto upsample -> cv2 pair"
    assert tech["bias_correction"]["convs"] > 60 and tech["bias_correction"]["images"] == 6
    # 6 calibration images never push the stride-8/16 class logits above 0, so those two score
    # outputs cannot express a score above 0.5: the guard must say so, and nothing else collapses
    guard = prov["guard"]
    assert len(guard["outputs"]) == 10
    collapsed = {c["name"] for c in guard["outputs"] if c["status"] == "collapse"}
    assert collapsed <= {"scores_0", "scores_1"} and all("can never exceed" in c["reason"] for c in guard["warnings"]
                                                          if c["status"] == "collapse")
    # the shared YOLOv8n-seg was rebuilt from INT8 weights: GPTQ only rounds the conv whose input
    # channels equalization rescaled off the grid
    assert tech["weight_rounding"]["convs"] == 1 and tech["weight_rounding"]["on_grid"] > 60


def test_techniques_can_be_switched_off(tmp_path):
    from edgeq.pipeline import convert

    cfg = ConvertConfig(calib_count=2, calib_method="minmax", bias_correction=False, guard=False, weight_rounding="nearest")
    res = convert(shared_path("models", "yolov8n.onnx"), shared_path("coco-calib"), tmp_path / "a.tflite", cfg, progress=False)
    prov = res.meta.edgeq
    assert prov["techniques"] == {"equalize": False, "bias_correction": False, "weight_rounding": {"method": "nearest"}}
    # "derived": tensors a kernel ties to another (Sigmoid outputs, reshapes) need no range
    # score logits are floored at logit(SCORE_FLOOR): recorded per tensor
    assert set(prov["calibration"]["methods_used"]) == {"minmax", "minmax+score_floor", "derived"}
    assert prov["calibration"]["methods_used"]["minmax+score_floor"] == 3 and prov["calibration"]["score_floor"] == 1e-4
    assert "guard" not in prov


def test_cli_rejects_unknown_range_methods():
    from typer.testing import CliRunner

    from edgeq.cli import app

    result = CliRunner().invoke(app, ["convert", "m.onnx", "--calib", "c", "--calib-method", "kl"])
    assert result.exit_code == 2 and "unknown --calib-method 'kl'" in result.output and "auto, " in result.output
