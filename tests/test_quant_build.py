"""plan_from_ranges: TFLite kernel constraints honoured, sharing groups, int16, provenance."""
from __future__ import annotations

import numpy as np
import pytest
from _writer_helpers import conv_weights, make_model
from onnx import helper

from edgeq.errors import CalibrationError
from edgeq.export.tflite.constraints import TFLITE
from edgeq.quant.build import MAX_SHARE_WIDENING, plan_from_ranges
from edgeq.quant.constraints import Rule, as_dtype
from edgeq.quant.plan import QParams

RNG = np.random.default_rng(0)


def _conv(x: str, y: str, w: str, k: int = 1) -> helper.NodeProto:
    return helper.make_node("Conv", [x, w], [y], kernel_shape=[k, k], pads=[k // 2] * 4)


def _model(nodes, outputs, c_out=4, **inits):
    weights = {"w": conv_weights(RNG, c_out, 3, 1), **inits}
    return make_model(nodes, {"x": [1, 3, 8, 8]}, outputs, weights)


def test_registry_documents_litert_rules():
    assert TFLITE("Sigmoid").fixed_params("int8").same_as(QParams(1 / 256, -128, "int8"))
    assert TFLITE("Softmax").fixed_params("int16").same_as(QParams(1 / 32768, 0, "int16"))
    assert TFLITE("Concat").rule is Rule.SHARED
    for op in ("MaxPool", "Reshape", "Transpose", "Split", "Slice", "Resize", "Pad"):
        assert TFLITE.table[op].rule is Rule.SAME_AS_INPUT
    assert TFLITE("SomethingNew").rule is Rule.FREE


def test_as_dtype_uint8_int8_is_exact_shift():
    p = QParams(0.1, 3, "uint8")
    assert as_dtype(p, "int8").same_as(QParams(0.1, -125, "int8"))
    assert as_dtype(as_dtype(p, "int8"), "uint8").same_as(p)
    s16 = as_dtype(QParams(0.1, -28, "int8"), "int16")
    assert int(s16.zero_point[0]) == 0 and np.isclose(s16.real_range()[1][0], 0.1 * 155, rtol=1e-4)


def test_input_default_uint8_and_free_conv_output():
    m = _model([_conv("x", "c", "w")], ["c"])
    plan = plan_from_ranges(m, constraints=TFLITE, ranges={"x": (0, 1), "c": (-2.0, 6.0)}, methods={"c": "percentile"})
    assert plan.activations["x"].same_as(QParams(1 / 255, 0, "uint8"))
    c = plan.activations["c"]
    assert c.dtype == "int8" and np.isclose(c.scale[0], 8.0 / 255) and c.zero_point[0] == -64
    assert plan.methods == {"x": "input", "c": "percentile"}
    w = plan.weights["w"]
    assert w.axis == 0 and w.scale.shape == (4,) and not w.zero_point.any()


def test_fixed_and_same_as_input_outputs():
    nodes = [_conv("x", "c", "w"), helper.make_node("Sigmoid", ["c"], ["s"]),
             helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Softmax", ["p"], ["sm"], axis=1)]
    m = _model(nodes, ["s", "sm"])
    plan = plan_from_ranges(m, constraints=TFLITE, ranges={"x": (0, 1), "c": (-3, 5), "s": (0, 1), "p": (-1, 5), "sm": (0, 1)})
    assert plan.activations["s"].same_as(QParams(1 / 256, -128, "int8"))
    assert plan.activations["sm"].same_as(QParams(1 / 256, -128, "int8"))
    assert plan.activations["p"].same_as(plan.activations["c"])  # MAX_POOL_2D cannot rescale
    assert plan.methods["s"] == "fixed:Sigmoid"


def test_maxpool_on_uint8_input_shares_its_int8_equivalent():
    m = make_model([helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2])],
                   {"x": [1, 3, 8, 8]}, ["p"])
    plan = plan_from_ranges(m, constraints=TFLITE, ranges={"x": (0, 1), "p": (0, 1)})
    assert plan.activations["p"].same_as(QParams(1 / 255, -128, "int8"))


def _c2f_like(ratio: float):
    """conv -> split -> (a, b); b -> conv -> d; concat(a, b, d). ``ratio`` scales d's range."""
    nodes = [_conv("x", "c", "w"),
             helper.make_node("Split", ["c", "sizes"], ["a", "b"], axis=1),
             helper.make_node("Conv", ["b", "w2"], ["d"], kernel_shape=[1, 1]),
             helper.make_node("Concat", ["a", "b", "d"], ["y"], axis=1)]
    m = _model(nodes, ["y"], sizes=np.array([2, 2], np.int64), w2=conv_weights(RNG, 2, 2, 1))
    ranges = {"x": (0, 1), "c": (-1, 3), "a": (-1, 3), "b": (-0.5, 2), "d": (-ratio, ratio * 3),
              "y": (min(-1, -ratio), max(3, ratio * 3))}
    return m, ranges


def test_concat_with_similar_ranges_shares_one_group():
    m, ranges = _c2f_like(1.2)
    plan = plan_from_ranges(m, constraints=TFLITE, ranges=ranges)
    y = plan.activations["y"]
    for t in ("c", "a", "b", "d"):
        assert plan.activations[t].same_as(y), t
    assert np.isclose(y.real_range()[1][0], 3.6, rtol=0.01)
    assert plan.notes["planner"]["concat_inputs_requantized"] == 0
    assert plan.methods["d"] == "range+shared"


def test_concat_input_with_much_wider_range_is_left_to_requantize():
    m, ranges = _c2f_like(10.0)  # d spans 40: joining would widen c's range by ~10x
    plan = plan_from_ranges(m, constraints=TFLITE, ranges=ranges)
    y, c = plan.activations["y"], plan.activations["c"]
    assert plan.activations["d"].same_as(y)
    assert not c.same_as(y) and plan.activations["a"].same_as(c)
    assert np.isclose(c.real_range()[1][0] - c.real_range()[0][0], 4.0, rtol=0.01)
    assert plan.notes["planner"]["concat_inputs_requantized"] == 2  # a and b
    assert MAX_SHARE_WIDENING < 10


def test_sigmoid_into_wide_concat_keeps_fixed_params():
    nodes = [_conv("x", "c", "w"), helper.make_node("Sigmoid", ["c"], ["s"]),
             helper.make_node("Concat", ["c", "s"], ["y"], axis=1)]
    m = _model(nodes, ["y"])
    plan = plan_from_ranges(m, constraints=TFLITE, ranges={"x": (0, 1), "c": (-20, 40), "s": (0, 1), "y": (-20, 40)})
    assert plan.activations["s"].same_as(QParams(1 / 256, -128, "int8"))
    assert plan.activations["c"].same_as(plan.activations["y"])


def test_concat_of_sigmoids_adopts_the_fixed_params():
    nodes = [_conv("x", "c", "w"), helper.make_node("Sigmoid", ["c"], ["s"]),
             helper.make_node("Sigmoid", ["x"], ["s2"]),
             helper.make_node("Concat", ["s", "s2"], ["y"], axis=1)]
    m = _model(nodes, ["y"])
    plan = plan_from_ranges(m, constraints=TFLITE, ranges={"x": (0, 1), "c": (-2, 2), "s": (0, 1), "s2": (0.5, 0.75), "y": (0, 1)})
    assert plan.activations["y"].same_as(QParams(1 / 256, -128, "int8"))


def test_int16_tensors_are_symmetric_and_fixed_ops_use_int16_constants():
    nodes = [_conv("x", "c", "w"), helper.make_node("Sigmoid", ["c"], ["s"]),
             helper.make_node("Mul", ["c", "s"], ["m"]),
             helper.make_node("Concat", ["m", "c"], ["y"], axis=1)]
    m = _model(nodes, ["y"])
    ranges = {"x": (0, 1), "c": (-3, 5), "s": (0, 1), "m": (-0.3, 5), "y": (-3, 5)}
    plan = plan_from_ranges(m, constraints=TFLITE, ranges=ranges, int16={"c", "s", "m"})
    c = plan.activations["c"]
    assert c.dtype == "int16" and c.zero_point[0] == 0 and np.isclose(c.scale[0], 5 / 32767)
    assert plan.activations["s"].same_as(QParams(1 / 32768, 0, "int16"))
    # y stays int8: int16 inputs cannot share its parameters, the writer requantizes them.
    assert plan.activations["y"].dtype == "int8"
    assert plan.notes["planner"]["int16_tensors"] == ["c", "m", "s"]


def test_convtranspose_weights_are_per_output_channel_on_axis_1():
    w = RNG.standard_normal((3, 5, 2, 2)).astype(np.float32)
    m = make_model([helper.make_node("ConvTranspose", ["x", "w"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
                   {"x": [1, 3, 4, 4]}, ["y"], {"w": w})
    p = plan_from_ranges(m, constraints=TFLITE, ranges={"x": (0, 1), "y": (-1, 1)}).weights["w"]
    assert p.axis == 1 and p.scale.shape == (5,)
    assert np.allclose(p.scale, np.abs(w).max(axis=(0, 2, 3)) / 127)


def test_missing_or_bad_range_is_a_calibration_error():
    m = _model([_conv("x", "c", "w")], ["c"])
    with pytest.raises(CalibrationError, match="'c'"):
        plan_from_ranges(m, constraints=TFLITE, ranges={"x": (0, 1)})
    with pytest.raises(CalibrationError, match="invalid range"):
        plan_from_ranges(m, constraints=TFLITE, ranges={"x": (0, 1), "c": (1.0, float("nan"))})


def test_custom_input_params_are_used_verbatim():
    m = _model([_conv("x", "c", "w")], ["c"])
    p = QParams(0.02, -10, "int8")
    plan = plan_from_ranges(m, constraints=TFLITE, ranges={"x": (0, 1), "c": (0, 1)}, input_name_params=p)
    assert plan.activations["x"] is p


def test_derived_tensors_need_no_statistics_and_plan_as_if_measured():
    from edgeq.quant.derived import observed_tensors, with_derived_ranges

    nodes = [_conv("x", "c", "w"), helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["c", "s"], ["m"]),
             helper.make_node("Transpose", ["m"], ["t"], perm=[0, 1, 3, 2]),
             helper.make_node("MaxPool", ["t"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Transpose", ["p"], ["q"], perm=[0, 1, 3, 2])]
    m = _model(nodes, ["q"])
    # derived: the Sigmoid output (fixed) and the inner Transpose (the input's values, permuted);
    # a MaxPool keeps the large values (another distribution) and q is a graph output: measured
    assert observed_tensors(m, TFLITE) == ["x", "c", "m", "p", "q"]
    measured = {"c": (-3.0, 5.0), "m": (-0.3, 4.9), "p": (0.0, 4.95), "q": (0.0, 4.0)}
    full, filled = with_derived_ranges(m, measured, TFLITE)
    assert filled == ["s", "t"] and full["t"] == measured["m"] and full["s"] == (0.0, 255 / 256)
    plan = plan_from_ranges(m, constraints=TFLITE, ranges={"x": (0, 1), **full})
    explicit = plan_from_ranges(m, constraints=TFLITE, ranges={"x": (0, 1), **measured, "s": (0.0, 1.0), "t": (-0.2, 4.5)})
    for name in ("s", "t", "p", "q", "m"):
        assert plan.activations[name].same_as(explicit.activations[name])
