"""The cut graph computes exactly the endpoint tensors of the original graph, without the tail."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import shared_path
from edgeq.graph.session import expose_all
from edgeq.graph.cut import cut_at_head
from edgeq.families import discover_head
from edgeq.graph.load import load_model
from edgeq.graph.passes.normalize_boxes import normalize_boxes


def _run(model: onnx.ModelProto, x: np.ndarray, names: list[str] | None = None) -> dict[str, np.ndarray]:
    m = expose_all(model, names) if names else model
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = names or [o.name for o in s.get_outputs()]
    return dict(zip(outs, s.run(outs, {"images": x})))


@pytest.mark.parametrize("name", ["yolov8n.onnx", "yolov8n-seg.onnx"])
def test_cut_outputs_equal_original_endpoints(name):
    m = load_model(shared_path("models", name))
    head = discover_head(m.model, m.info)
    cut = cut_at_head(m.model, head)
    onnx.checker.check_model(cut)
    ops = {n.op_type for n in cut.graph.node}
    assert "Softmax" not in ops and "Reshape" not in ops, "decode tail must be dropped"
    x = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
    ref = _run(m.model, x, [e.tensor for e in head.endpoints])
    got = _run(cut, x)
    for e in head.endpoints:
        np.testing.assert_array_equal(got[e.name], ref[e.tensor])


def test_yolov5_split_convs_reproduce_the_detect_conv():
    """boxes_i / objectness_i / scores_i are their own convs: the original conv's channel rows."""
    m = load_model(shared_path("models", "yolov5n.onnx"))
    head = discover_head(m.model, m.info)
    cut = cut_at_head(m.model, head)
    onnx.checker.check_model(cut)
    assert [o.name for o in cut.graph.output] == [e.name for e in head.endpoints] and len(head.endpoints) == 9
    ops = {n.op_type for n in cut.graph.node}
    assert "Reshape" not in ops and "Pow" not in ops, "decode tail must be dropped"
    producers = {o: n for n in cut.graph.node for o in n.output}
    assert all(producers[e.name].op_type == "Conv" for e in head.endpoints)
    x = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
    tensors = sorted({e.tensor for e in head.endpoints})
    ref = _run(m.model, x, tensors)
    got = _run(cut, x)
    for e in head.endpoints:
        want = ref[e.tensor][:, list(e.channels)]
        assert got[e.name].shape == want.shape == e.shape
        np.testing.assert_allclose(got[e.name], want, rtol=1e-5, atol=1e-5)
    # together the three parts are the whole conv output, each channel exactly once
    for t in tensors:
        chans = sorted(c for e in head.endpoints if e.tensor == t for c in e.channels)
        assert chans == list(range(ref[t].shape[1]))


def test_normalize_boxes_divides_by_input_size():
    m = load_model(shared_path("models", "yolov8n.onnx"))
    x = np.random.default_rng(1).random((1, 3, 640, 640), dtype=np.float32)
    before = _run(m.model, x)["output0"]
    assert normalize_boxes(m.model, m.info.imgsz)
    after = _run(m.model, x)["output0"]
    np.testing.assert_allclose(after[:, :4], before[:, :4] / 640, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(after[:, 4:], before[:, 4:])
