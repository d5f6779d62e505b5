"""Per-op profile parsing on real profiler output (onnxruntime trace, LiteRT C-API events)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.errors import EdgeqError
from edgeq.perf.latency import Stats, synthetic_image
from edgeq.perf.profile import parse_ort_trace, profile_onnx, profile_tflite


def _tiny_conv_model(path: Path) -> Path:
    """Conv -> Relu -> Conv -> Sigmoid on a 1x3x64x64 input: a small, fast, real graph."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(4, 8, 1, 1)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
        helper.make_node("Sigmoid", ["c2"], ["y"], name="sig"),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 64, 64])], [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def _trace(model: Path, tmp_path: Path, runs: int) -> Path:
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp_path / "trace")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every node
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    x = np.ones((1, 3, 64, 64), np.float32)
    for _ in range(runs):
        sess.run(None, {"x": x})
    return Path(sess.end_profiling())


def test_parse_ort_trace_real(tmp_path: Path) -> None:
    trace = _trace(_tiny_conv_model(tmp_path / "tiny.onnx"), tmp_path, runs=5)
    by_type, by_node, op_ms, run_ms, n = parse_ort_trace(trace, skip_runs=2)
    assert n == 3
    assert {s.op_type for s in by_type} == {"Conv", "Relu", "Sigmoid"}
    conv = next(s for s in by_type if s.op_type == "Conv")
    assert conv.calls == pytest.approx(2.0)  # two Conv nodes per run
    assert {s.name for s in by_node} == {"conv1", "relu1", "conv2", "sig"}
    assert all(s.calls == pytest.approx(1.0) for s in by_node)
    assert sum(s.share for s in by_type) == pytest.approx(1.0)
    assert by_type == sorted(by_type, key=lambda s: -s.ms)
    assert run_ms is not None and run_ms >= op_ms > 0
    # The same trace, parsed from its events instead of the file, skipping nothing.
    events = json.loads(trace.read_text())
    assert parse_ort_trace(events)[4] == 5


def test_parse_ort_trace_without_nodes(tmp_path: Path) -> None:
    with pytest.raises(EdgeqError, match="no node events"):
        parse_ort_trace([{"cat": "Session", "name": "model_run", "ts": 0, "dur": 10}])


def test_profile_onnx_tiny(tmp_path: Path) -> None:
    model = _tiny_conv_model(tmp_path / "tiny.onnx")
    prof = profile_onnx(model, np.ones((1, 3, 64, 64), np.float32), runs=3, warmup=1, keep_trace=tmp_path / "kept.json")
    assert prof.backend == "onnxruntime" and prof.runs == 3
    assert prof.by_type and prof.by_node and prof.op_ms > 0
    assert (tmp_path / "kept.json").is_file()
    json.dumps(prof.to_json())  # JSON-ready


def test_profile_tflite_peer(edgefirst_seg_smart: Path) -> None:
    """LiteRT's C-API profiler on EdgeFirst's smart artifact: XNNPACK operators plus builtin ops."""
    prof = profile_tflite(edgefirst_seg_smart, runs=2, warmup=1, threads=1)
    assert prof.backend == "litert-xnnpack" and prof.runs == 2
    types = {s.op_type for s in prof.by_type}
    assert any(t.startswith("xnnpack/Convolution") for t in types)
    assert "QUANTIZE" in types  # the uint8 -> int8 input quantize stays a builtin op
    assert prof.run_ms is not None and prof.op_ms <= prof.run_ms * 1.05
    assert prof.op_ms > 0.5 * prof.run_ms  # the events cover the inference, not a sliver of it
    # Every run has the same execution plan: each node appears once per run.
    assert all(s.calls == pytest.approx(1.0) for s in prof.by_node)


def test_profile_tflite_builtin_kernels(edgefirst_seg_smart: Path) -> None:
    """Builtin kernels: one event per TFLite node, named by its output tensor."""
    prof = profile_tflite(edgefirst_seg_smart, runs=1, warmup=0, threads=2, kernels="builtin")
    conv = next(s for s in prof.by_type if s.op_type == "CONV_2D")
    assert conv.calls == pytest.approx(75.0)
    assert all("[node " in s.name for s in prof.by_node)


def test_stats_and_synthetic_image() -> None:
    s = Stats.of([1.0, 2.0, 3.0, 4.0, 10.0])
    assert (s.n, s.median, s.mean, s.min, s.max) == (5, 3.0, 4.0, 1.0, 10.0)
    assert s.p90 == pytest.approx(7.6)
    a, b = synthetic_image(), synthetic_image()
    assert a.shape == (480, 640, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    with pytest.raises(EdgeqError):
        Stats.of([])
