"""GPTQ weight rounding: lower conv output error than nearest rounding, on the same INT8 grid."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from _writer_helpers import conv_weights, make_model, run_onnx, to_float
from edgeq.quant.gptq import _Conv, gptq_codes, gptq_round, output_error, patches
from edgeq.quant.plan import symmetric_weight_params

SIZE = 16


def _correlated_inputs(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """Inputs with strongly correlated features, as neighbouring pixels and channels are."""
    mix = rng.normal(size=(dim, dim)) + 3.0 * np.eye(dim)
    return rng.normal(size=(n, dim)) @ mix


def test_gptq_codes_beat_nearest_rounding_on_the_same_grid():
    rng = np.random.default_rng(0)
    x = _correlated_inputs(rng, 4000, 36)
    h = x.T @ x
    w = rng.normal(size=(8, 36)).astype(np.float32)
    scale = (np.abs(w).max(1) / 127).astype(np.float32)
    codes = gptq_codes(w, h, scale)
    nearest = np.clip(np.round(w / scale[:, None]), -127, 127)
    assert np.array_equal(codes, np.round(codes)) and np.abs(codes).max() <= 127
    rows = np.arange(len(w))
    top = np.argmax(np.abs(w), axis=1)
    assert np.array_equal(codes[rows, top], nearest[rows, top]), "each row keeps the code that sets its scale"
    gptq_err = output_error(w, codes * scale[:, None], h)
    assert gptq_err < 0.6 * output_error(w, nearest * scale[:, None], h)


def test_patches_reproduce_the_conv():
    """sum(p p^T) over every patch gives each channel's sum of squared outputs (stride and pads too)."""
    rng = np.random.default_rng(1)
    w = conv_weights(rng, 4, 3, 3)
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2], pads=[1, 0, 1, 1])
    m = make_model([node], {"x": [1, 3, 9, 8]}, ["y"], {"w": w})
    x = rng.normal(size=(1, 3, 9, 8)).astype(np.float32)
    y = run_onnx(m, {"x": x})["y"]
    p = patches(x, _Conv(node, w, (2, 2), (1, 0, 1, 1), np.ones(4, np.float32)), 10_000, rng).astype(np.float64)
    assert len(p) == y.shape[2] * y.shape[3]
    wf = w.reshape(4, -1).astype(np.float64)
    np.testing.assert_allclose(np.diag(wf @ (p.T @ p) @ wf.T), (y.astype(np.float64) ** 2).sum(axis=(0, 2, 3)), rtol=1e-4)


def _net(seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = {"w0": conv_weights(rng, 8, 3, 3), "b0": rng.normal(0, 1, 8).astype(np.float32),
             "w1": conv_weights(rng, 6, 8, 3), "b1": np.zeros(6, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["a0"]),
             helper.make_node("Conv", ["a0", "w1", "b1"], ["out"], pads=[1, 1, 1, 1])]
    return make_model(nodes, {"x": [1, 3, SIZE, SIZE]}, ["out"], inits)


def _images(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (SIZE, SIZE, 3))
    return [np.clip(base + rng.integers(-40, 40, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8) for _ in range(n)]


def _weights(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer if t.name.startswith("w")}


def _with_nearest(m: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    for t in out.graph.initializer:
        if t.name.startswith("w"):
            w = numpy_helper.to_array(t)
            p = symmetric_weight_params(w, 0)
            t.CopyFrom(numpy_helper.from_array(p.dequantize(p.quantize(w)).astype(np.float32), t.name))
    return out


def test_gptq_round_keeps_the_grid_and_brings_outputs_closer_to_float():
    model = _net(3)
    rounded = gptq_round(model, _images(8, 4))
    assert rounded.record["convs"] == 2 and rounded.record["images"] == 8
    assert all(r < 1.0 for r in rounded.error_ratio.values())
    for name, w in _weights(rounded.model).items():
        orig = _weights(model)[name]
        p = symmetric_weight_params(w, 0)
        np.testing.assert_allclose(p.scale, symmetric_weight_params(orig, 0).scale, rtol=1e-6)
        np.testing.assert_allclose(p.dequantize(p.quantize(w)), w, rtol=0, atol=1e-7)  # exactly representable
    nearest = _with_nearest(model)

    def err(m: onnx.ModelProto, imgs: list[np.ndarray]) -> float:
        total = 0.0
        for rgb in imgs:
            x = to_float(rgb.transpose(2, 0, 1)[None])
            total += float(((run_onnx(m, {"x": x})["out"] - run_onnx(model, {"x": x})["out"]) ** 2).sum())
        return total

    held_out = _images(6, 9)
    assert err(rounded.model, held_out) < 0.8 * err(nearest, held_out)


def test_weights_already_on_the_grid_take_no_pass():
    grid = _with_nearest(_net(5))
    rounded = gptq_round(grid, iter(()))  # no image is read
    assert rounded.record == {"method": "gptq", "convs": 0, "on_grid": 2}
    for name, w in _weights(rounded.model).items():
        assert np.array_equal(w, _weights(grid)[name])
