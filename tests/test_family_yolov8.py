"""The yolov8 family (YOLOv8, YOLO11 detect/segment) on every Ultralytics export layout.

The fixtures (``shared/data/fixtures/ultralytics``) are real exports of two Ultralytics versions
with random weights: 8.3.172 (torch dynamo exporter: no ``/model.N/`` node names; one box+class
Concat per level) and 8.4.190 (TorchScript exporter; the box and class branches reshaped and
concatenated separately). Discovery types each endpoint by where its values flow, so both
layouts give the same head; the cut graph decodes to the float model's own decoded output.

Their random weights let the signal die out in the backbone (activations ~1e-10 by layer 10), so
every box / score output is its Detect bias (Ultralytics' bias init: box 1.0 or 2.0, class
log(5 / nc / (640 / stride)^2)) whatever the image: enough to check discovery, decode and that
INT8 reproduces the float outputs, never accuracy. The collapse guard rightly calls such constant
outputs collapsed (zero steps of spread), hence ``on_collapse="warn"`` below.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import pytest
from conftest import shared_path

import edgeq
from edgeq.calib.preprocess import letterbox, read_image, to_nchw_float
from edgeq.config import ConvertConfig
from edgeq.families.yolov8 import PerScaleHead, YOLOv8
from edgeq.graph.topology import Topology
from edgeq.meta.build import build_meta
from edgeq.meta.schema import ModelMeta
from edgeq.pipeline import convert
from edgeq.prepare import Prepared, prepare
from edgeq.quant.observe import sqnr_db

FIXTURES = [f"{model}-{version}" for model in ("yolov8n", "yolov8n-seg", "yolo11n", "yolo11n-seg")
            for version in ("u8.3.172", "u8.4.190")]


def fixture(name: str):
    return shared_path("fixtures", "ultralytics", f"{name}.onnx")


@functools.cache
def prepared(name: str) -> Prepared:
    """Loaded, normalized, discovered and cut once per fixture for the whole module."""
    return prepare(fixture(name))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return read_image(next(iter(sorted((shared_path("coco-val-dev") / "images").glob("*.jpg")))))


@pytest.mark.parametrize("name", FIXTURES)
def test_discovery_on_every_export_layout(name):
    prep = prepared(name)
    head = prep.head
    seg = "-seg" in name
    assert head.family == "yolov8" and head.task == ("segment" if seg else "detect")
    assert head.nc == 80 and head.reg_max == 16 and head.strides == (8, 16, 32)
    kinds = ("boxes", "scores", "mask_coefs") if seg else ("boxes", "scores")
    assert [e.name for e in head.endpoints if e.kind != "protos"] == [f"{k}_{i}" for k in kinds for i in range(3)]
    widths = {"boxes": 64, "scores": 80, "mask_coefs": 32}
    for e in head.endpoints:
        if e.kind == "protos":
            assert e.shape == (1, 32, 160, 160) and e.stride == 4
            continue
        assert e.shape == (1, widths[e.kind], 640 // e.stride, 640 // e.stride)
        assert e.stride == (8, 16, 32)[e.scale_index]
    assert head.nm == (32 if seg else 0)
    # every endpoint is a head Conv's own output (no Concat / Reshape of the tail in the cut)
    topo = Topology.of(prep.loaded.model)
    assert all(topo.producer[e.tensor].op_type == "Conv" for e in head.endpoints if e.kind != "protos")


@dataclass
class _T:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    scale: float = 0.0
    zero_point: int = 0


def _float_decoded(path, x: np.ndarray, seg: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Per anchor: xyxy boxes, best class probability, mask coefficients of the whole float model."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0][0].T  # (8400, 4 + 80 (+ 32))
    xy, wh = out[:, :2], out[:, 2:4]
    coefs = out[:, 84:] if seg else None
    return np.concatenate([xy - wh / 2, xy + wh / 2], 1), out[:, 4:84].max(1), coefs


@pytest.mark.parametrize("name", ["yolov8n-seg-u8.3.172", "yolo11n-seg-u8.4.190"])
def test_cut_graph_decode_reproduces_the_float_models_decoded_output(name, image):
    """The cut graph's endpoints through PerScaleHead give the float export's own decode, anchor
    by anchor (DFL, strides, anchor order, mask coefficients)."""
    path = fixture(name)
    prep = prepared(name)
    rgb, _ = letterbox(image, (640, 640))
    x = to_nchw_float(rgb)
    boxes, scores, coefs = _float_decoded(path, x, seg=True)
    sess = ort.InferenceSession(prep.graph.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x})))
    tensors = [_T(e.name, e.shape) for e in prep.head.endpoints]
    m = build_meta(prep.loaded.info, YOLOv8().outputs(prep.head, tensors, "nchw"), _T("images", (1, 640, 640, 3)),
                   {}, name="cut", decoder_version="yolov8")
    head = PerScaleHead(ModelMeta.from_json(m.to_json()), {})
    cand = head.candidates(outs, 0.0, False)
    order = np.argsort(cand.rows)
    np.testing.assert_array_equal(cand.rows[order], np.arange(8400))
    np.testing.assert_allclose(cand.boxes[order], boxes, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(cand.scores[order], scores, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(head.coefs(outs, cand.rows[order]), coefs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["yolov8n-seg-u8.4.190", "yolo11n-u8.3.172"])
def test_small_conversion_outputs_and_decode(name, image, tmp_path):
    """8.4 layout (segment) and YOLO11 (C2PSA attention: BATCH_MATMUL) convert end to end; the
    artifact's outputs decode to the float model's boxes and scores."""
    path = fixture(name)
    seg = "-seg" in name
    config = ConvertConfig(on_collapse="warn", calib_count=8, weight_rounding="nearest")
    res = convert(path, shared_path("coco-calib"), tmp_path / "m.tflite", config, progress=False)
    kinds = ["boxes", "scores", "mask_coefs", "protos"] if seg else ["boxes", "scores"]
    assert [o.name for o in res.meta.outputs] == kinds
    for o in res.meta.outputs[: len(kinds) - seg]:
        assert [c.stride for c in o.children] in ([8, 16, 32], [[8, 8], [16, 16], [32, 32]])
    assert res.meta.output("boxes").encoding == "dfl"

    model = edgeq.load(res.path)
    x, _ = model.preprocess(image)
    raw = model.run(x)
    nchw = x.transpose(0, 3, 1, 2).astype(np.float32) / 255
    boxes, _, _ = _float_decoded(path, nchw, seg)
    # INT8 reproduces the float endpoints within the plan's ranges (SQNR > 30 dB; the constant ones exact,
    # where a saturated bias or a wrong layout gives ~0 dB; protos 37.6 dB)
    sess = ort.InferenceSession(res.graph.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: nchw})))
    for out in model.meta.outputs:
        for p in out.physical:
            t = model.backend.outputs[model.binding[p.name]]
            scale, zp = float(t.quant.scale), int(t.quant.zero_point)
            v = (raw[p.name].astype(np.float32) - zp) * scale
            v = v.transpose(0, 3, 1, 2) if v.ndim == 4 else v
            lo, hi = res.plan.activations[p.name].real_range()  # score logits are floored by the plan
            assert sqnr_db(np.clip(ref[p.name], lo[0], hi[0]), v) > 30, p.name
    # Every score sits at the bottom of its range (a constant), which no threshold passes: decode
    # the artifact's own box codes for every anchor by lifting the score codes to the top.
    lifted = {k: (np.full_like(v, 127) if k.startswith("scores") else v) for k, v in raw.items()}
    cand = model.decoder.head.candidates(lifted, 0.4, False)  # the top code: logit 0, p = 0.5
    order = np.argsort(cand.rows)
    assert np.array_equal(cand.rows[order], np.arange(8400))
    np.testing.assert_allclose(cand.boxes[order], boxes, atol=1.0)  # pixels
    dets = model.predict(image)
    assert len(dets.scores) == 0  # sigmoid(-8.75) at best: nothing over the default 0.25
    if seg:
        assert dets.masks is not None and dets.masks.shape[0] == 0
