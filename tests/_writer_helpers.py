"""Test helpers for the TFLite writer: tiny ONNX graphs, onnxruntime ranges, LiteRT runs, checks."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgeq.export.tflite import TFLiteResult, write_tflite
from edgeq.graph.view import GraphView
from edgeq.export.tflite.constraints import TFLITE
from edgeq.quant.build import plan_from_ranges
from edgeq.quant.constraints import constant_params
from edgeq.quant.plan import QuantPlan

INT_TYPES = {np.int8, np.uint8, np.int16, np.int32, np.int64}


# -- building graphs ---------------------------------------------------------------------------
def make_model(nodes: list[onnx.NodeProto], inputs: dict[str, Sequence[int]], outputs: Sequence[str],
               inits: dict[str, np.ndarray] | None = None, opset: int = 17) -> onnx.ModelProto:
    """A float32 model from nodes; output shapes come from shape inference."""
    graph = helper.make_graph(
        nodes, "t",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    return model


def conv_weights(rng: np.random.Generator, c_out: int, c_in: int, k: int) -> np.ndarray:
    """He-scaled random conv weights (keeps activation magnitudes stable along a chain)."""
    return (rng.standard_normal((c_out, c_in, k, k)) * np.sqrt(2.0 / (c_in * k * k))).astype(np.float32)


# -- running onnxruntime -----------------------------------------------------------------------
def expose_all(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose graph outputs are the original outputs plus every float node output."""
    g = GraphView(model)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    for name in g.activations():
        if name not in present and name not in g.inputs:
            m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
            present.add(name)
    return m


def run_onnx(model: onnx.ModelProto, feeds: dict[str, np.ndarray], all_tensors: bool = True) -> dict[str, np.ndarray]:
    """Run with onnxruntime; with ``all_tensors`` every float intermediate is returned too."""
    m = expose_all(model) if all_tensors else model
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(names, feeds)))
    out.update(feeds)
    return out


def update_ranges(ranges: dict[str, tuple[float, float]], run: dict[str, np.ndarray]) -> None:
    """Widen ``ranges`` in place to cover every tensor of one run."""
    for k, v in run.items():
        lo, hi = float(v.min()), float(v.max())
        if k in ranges:
            lo, hi = min(lo, ranges[k][0]), max(hi, ranges[k][1])
        ranges[k] = (lo, hi)


def ranges_from(runs: Iterable[dict[str, np.ndarray]]) -> dict[str, tuple[float, float]]:
    """Min/max of every tensor over several runs."""
    ranges: dict[str, tuple[float, float]] = {}
    for run in runs:
        update_ranges(ranges, run)
    return ranges


def random_pixels(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    """uint8 NCHW pixels; the float model sees ``pixels / 255``."""
    return rng.integers(0, 256, size=tuple(shape), dtype=np.uint8)


def to_float(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float32) / np.float32(255.0)


# -- running LiteRT ----------------------------------------------------------------------------
@dataclass
class LiteRun:
    """Dequantized LiteRT tensors in ONNX layout, by ONNX name, plus their scales."""

    values: dict[str, np.ndarray]
    scales: dict[str, float]
    raw: dict[str, np.ndarray]


def run_tflite(result: TFLiteResult, pixels_nchw: np.ndarray, preserve_all: bool = True) -> LiteRun:
    """Run the artifact on uint8 NCHW pixels; return every ONNX-named tensor dequantized."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # The builtin reference kernels (no XNNPACK) are where LiteRT checks quantization constraints.
    it = Interpreter(model_content=result.buffer, experimental_preserve_all_tensors=preserve_all,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    (inp,) = it.get_input_details()
    x = pixels_nchw.transpose(0, 2, 3, 1) if pixels_nchw.ndim == 4 else pixels_nchw
    it.set_tensor(inp["index"], np.ascontiguousarray(x))
    it.invoke()
    values, scales, raw = {}, {}, {}
    wanted = result.layouts if preserve_all else {o.name: result.layouts[o.name] for o in result.outputs}
    details = {d["name"]: d for d in it.get_tensor_details()}
    for name, perm in wanted.items():
        d = details.get(name)
        if d is None or not d["quantization_parameters"]["scales"].size:
            continue
        q = it.get_tensor(d["index"])
        s, z = d["quantization_parameters"]["scales"][0], d["quantization_parameters"]["zero_points"][0]
        deq = ((q.astype(np.float64) - z) * s).astype(np.float32)
        values[name] = np.transpose(deq, np.argsort(perm))
        raw[name] = q
        scales[name] = float(s)
    return LiteRun(values, scales, raw)


def tensor_types(buffer: bytes) -> dict[str, str]:
    """Name -> numpy dtype name of every tensor in a TFLite flatbuffer."""
    import tflite

    names = {v: k.lower() for k, v in vars(tflite.TensorType).items() if not k.startswith("_")}
    sg = tflite.Model.GetRootAsModel(buffer, 0).Subgraphs(0)
    return {sg.Tensors(i).Name().decode(): names[sg.Tensors(i).Type()] for i in range(sg.TensorsLength())}


def assert_fully_integer(result: TFLiteResult) -> None:
    """No float tensor anywhere; only the inputs may be uint8."""
    types = tensor_types(result.buffer)
    floats = [n for n, t in types.items() if t.startswith("float")]
    assert not floats, f"float tensors in the artifact: {floats[:5]}"
    inputs = {i.name for i in result.inputs}
    uint8 = [n for n, t in types.items() if t == "uint8" and n not in inputs]
    assert not uint8, f"uint8 tensors besides the input: {uint8[:5]}"
    for o in result.outputs:
        assert o.dtype in ("int8", "int16"), o


# -- building and checking ------------------------------------------------------------------------
def convert(model: onnx.ModelProto, n_calib: int = 4, seed: int = 0, int16: Iterable[str] = ()
            ) -> tuple[QuantPlan, TFLiteResult, list[np.ndarray]]:
    """Calibrate on random pixels, plan and write; returns the calibration pixels too."""
    rng = np.random.default_rng(seed)
    (inp,) = [i for i in model.graph.input]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    pixels = [random_pixels(rng, shape) for _ in range(n_calib)]
    ranges = ranges_from(run_onnx(model, {inp.name: to_float(p)}) for p in pixels)
    plan = plan_from_ranges(model, constraints=TFLITE, ranges=ranges, int16=set(int16))
    return plan, write_tflite(model, plan), pixels


def fake_quant_model(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """The float model with Conv/ConvTranspose weights and elementwise constants replaced by
    their quantized-then-dequantized values, i.e. the float function the artifact approximates."""
    g = GraphView(model)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    replaced: dict[str, np.ndarray] = {}
    for node in g.nodes:
        if node.op_type in ("Conv", "ConvTranspose"):
            w = g.consts[node.input[1]]
            p = plan.weights[node.input[1]]
            replaced[node.input[1]] = p.dequantize(p.quantize(w))
        elif node.op_type in ("Add", "Sub", "Mul", "MatMul"):
            dtype = plan.activations[node.output[0]].dtype
            for i in node.input:
                if g.is_const(i):
                    c = g.consts[i].astype(np.float32)
                    p = constant_params(c, dtype)
                    replaced[i] = p.dequantize(p.quantize(c))
        elif node.op_type == "Div":
            dtype = plan.activations[node.output[0]].dtype
            r = 1.0 / g.consts[node.input[1]].astype(np.float64)
            p = constant_params(r, dtype)
            replaced[node.input[1]] = 1.0 / p.dequantize(p.quantize(r.astype(np.float32)))
    _replace_constants(m, replaced)
    return m


def _replace_constants(m: onnx.ModelProto, values: dict[str, np.ndarray]) -> None:
    kept = [i for i in m.graph.initializer if i.name not in values]
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept)
    m.graph.initializer.extend(numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in values.items())
    nodes = [n for n in m.graph.node if not (n.op_type == "Constant" and n.output[0] in values)]
    del m.graph.node[:]
    m.graph.node.extend(nodes)


def local_errors(model: onnx.ModelProto, plan: QuantPlan, lite: LiteRun) -> dict[str, float]:
    """Per node: rerun the float op (fake-quantized constants) on LiteRT's dequantized inputs and
    return, per output tensor, max |LiteRT - float| in units of that tensor's quantization step.

    This isolates each op's own integer error from error accumulated upstream."""
    fq = fake_quant_model(model, plan)
    g = GraphView(fq)
    errors = {}
    for node in g.nodes:
        acts = [i for i in node.input if i and not g.is_const(i)]
        outs = [o for o in node.output if o]
        if not all(i in lite.values for i in acts) or not all(o in lite.values for o in outs):
            continue
        consts = {i: g.consts[i] for i in node.input if i and g.is_const(i)}
        single = helper.make_graph(
            [node], "n",
            [helper.make_tensor_value_info(i, TensorProto.FLOAT, list(lite.values[i].shape))
             for i in dict.fromkeys(acts)],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
            [numpy_helper.from_array(v, k) for k, v in consts.items()],
        )
        sm = helper.make_model(single, opset_imports=list(fq.opset_import))
        sm.ir_version = fq.ir_version
        sess = ort.InferenceSession(sm.SerializeToString(), providers=["CPUExecutionProvider"])
        expected = sess.run(outs, {i: lite.values[i] for i in dict.fromkeys(acts)})
        for o, e in zip(outs, expected):
            p = plan.activations[o]
            lo, hi = p.real_range()
            # Saturation is the plan's choice, not the kernel's error: compare on the clipped value.
            e = np.clip(e, lo[0], hi[0])
            errors[o] = float(np.abs(lite.values[o] - e).max() / lite.scales[o])
    return errors


def run_xnnpack(result: TFLiteResult, pixels_nchw: np.ndarray) -> tuple[dict[str, np.ndarray], int]:
    """Run the artifact as deployed (LiteRT's default XNNPACK delegate) on uint8 NCHW pixels.

    Returns the raw output codes by name and the number of delegate partitions: each DELEGATE
    node is one XNNPACK subgraph, and CPU kernels run between them for the ops it refused.
    """
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=result.buffer, num_threads=1)
    it.allocate_tensors()
    (inp,) = it.get_input_details()
    it.set_tensor(inp["index"], np.ascontiguousarray(pixels_nchw.transpose(0, 2, 3, 1)))
    it.invoke()
    outputs = {d["name"]: it.get_tensor(d["index"]).copy() for d in it.get_output_details()}
    partitions = sum(op["op_name"] == "DELEGATE" for op in it._get_ops_details())
    return outputs, partitions
