"""write_tflite: op-by-op numerics against onnxruntime, layout, integer-only, errors, determinism.

Every case builds a tiny float ONNX graph, calibrates it on random pixels with onnxruntime, plans
it, writes the TFLite flatbuffer and runs it in LiteRT's reference kernels. Two checks:

* per tensor ("local"): each op re-run in float on LiteRT's own dequantized inputs must match
  LiteRT's output within one quantization step of that output (half a step for rounding the
  result, half for requantized inputs and the kernels' fixed-point multipliers). int16 steps are
  256x finer while the 16x8 kernels' input requantizations are accurate to about one step
  before the final rounding, so int16 tensors get two steps, and int16 LOGISTIC/SOFTMAX (lookup
  tables) one int8 step (see :func:`over_tolerance`);
* end to end: the output must match the float model (with the plan's quantized weights and
  constants) within the sum of the quantization steps of the tensors it depends on.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import tflite
from _writer_helpers import (
    assert_fully_integer,
    conv_weights,
    convert,
    fake_quant_model,
    local_errors,
    make_model,
    run_onnx,
    run_tflite,
    run_xnnpack,
    tensor_types,
    to_float,
)
from onnx import helper

from edgeq.errors import UnsupportedOpError
from edgeq.export.tflite import write_tflite
from edgeq.export.tflite.constraints import TFLITE
from edgeq.quant.build import plan_from_ranges
from edgeq.quant.constraints import Rule

LOCAL_STEPS = {"int8": 1.0, "int16": 2.0}
RNG = np.random.default_rng(1)
N = helper.make_node


def conv(x, y, w, k=3, s=1, p=None, b=None, group=1):
    p = k // 2 if p is None else p
    inputs = [x, w] + ([b] if b else [])
    return N("Conv", inputs, [y], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4, group=group)


def silu(x, y):
    return [N("Sigmoid", [x], [f"{y}_sig"]), N("Mul", [x, f"{y}_sig"], [y])]


def weights(c_out, c_in, k, bias=True, name="w"):
    d = {name: conv_weights(RNG, c_out, c_in, k)}
    if bias:
        d[f"{name}_b"] = (RNG.standard_normal(c_out) * 0.2).astype(np.float32)
    return d


def over_tolerance(model: onnx.ModelProto, plan, errors: dict[str, float]) -> dict[str, float]:
    """The tensors whose local error (in steps) exceeds what their dtype and kernel allow."""
    producer = {o: n.op_type for n in model.graph.node for o in n.output}

    def allowed(name: str) -> float:
        p, c = plan.activations[name], TFLITE(producer.get(name, ""))
        if p.dtype == "int16" and c.rule is Rule.FIXED:
            # LiteRT's int16 LOGISTIC/SOFTMAX use lookup tables whose accuracy depends on the input
            # range (measured up to ~20 int16 steps on YOLO tensors): require them to beat the
            # int8 kernel's output step, i.e. int16 is never worse than int8 there.
            return float(c.fixed_params("int8").scale[0] / p.scale[0])
        return LOCAL_STEPS[p.dtype]

    return {k: round(v, 2) for k, v in errors.items() if v > allowed(k)}


def ancestors(model: onnx.ModelProto, name: str) -> set[str]:
    producer = {o: n for n in model.graph.node for o in n.output}
    seen, todo = set(), [name]
    while todo:
        t = todo.pop()
        if t in seen or t not in producer:
            continue
        seen.add(t)
        todo.extend(producer[t].input)
    return seen


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    noise = float(np.sum((test.astype(np.float64) - ref) ** 2))
    return 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / max(noise, 1e-30))


def check(model: onnx.ModelProto, int16=(), n_ops: dict[str, int] | None = None, e2e_sqnr: float | None = None):
    """Convert, run and apply both numeric checks; returns (plan, result, lite run).

    Products over many terms (MatMul) amplify upstream rounding beyond the sum-of-steps bound;
    for those graphs ``e2e_sqnr`` (dB) replaces it as the end-to-end check."""
    plan, result, pixels = convert(model, int16=int16)
    assert_fully_integer(result)
    lite = run_tflite(result, pixels[0])
    errors = local_errors(model, plan, lite)
    assert errors, "no tensor was compared"
    bad = over_tolerance(model, plan, errors)
    assert not bad, f"tensors off by more than {LOCAL_STEPS} step(s): {bad}"
    ref = run_onnx(fake_quant_model(model, plan), {model.graph.input[0].name: to_float(pixels[0])})
    for out in result.outputs:
        upstream = ancestors(model, out.name) - {i.name for i in model.graph.input}
        tol = sum(float(plan.activations[t].scale[0]) for t in upstream if t in plan.activations)
        err = np.abs(lite.values[out.name] - ref[out.name]).max()
        if e2e_sqnr is not None:
            db = sqnr_db(ref[out.name], lite.values[out.name])
            assert db >= e2e_sqnr, f"{out.name}: SQNR {db:.1f} dB < {e2e_sqnr} dB"
            continue
        assert err <= tol, f"{out.name}: error {err:.4g} > {tol:.4g} (sum of upstream steps)"
        assert out.scale == pytest.approx(float(plan.activations[out.name].scale[0]), rel=0, abs=0)
        assert out.zero_point == int(plan.activations[out.name].zero_point[0])
    if n_ops:
        counts = op_counts(result.buffer)
        for op, n in n_ops.items():
            assert counts.get(op, 0) == n, f"{op}: {counts.get(op, 0)} != {n} ({counts})"
    return plan, result, lite


def op_counts(buffer: bytes) -> dict[str, int]:
    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    m = tflite.Model.GetRootAsModel(buffer, 0)
    sg = m.Subgraphs(0)
    counts: dict[str, int] = {}
    for i in range(sg.OperatorsLength()):
        op = names[m.OperatorCodes(sg.Operators(i).OpcodeIndex()).BuiltinCode()]
        counts[op] = counts.get(op, 0) + 1
    return counts


X = {"x": [1, 3, 16, 20]}  # H != W so NCHW/NHWC mix-ups cannot pass


# -- single ops -------------------------------------------------------------------------------------
def test_conv_same_padding_with_bias():
    m = make_model([conv("x", "y", "w", b="w_b")], X, ["y"], weights(8, 3, 3))
    _, res, _ = check(m, n_ops={"QUANTIZE": 1, "CONV_2D": 1, "PAD": 0})
    assert res.inputs[0].shape == (1, 16, 20, 3) and res.inputs[0].dtype == "uint8"
    assert res.inputs[0].scale == pytest.approx(1 / 255) and res.inputs[0].zero_point == 0
    assert res.outputs[0].shape == (1, 16, 20, 8) and res.outputs[0].name == "y"


def test_conv_stride2_asymmetric_padding_uses_explicit_pad():
    m = make_model([conv("x", "y", "w", s=2, b="w_b")], X, ["y"], weights(8, 3, 3))
    check(m, n_ops={"PAD": 1, "CONV_2D": 1})


def test_conv_1x1_without_bias_and_valid_conv():
    nodes = [conv("x", "a", "w", k=1, p=0), conv("a", "y", "w2", k=3, p=0)]
    m = make_model(nodes, X, ["y"], {**weights(6, 3, 1, bias=False), **weights(5, 6, 3, bias=False, name="w2")})
    check(m, n_ops={"PAD": 0, "CONV_2D": 2})


def test_depthwise_conv():
    nodes = [conv("x", "a", "w", k=1, p=0, b="w_b"),
             conv("a", "y", "dw", k=3, s=2, b="dw_b", group=8)]
    inits = {**weights(8, 3, 1), "dw": conv_weights(RNG, 8, 1, 3), "dw_b": np.zeros(8, np.float32)}
    check(make_model(nodes, X, ["y"], inits), n_ops={"DEPTHWISE_CONV_2D": 1, "PAD": 1})


def test_conv_transpose_k2_s2_with_bias():
    nodes = [conv("x", "a", "w", b="w_b"),
             N("ConvTranspose", ["a", "wt", "bt"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    inits = {**weights(6, 3, 3), "wt": (RNG.standard_normal((6, 4, 2, 2)) * 0.3).astype(np.float32),
             "bt": (RNG.standard_normal(4) * 0.1).astype(np.float32)}
    _, res, _ = check(make_model(nodes, X, ["y"], inits), n_ops={"TRANSPOSE_CONV": 1})
    assert res.outputs[0].shape == (1, 32, 40, 4)


def test_sigmoid_and_softmax_have_fixed_params():
    nodes = [conv("x", "c", "w", b="w_b"), N("Sigmoid", ["c"], ["s"]), N("Softmax", ["c"], ["sm"], axis=1)]
    plan, res, _ = check(make_model(nodes, X, ["s", "sm"], weights(8, 3, 3)), n_ops={"LOGISTIC": 1, "SOFTMAX": 1})
    for o in res.outputs:
        assert (o.scale, o.zero_point) == (1 / 256, -128)
    # Softmax over ONNX axis 1 is the last axis in NHWC: no transpose needed.
    assert op_counts(res.buffer).get("TRANSPOSE", 0) == 0


def test_softmax_on_a_middle_axis_of_a_3d_tensor():
    nodes = [conv("x", "c", "w", b="w_b"), N("Reshape", ["c", "shape"], ["r"]), N("Softmax", ["r"], ["y"], axis=1)]
    inits = {**weights(8, 3, 3), "shape": np.array([1, 8, 320], np.int64)}
    _, res, _ = check(make_model(nodes, X, ["y"], inits))
    assert res.outputs[0].shape == (1, 8, 320)


def test_elementwise_with_constants():
    c = (RNG.standard_normal((1, 8, 1, 1)) + 2).astype(np.float32)
    nodes = [conv("x", "a", "w", b="w_b"),
             N("Add", ["a", "cadd"], ["b"]), N("Sub", ["csub", "b"], ["d"]), N("Mul", ["d", "cmul"], ["e"]),
             N("Div", ["e", "two"], ["f"]), N("Pow", ["f", "two"], ["g"]), N("Sub", ["g", "a"], ["y"])]
    inits = {**weights(8, 3, 3), "cadd": c, "csub": np.float32(0.5), "cmul": c[0, :, 0, 0].reshape(8, 1, 1) * 0.5,
             "two": np.float32(2.0)}
    check(make_model(nodes, X, ["y"], inits), n_ops={"ADD": 1, "SUB": 2, "MUL": 3})


def test_slice_and_pad():
    nodes = [conv("x", "a", "w", b="w_b"),
             N("Slice", ["a", "st", "en", "ax", "sp"], ["s"]),
             N("Pad", ["s", "pads"], ["y"])]
    inits = {**weights(8, 3, 3), "st": np.array([2, 1, -15], np.int64), "en": np.array([7, 100, -1], np.int64),
             "ax": np.array([1, 2, 3], np.int64), "sp": np.array([1, 2, 3], np.int64),
             "pads": np.array([0, 0, 1, 2, 0, 1, 0, 1], np.int64)}
    _, res, _ = check(make_model(nodes, X, ["y"], inits), n_ops={"STRIDED_SLICE": 1, "PAD": 1})
    assert res.outputs[0].shape == (1, 9, 8, 6)


def test_maxpool_valid_and_padded():
    nodes = [conv("x", "a", "w", b="w_b"),
             N("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             N("MaxPool", ["p"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])]
    check(make_model(nodes, X, ["y"], weights(8, 3, 3)), n_ops={"MAX_POOL_2D": 2, "PADV2": 1})


def test_reshape_and_transpose_keep_onnx_semantics():
    nodes = [conv("x", "a", "w", b="w_b"), N("Reshape", ["a", "shape"], ["r"]),
             N("Transpose", ["r"], ["t"], perm=[0, 2, 1]), *silu("t", "y")]
    inits = {**weights(8, 3, 3), "shape": np.array([1, 8, -1], np.int64)}
    _, res, _ = check(make_model(nodes, X, ["y"], inits))
    assert res.outputs[0].shape == (1, 320, 8)


def c2psa_attention(heads: int = 2, scale_q: bool = False) -> onnx.ModelProto:
    """YOLO11's C2PSA attention as Ultralytics exports it: qkv Conv, Reshape to [1, heads, C, HW],
    Split, q^T k (scaled), Softmax over the last axis, v attn^T, Reshape back, + positional Conv."""
    kd, hd = 4, 8  # key and head dims per head
    c = heads * hd
    hw = X["x"][2] * X["x"][3]
    scale = np.float32(kd ** -0.5)
    nodes = [conv("x", "qkv", "w", k=1, p=0, b="w_b"),
             N("Reshape", ["qkv", "s1"], ["r"]), N("Split", ["r", "sizes"], ["q0", "k", "v"], axis=2)]
    if scale_q:  # Ultralytics 8.4 scales q before the product
        nodes += [N("Mul", ["q0", "scale"], ["q"]), N("Transpose", ["q"], ["qt"], perm=[0, 1, 3, 2]),
                  N("MatMul", ["qt", "k"], ["attn"])]
    else:
        nodes += [N("Transpose", ["q0"], ["qt"], perm=[0, 1, 3, 2]), N("MatMul", ["qt", "k"], ["a0"]),
                  N("Mul", ["a0", "scale"], ["attn"])]
    nodes += [N("Softmax", ["attn"], ["p"], axis=-1), N("Transpose", ["p"], ["pt"], perm=[0, 1, 3, 2]),
              N("MatMul", ["v", "pt"], ["o"]), N("Reshape", ["o", "s2"], ["o4"]),
              N("Reshape", ["v", "s2"], ["v4"]), conv("v4", "pe", "wpe", b="wpe_b", group=c),
              N("Add", ["o4", "pe"], ["y"])]
    inits = {**weights(heads * (2 * kd + hd), 3, 1), **weights(c, 1, 3, name="wpe"),
             "s1": np.array([1, heads, 2 * kd + hd, hw], np.int64), "sizes": np.array([kd, kd, hd], np.int64),
             "s2": np.array([1, c, *X["x"][2:]], np.int64), "scale": scale}
    return make_model(nodes, X, ["y"], inits)


@pytest.mark.parametrize("scale_q", [False, True], ids=["u8.3", "u8.4"])
def test_matmul_attention_block(scale_q):
    """Both BATCH_MATMULs read their transposed operands through adj_x / adj_y: no TRANSPOSE of
    the attention matrix, and the q^T / attn^T Transposes move no data.

    End to end, int8 is poor here (13.7 / 23.2 dB): SOFTMAX's fixed int8 step of 1/256 is coarser
    than most of a 320-long row's probabilities; every op is still within one step locally."""
    _, res, _ = check(c2psa_attention(scale_q=scale_q), n_ops={"BATCH_MATMUL": 2, "SOFTMAX": 1}, e2e_sqnr=10)
    assert res.outputs[0].shape == (1, 16, 20, 16)
    assert op_counts(res.buffer).get("TRANSPOSE", 0) == 3  # NHWC <-> ONNX order around the Reshapes only


@pytest.mark.parametrize("scale_q", [False, True], ids=["u8.3", "u8.4"])
def test_matmul_attention_int16_softmax(scale_q):
    """The softmax output alone in int16 fixes the block (34 / 39 dB); the BATCH_MATMUL reading it
    then computes in int16 (its int8 output requantized after), not on an int8 copy of it."""
    _, res, _ = check(c2psa_attention(scale_q=scale_q), int16=["p"], e2e_sqnr=30)
    assert op_counts(res.buffer)["BATCH_MATMUL"] == 2


def test_matmul_attention_block_int16():
    model = c2psa_attention()
    check(model, int16=[n.output[0] for n in model.graph.node], n_ops={"BATCH_MATMUL": 2}, e2e_sqnr=40)


def test_matmul_with_constants_and_broadcast():
    """activation x constant (rank-2 constant broadcast over the batch axes), constant x activation."""
    nodes = [conv("x", "a", "w", b="w_b"), N("Reshape", ["a", "shape"], ["r"]),
             N("Transpose", ["r"], ["t"], perm=[0, 2, 1]), N("MatMul", ["t", "wr"], ["m"]),
             N("MatMul", ["wl", "m"], ["y"])]
    inits = {**weights(8, 3, 3), "shape": np.array([1, 8, -1], np.int64),
             "wr": (RNG.standard_normal((8, 5)) * 0.4).astype(np.float32),
             "wl": (RNG.standard_normal((1, 6, 320)) * 0.1).astype(np.float32)}
    _, res, _ = check(make_model(nodes, X, ["y"], inits), n_ops={"BATCH_MATMUL": 2}, e2e_sqnr=35)
    assert res.outputs[0].shape == (1, 6, 5)


# -- small YOLO-like combos ---------------------------------------------------------------------------
def test_conv_silu():
    nodes = [conv("x", "c", "w", s=2, b="w_b"), *silu("c", "y")]
    check(make_model(nodes, X, ["y"], weights(8, 3, 3)), n_ops={"LOGISTIC": 1, "MUL": 1})


def test_c2f_split_concat():
    nodes = [conv("x", "c", "w", k=1, b="w_b"), *silu("c", "cs"),
             N("Split", ["cs", "sizes"], ["a", "b"], axis=1),
             conv("b", "m1", "wm", b="wm_b"), *silu("m1", "m"), N("Add", ["b", "m"], ["r"]),
             N("Concat", ["a", "b", "r"], ["cat"], axis=1), conv("cat", "y", "wo", k=1, b="wo_b")]
    inits = {**weights(8, 3, 1), **weights(4, 4, 3, name="wm"), **weights(8, 12, 1, name="wo"),
             "sizes": np.array([4, 4], np.int64)}
    check(make_model(nodes, X, ["y"], inits), n_ops={"SPLIT": 1, "SPLIT_V": 0, "CONCATENATION": 1})


def test_sppf_maxpool_concat():
    nodes = [conv("x", "c", "w", k=1, b="w_b"),
             *[N("MaxPool", [s], [d], kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2])
               for s, d in (("c", "p1"), ("p1", "p2"), ("p2", "p3"))],
             N("Concat", ["c", "p1", "p2", "p3"], ["cat"], axis=1), conv("cat", "y", "wo", k=1, b="wo_b")]
    plan, res, _ = check(make_model(nodes, X, ["y"], {**weights(4, 3, 1), **weights(6, 16, 1, name="wo")}),
                         n_ops={"MAX_POOL_2D": 3, "PADV2": 0, "QUANTIZE": 1})
    assert plan.activations["cat"].same_as(plan.activations["c"])


def test_resize_nearest_and_concat_with_skip():
    nodes = [conv("x", "c", "w", s=2, b="w_b"),
             N("Resize", ["c", "", "scales"], ["u"], mode="nearest",
               coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
             conv("x", "skip", "w2", b="w2_b"), N("Concat", ["u", "skip"], ["y"], axis=1)]
    inits = {**weights(4, 3, 3), **weights(4, 3, 3, name="w2"), "scales": np.array([1, 1, 2, 2], np.float32)}
    check(make_model(nodes, X, ["y"], inits), n_ops={"RESIZE_NEAREST_NEIGHBOR": 0, "CONCATENATION": 3, "RESHAPE": 2})


def test_split_and_upsample_lower_to_ops_xnnpack_delegates():
    """No SPLIT_V or RESIZE_NEAREST_NEIGHBOR (the XNNPACK delegate refuses both, cutting the graph):
    equal 2-4-way splits are SPLIT, other splits STRIDED_SLICE, 2-4x upsampling CONCATENATION +
    RESHAPE. All copies, so XNNPACK's outputs equal the reference kernels' bit for bit, and after the
    input QUANTIZE (uint8 -> int8, refused too) the whole graph is one delegate partition."""
    nodes = [N("Split", ["x"], ["top", "bottom"], axis=2),  # 2 equal parts -> SPLIT
             N("Split", ["top"], [f"s{i}" for i in range(5)], axis=3),  # 5 equal parts -> 5 slices
             N("Split", ["bottom", "sizes"], ["c1", "c2"], axis=1),  # unequal -> 2 slices
             N("Resize", ["s1", "", "scales"], ["up"], mode="nearest",
               coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
             N("Concat", ["s0", "s4"], ["cat"], axis=3)]
    inits = {"sizes": np.array([1, 2], np.int64), "scales": np.array([1, 1, 2, 3], np.float32)}
    model = make_model(nodes, X, ["up", "c2", "cat"], inits)
    _, result, lite = check(model, n_ops={"SPLIT": 1, "STRIDED_SLICE": 7, "SPLIT_V": 0, "RESHAPE": 2,
                                          "RESIZE_NEAREST_NEIGHBOR": 0, "CONCATENATION": 3})
    assert lite.values["up"].shape == (1, 3, 16, 12)
    pixels = np.random.default_rng(7).integers(0, 256, size=(1, 3, 16, 20), dtype=np.uint8)
    reference = run_tflite(result, pixels, preserve_all=False)
    outputs, partitions = run_xnnpack(result, pixels)
    assert partitions == 1
    for name, codes in outputs.items():
        assert np.array_equal(codes, reference.raw[name]), name


def test_tensor_feeding_two_concats_is_requantized_where_needed():
    nodes = [conv("x", "a", "w", b="w_b"), conv("x", "big", "w2", b="w2_b"), N("Mul", ["big", "k"], ["huge"]),
             N("Concat", ["a", "big"], ["y1"], axis=1), N("Concat", ["a", "huge"], ["y2"], axis=1)]
    inits = {**weights(4, 3, 3), **weights(4, 3, 3, name="w2"), "k": np.float32(25.0)}
    plan, res, _ = check(make_model(nodes, X, ["y1", "y2"], inits))
    assert not plan.activations["a"].same_as(plan.activations["y2"])
    assert op_counts(res.buffer)["QUANTIZE"] >= 2  # input + a -> y2's params
    assert [o.name for o in res.outputs] == ["y1", "y2"]


def test_sigmoid_into_wide_concat_and_3d_concat():
    nodes = [conv("x", "c", "w", b="w_b"), N("Sigmoid", ["c"], ["s"]), N("Mul", ["c", "k"], ["big"]),
             N("Reshape", ["s", "shape"], ["rs"]), N("Reshape", ["big", "shape"], ["rb"]),
             N("Concat", ["rb", "rs"], ["y"], axis=2)]
    inits = {**weights(4, 3, 3), "k": np.float32(40.0), "shape": np.array([1, 4, 320], np.int64)}
    _, res, lite = check(make_model(nodes, X, ["y"], inits))
    assert res.outputs[0].shape == (1, 4, 640)


def test_5d_yolov5_style_decode():
    nodes = [conv("x", "c", "w", k=1, b="w_b"), N("Reshape", ["c", "shape"], ["r"]),
             N("Transpose", ["r"], ["t"], perm=[0, 1, 3, 4, 2]), N("Sigmoid", ["t"], ["s"]),
             N("Split", ["s", "sizes"], ["xy", "wh", "conf"], axis=4),
             N("Mul", ["xy", "two"], ["xy2"]), N("Add", ["xy2", "grid"], ["xy3"]),
             N("Mul", ["wh", "two"], ["wh2"]), N("Pow", ["wh2", "two"], ["wh3"]),
             N("Concat", ["xy3", "wh3", "conf"], ["cat"], axis=4), N("Reshape", ["cat", "flat"], ["y"])]
    inits = {**weights(12, 3, 1), "shape": np.array([1, 2, 6, 16, 20], np.int64),
             "sizes": np.array([2, 2, 2], np.int64), "two": np.float32(2.0),
             "grid": RNG.uniform(0, 16, (1, 1, 16, 20, 2)).astype(np.float32),
             "flat": np.array([1, -1, 6], np.int64)}
    _, res, _ = check(make_model(nodes, X, ["y"], inits))
    assert res.outputs[0].shape == (1, 640, 6)


# -- int16 (16x8) ---------------------------------------------------------------------------------------
INT16_NODES = [conv("x", "c", "w", s=2, b="w_b"), *silu("c", "m"), conv("m", "c2", "w2", k=1),
               N("Add", ["c2", "m"], ["a"]), N("Concat", ["a", "m", "c2"], ["y"], axis=1)]


def test_int16_everywhere():
    m = make_model(INT16_NODES, X, ["y"], {**weights(8, 3, 3), **weights(8, 8, 1, bias=False, name="w2")})
    names = {"c", "m_sig", "m", "c2", "a", "y"}
    plan, res, _ = check(m, int16=names)
    types = tensor_types(res.buffer)
    assert all(types[n] == "int16" for n in names)
    assert types["w_b"] == "int64" and types["w"] == "int8"
    assert res.outputs[0].dtype == "int16" and res.outputs[0].zero_point == 0
    assert plan.activations["m_sig"].scale[0] == np.float32(1 / 32768)


def test_int16_mixed_with_int8():
    m = make_model(INT16_NODES, X, ["y"], {**weights(8, 3, 3), **weights(8, 8, 1, bias=False, name="w2")})
    _, res, _ = check(m, int16={"m_sig", "a"})
    types = tensor_types(res.buffer)
    assert types["a"] == "int16" and types["y"] == "int8" and types["c"] == "int8"


@pytest.mark.parametrize("int16", [False, True], ids=["int8", "int16"])
def test_data_movement_chain_int8_and_int16(int16):
    """Depthwise, padded MaxPool, Resize, Split, Concat, Slice, Pad, ConvTranspose, Reshape,
    Transpose and Softmax in one chain; with ``int16`` every activation is int16 (16x8)."""
    from edgeq.graph.view import GraphView

    nodes = [conv("x", "a", "w", k=1, p=0, b="w_b"), conv("a", "d", "dw", k=3, s=2, b="dw_b", group=8),
             N("MaxPool", ["d"], ["p"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
             N("Resize", ["p", "", "scales"], ["u"], mode="nearest", coordinate_transformation_mode="asymmetric",
               nearest_mode="floor"),
             N("Split", ["u", "sizes"], ["s1", "s2"], axis=1), N("Concat", ["s2", "s1", "a"], ["cat"], axis=1),
             N("Slice", ["cat", "st", "en", "ax"], ["sl"]), N("Pad", ["sl", "pads"], ["pd"]),
             N("ConvTranspose", ["pd", "wt", "bt"], ["ct"], kernel_shape=[2, 2], strides=[2, 2]),
             N("Reshape", ["ct", "shape"], ["r"]), N("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
             N("Softmax", ["t"], ["y"], axis=1)]
    inits = {**weights(8, 3, 1), "dw": conv_weights(RNG, 8, 1, 3), "dw_b": np.zeros(8, np.float32),
             "scales": np.array([1, 1, 2, 2], np.float32), "sizes": np.array([3, 5], np.int64),
             "st": np.array([2], np.int64), "en": np.array([14], np.int64), "ax": np.array([1], np.int64),
             "pads": np.array([0, 0, 1, 0, 0, 0, 0, 1], np.int64),
             "wt": (RNG.standard_normal((12, 4, 2, 2)) * 0.3).astype(np.float32), "bt": np.zeros(4, np.float32),
             "shape": np.array([1, 4, -1], np.int64)}
    m = make_model(nodes, X, ["y"], inits)
    names = set(GraphView(m).activations()) - {"x"} if int16 else set()
    _, res, _ = check(m, int16=names)
    types = tensor_types(res.buffer)
    assert {types[n] for n in names} <= {"int16"} and res.outputs[0].dtype == ("int16" if int16 else "int8")
    assert res.outputs[0].shape == (1, 1428, 4)


# -- interface, errors, determinism ----------------------------------------------------------------------
def test_outputs_follow_onnx_order_layout_and_plan():
    nodes = [conv("x", "c", "w", b="w_b"), N("Reshape", ["c", "shape"], ["flat"]), N("Sigmoid", ["c"], ["s"])]
    m = make_model(nodes, X, ["flat", "c", "s"], {**weights(4, 3, 3), "shape": np.array([1, 4, 320], np.int64)})
    plan, res, _ = check(m)
    assert [o.name for o in res.outputs] == ["flat", "c", "s"]
    assert [o.shape for o in res.outputs] == [(1, 4, 320), (1, 16, 20, 4), (1, 16, 20, 4)]
    assert res.layouts["c"] == (0, 2, 3, 1) and res.layouts["flat"] == (0, 1, 2)


DETERMINISM_SCRIPT = """
import hashlib, sys
import numpy as np
sys.path.insert(0, {tests!r})
from _writer_helpers import convert, make_model
from test_tflite_writer import determinism_model
print(hashlib.sha256(convert(determinism_model())[1].buffer).hexdigest())
"""


def determinism_model() -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    inits = {"w": conv_weights(rng, 8, 3, 3), "w_b": rng.standard_normal(8).astype(np.float32)}
    return make_model([conv("x", "c", "w", s=2, b="w_b"), *silu("c", "y")], X, ["y"], inits)


def test_deterministic_bytes():
    """Same model and plan -> identical bytes, in this process and under another hash seed."""
    import hashlib
    import os
    import subprocess
    import sys
    from pathlib import Path

    m = determinism_model()
    plan, res, _ = convert(m)
    assert write_tflite(m, plan).buffer == res.buffer
    script = DETERMINISM_SCRIPT.format(tests=str(Path(__file__).parent))
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == hashlib.sha256(res.buffer).hexdigest()


def test_description_is_stored():
    m = make_model([conv("x", "y", "w")], X, ["y"], weights(4, 3, 3, bias=False))
    plan, _, _ = convert(m)
    buf = write_tflite(m, plan, description="edgeq yolov8n").buffer
    assert tflite.Model.GetRootAsModel(buf, 0).Description() == b"edgeq yolov8n"


@pytest.mark.parametrize("node, what", [
    (N("Resize", ["x", "", "scales"], ["y"], name="up", mode="linear"), "mode='linear'"),
    (N("Resize", ["x", "", "scales"], ["y"], name="up", mode="nearest", coordinate_transformation_mode="half_pixel"),
     "coordinate_transformation_mode='half_pixel'"),
    (N("Erf", ["x"], ["y"], name="erf0"), "op type 'Erf'"),
    (N("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 2], dilations=[2, 2]), "dilations=[2, 2]"),
    (N("Conv", ["x", "wg"], ["y"], name="grouped", kernel_shape=[1, 1], group=3), "group=3"),
])
def test_unsupported_ops_name_node_op_and_attribute(node, what):
    inits = {"scales": np.array([1, 1, 2, 2], np.float32), "wg": np.ones((6, 2, 1, 1), np.float32)}
    m = make_model([node], {"x": [1, 6, 4, 4]}, ["y"], {k: v for k, v in inits.items() if k in node.input})
    plan = plan_from_ranges(m, constraints=TFLITE, ranges={"x": (0, 1), "y": (0, 1)})
    with pytest.raises(UnsupportedOpError) as exc:
        write_tflite(m, plan)
    msg = str(exc.value)
    assert node.op_type in msg and (node.name in msg) and what in msg and "--split smart" in msg


# -- artifact structure --------------------------------------------------------------------------------
def _tensors(buffer: bytes) -> dict[str, dict]:
    """Name -> {type, shape, scale, zero_point, qdim} of every tensor in a flatbuffer."""
    sg = tflite.Model.GetRootAsModel(buffer, 0).Subgraphs(0)
    types = {v: k.lower() for k, v in vars(tflite.TensorType).items() if not k.startswith("_")}
    out = {}
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        q = t.Quantization()
        out[t.Name().decode()] = {
            "type": types[t.Type()], "shape": tuple(t.ShapeAsNumpy().tolist()),
            "scale": q.ScaleAsNumpy() if q is not None and q.ScaleLength() else None,
            "zero_point": q.ZeroPointAsNumpy() if q is not None and q.ZeroPointLength() else None,
            "qdim": q.QuantizedDimension() if q is not None else None,
        }
    return out


def test_weights_per_channel_and_bias_scales():
    nodes = [conv("x", "a", "w", k=1, p=0, b="w_b"), conv("a", "y", "dw", k=3, b="dw_b", group=8)]
    inits = {**weights(8, 3, 1), "dw": conv_weights(RNG, 8, 1, 3), "dw_b": np.ones(8, np.float32)}
    m = make_model(nodes, X, ["y"], inits)
    plan, res, _ = convert(m)
    t = _tensors(res.buffer)
    x_scale = float(t["x/int8"]["scale"][0])
    assert t["x/int8"]["zero_point"][0] == -128 and x_scale == pytest.approx(1 / 255)
    assert t["w"]["type"] == "int8" and t["w"]["shape"] == (8, 1, 1, 3) and t["w"]["qdim"] == 0
    assert t["dw"]["shape"] == (1, 3, 3, 8) and t["dw"]["qdim"] == 3
    assert np.array_equal(t["w"]["scale"], plan.weights["w"].scale)
    for w, b, s_in in (("w", "w_b", x_scale), ("dw", "dw_b", float(plan.activations["a"].scale[0]))):
        assert t[b]["type"] == "int32" and not t[b]["zero_point"].any()
        assert np.allclose(t[b]["scale"], s_in * t[w]["scale"], rtol=1e-6)
        assert not t[w]["zero_point"].any() and np.abs(t[w]["scale"] - plan.weights[w].scale).max() == 0


def test_reshape_family_ops():
    nodes = [conv("x", "a", "w", b="w_b"), N("Flatten", ["a"], ["f"], axis=2), N("Unsqueeze", ["f", "ax"], ["u"]),
             N("Squeeze", ["u", "ax"], ["s"]), N("Identity", ["s"], ["y"])]
    inits = {**weights(4, 3, 3), "ax": np.array([1], np.int64)}
    _, res, _ = check(make_model(nodes, X, ["y"], inits), n_ops={"RESHAPE": 4})
    assert res.outputs[0].shape == (4, 320)


def _raw_model(op: int, version: int, dtype: str, in_params: list[tuple[float, int]], out_params: tuple[float, int],
               out_shape: tuple[int, ...], options=None) -> bytes:
    from edgeq.export.tflite.flatbuf import TFLModel, TFLOperator, TFLTensor, serialize
    from edgeq.quant.plan import QParams

    m = TFLModel()
    ins = [m.add_tensor(TFLTensor(f"in{i}", (1, 2, 2, 3), dtype, QParams(s, z, dtype)))
           for i, (s, z) in enumerate(in_params)]
    out = m.add_tensor(TFLTensor("out", out_shape, dtype, QParams(*out_params, dtype)))
    m.operators.append(TFLOperator(op, version, ins, [out], options))
    m.inputs, m.outputs = ins, [out]
    return serialize(m)


def _prepares(buffer: bytes) -> bool:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:
        Interpreter(model_content=buffer,
                    experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES).allocate_tensors()
    except RuntimeError:
        return False
    return True


def test_litert_kernel_contracts_the_constraints_encode():
    """What LiteRT's kernels reject: the reason for the constraint registry's entries."""
    from edgeq.export.tflite import options as opt

    op = tflite.BuiltinOperator
    cat = (op.CONCATENATION, 2, "int8")
    shape6 = (1, 2, 2, 6)
    assert _prepares(_raw_model(*cat, [(0.1, 3), (0.1, 3)], (0.1, 3), shape6, opt.concatenation(3)))
    assert not _prepares(_raw_model(*cat, [(0.1, 3), (0.2, 3)], (0.2, 3), shape6, opt.concatenation(3)))
    assert not _prepares(_raw_model(*cat, [(0.1, 3), (0.1, 0)], (0.1, 3), shape6, opt.concatenation(3)))
    for code, options in ((op.LOGISTIC, None), (op.SOFTMAX, opt.softmax())):
        shape = (1, 2, 2, 3)
        assert _prepares(_raw_model(code, 2, "int8", [(0.05, 0)], (1 / 256, -128), shape, options))
        assert not _prepares(_raw_model(code, 2, "int8", [(0.05, 0)], (1 / 512, -128), shape, options))
        assert _prepares(_raw_model(code, 3, "int16", [(0.05, 0)], (1 / 32768, 0), shape, options))
        assert not _prepares(_raw_model(code, 3, "int16", [(0.05, 0)], (1 / 65536, 0), shape, options))


# -- whole real models (the monolithic INT8 head: the known-bad baseline; correctness, not accuracy) --
def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture(scope="module")
def letterboxed(calib_dir) -> list[np.ndarray]:
    """Four letterboxed 640x640 RGB calibration images (uint8 HWC)."""
    from edgeq.calib.preprocess import letterbox, read_image

    paths = sorted((calib_dir / "images").glob("*.jpg"))[:4]
    return [letterbox(read_image(p), (640, 640))[0] for p in paths]


_CALIB: dict = {}


def _calibrate(path, model: onnx.ModelProto, images: list[np.ndarray]):
    """Ranges over ``images`` and the float run of image 0, kept per model so the int8 and int16
    tests share them (only one ~250 MB run is kept, not one per image)."""
    from _writer_helpers import ranges_from, update_ranges

    from edgeq.calib.preprocess import to_nchw_float

    if path not in _CALIB:
        first = run_onnx(model, {"images": to_nchw_float(images[0])})
        ranges = ranges_from([first])
        for img in images[1:]:
            update_ranges(ranges, run_onnx(model, {"images": to_nchw_float(img)}))
        _CALIB[path] = (ranges, first)
    return _CALIB[path]


def convert_real(path, images, int16: bool = False):
    """Calibrate on ``images`` with onnxruntime, plan, write, run image 0 in LiteRT, check every
    tensor locally; with ``int16`` every activation is int16 (16x8)."""
    from edgeq.graph.view import GraphView

    model = onnx.load(path)
    ranges, first = _calibrate(path, model, images)
    names = set(GraphView(model).activations()) - {"images"} if int16 else set()
    plan = plan_from_ranges(model, constraints=TFLITE, ranges=ranges, int16=names)
    result = write_tflite(model, plan, description=path.stem)
    assert_fully_integer(result)
    lite = run_tflite(result, images[0].transpose(2, 0, 1)[None])
    errors = local_errors(model, plan, lite)
    assert len(errors) > 0.9 * len(plan.activations)
    bad = over_tolerance(model, plan, errors)
    assert not bad, f"tensors off by more than their allowed steps: {bad}"
    for out in result.outputs:
        p = plan.activations[out.name]
        assert (out.scale, out.zero_point) == (float(p.scale[0]), int(p.zero_point[0]))
    return plan, result, lite, first


@pytest.mark.slow
def test_real_yolov8n_whole_graph(yolov8n_onnx, letterboxed):
    plan, res, lite, ref = convert_real(yolov8n_onnx, letterboxed)
    assert res.inputs[0].shape == (1, 640, 640, 3) and res.inputs[0].dtype == "uint8"
    assert [(o.name, o.shape, o.dtype) for o in res.outputs] == [("output0", (1, 84, 8400), "int8")]
    out, want = lite.values["output0"], ref["output0"]
    assert _corr(out[:, :4], want[:, :4]) > 0.99  # boxes, pixels
    # output0 shares one int8 scale between 0..640 px boxes and 0..1 scores, so the scores are
    # checked where they are still representable: the Sigmoid feeding the final Concat.
    scores = "/model.22/Sigmoid_output_0"
    assert _corr(lite.values[scores], ref[scores]) > 0.9
    counts = op_counts(res.buffer)
    assert counts["SOFTMAX"] == 1 and counts["CONV_2D"] == 64 and counts["PAD"] == 7


@pytest.mark.slow
def test_real_yolov8n_seg_whole_graph(yolov8n_seg_onnx, letterboxed):
    plan, res, lite, ref = convert_real(yolov8n_seg_onnx, letterboxed)
    assert [(o.name, o.shape) for o in res.outputs] == [("output0", (1, 116, 8400)), ("output1", (1, 160, 160, 32))]
    assert _corr(lite.values["output0"][:, :4], ref["output0"][:, :4]) > 0.99
    assert _corr(lite.values["output1"], ref["output1"]) > 0.9  # protos, via TRANSPOSE_CONV
    assert _corr(lite.values["/model.22/Sigmoid_output_0"], ref["/model.22/Sigmoid_output_0"]) > 0.9
    assert op_counts(res.buffer)["TRANSPOSE_CONV"] == 1


@pytest.mark.slow
def test_real_yolov5n_whole_graph(letterboxed):
    from conftest import shared_path

    plan, res, lite, ref = convert_real(shared_path("models", "yolov5n.onnx"), letterboxed)
    assert [(o.name, o.shape) for o in res.outputs] == [("output0", (1, 25200, 85))]
    assert _corr(lite.values["output0"][..., :4], ref["output0"][..., :4]) > 0.99
    probs = [f"/model.24/Sigmoid{s}_output_0" for s in ("", "_1", "_2")]  # obj and class, 3 scales
    assert _corr(np.concatenate([lite.values[p].ravel() for p in probs]),
                 np.concatenate([ref[p].ravel() for p in probs])) > 0.9


@pytest.mark.slow
def test_real_yolov8n_whole_graph_int16(yolov8n_onnx, letterboxed):
    """16x8 everywhere: ConvTranspose-free det graph incl. Softmax/Transpose/Split in int16."""
    plan, res, lite, ref = convert_real(yolov8n_onnx, letterboxed, int16=True)
    assert res.outputs[0].dtype == "int16" and res.outputs[0].zero_point == 0
    out, want = lite.values["output0"], ref["output0"]
    assert _corr(out[:, :4], want[:, :4]) > 0.999
    assert _corr(out[:, 4:], want[:, 4:]) > 0.99  # int16 output0 keeps the scores representable
