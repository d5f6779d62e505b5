"""YOLO26 (reg_max 1, ltrb boxes): discovery of both export forms, metadata, the end-to-end top-k
decode against the model's own output, the float ONNX [1, 300, 6] path and one small conversion."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import shared_path
from edgeq.calib.preprocess import letterbox, read_image, to_nchw_float
from edgeq.decode.fields import Candidates
from edgeq.families import FAMILIES, discover_head, family_for
from edgeq.families.yolo26 import RowsHead, TopKHead, YOLO26Head, topk_select
from edgeq.families.yolov8 import PerScaleHead
from edgeq.graph.load import load_model
from edgeq.meta.read import read_meta
from edgeq.meta.schema import ModelMeta
from edgeq.runtime.decoder import Decoder

FIXTURES = ("fixtures", "ultralytics")
IMAGES = ("000000000139.jpg", "000000006818.jpg", "000000017627.jpg")


@pytest.fixture(scope="module")
def e2e_path() -> Path:
    return shared_path("models", "yolo26n.onnx")


@pytest.fixture(scope="module")
def e2e_prep(e2e_path: Path):
    from edgeq.prepare import prepare

    return prepare(e2e_path)


def _tensors(head, dtype: str = "float32", layout: str = "nchw") -> list[SimpleNamespace]:
    out = []
    for e in head.endpoints:
        shape = e.shape if layout == "nchw" else (e.shape[0], e.shape[2], e.shape[3], e.shape[1])
        out.append(SimpleNamespace(name=e.name, shape=tuple(shape), dtype=dtype, scale=0.05, zero_point=-3))
    return out


# ----------------------------------------------------------------------------- discovery


@pytest.mark.parametrize("parts,task,end2end,kinds", [
    (("models", "yolo26n.onnx"), "detect", True, {"boxes": 3, "scores": 3}),
    ((*FIXTURES, "yolo26n-u8.4.190.onnx"), "detect", False, {"boxes": 3, "scores": 3}),
    ((*FIXTURES, "yolo26n-seg-u8.4.190.onnx"), "segment", False, {"boxes": 3, "scores": 3, "mask_coefs": 3, "protos": 1}),
])
def test_discovery_finds_both_forms_and_no_other_family_claims_them(parts, task, end2end, kinds):
    m = load_model(shared_path(*parts))
    head = discover_head(m.model, m.info)
    assert head.family == "yolo26" and isinstance(head, YOLO26Head)
    assert (head.task, head.nc, head.reg_max, head.strides, head.end2end, head.topk) == (task, 80, 1, (8, 16, 32), end2end, 300)
    assert {k: len(head.of_kind(k)) for k in kinds} == kinds
    assert all(e.shape[1] == 4 for e in head.of_kind("boxes"))
    if task == "segment":
        assert head.nm == 32 and head.of_kind("protos")[0].shape == (1, 32, 160, 160)
    others = [f for f in FAMILIES.values() if f.name != "yolo26"]
    assert all(f.discover(m.model, m.info) is None for f in others)


def test_the_cut_keeps_the_one_to_one_head_that_feeds_the_top_k(e2e_prep):
    graph = e2e_prep.graph.graph
    assert [o.name for o in graph.output] == [e.name for e in e2e_prep.head.endpoints]
    ops = {n.op_type for n in graph.node}
    assert not ops & {"TopK", "GatherElements", "ReduceMax", "Mod"}  # the top-k runs on the CPU
    # the endpoints are the one-to-one branch's last convs (what the in-graph TopK consumed)
    producers = {o for n in graph.node for o in n.output}
    assert all(e.name in producers for e in e2e_prep.head.endpoints)


# ----------------------------------------------------------------------------- metadata


def test_metadata_round_trip_and_decoder_choice():
    m = load_model(shared_path(*FIXTURES, "yolo26n-seg-u8.4.190.onnx"))
    head = discover_head(m.model, m.info)
    family = FAMILIES["yolo26"]
    outputs = family.outputs(head, _tensors(head, "int8", "nhwc"), "nhwc")
    meta = ModelMeta("yolo26", "segment", m.info.names, [1, 640, 640, 3], "nhwc", outputs, nms=family.nms)
    back = ModelMeta.from_json(meta.to_json())
    assert back.to_json() == meta.to_json()
    boxes = back.output("boxes")
    assert boxes.encoding == "ltrb" and [c.shape for c in boxes.children] == [[1, 80, 80, 4], [1, 40, 40, 4], [1, 20, 20, 4]]
    assert back.output("scores").activation_required == "sigmoid"
    assert [o.type for o in back.outputs] == ["boxes", "scores", "mask_coefs", "protos"]
    assert family_for(back) is family
    assert type(family.decoder(back, {})) is TopKHead  # decoder_version yolo26: end-to-end
    back.raw.setdefault("model", {})["end2end"] = False  # as EdgeFirst/HAL read it: NMS
    assert type(family.decoder(back, {})) is PerScaleHead
    back.decoder_version = "yolov8"
    assert family_for(back).name == "yolov8"  # an ltrb head of another decoder_version stays yolov8's


def test_plain_onnx_end_to_end_output_is_described_and_decoded(e2e_path: Path):
    meta = read_meta(e2e_path)
    det = meta.output("detections")
    assert meta.decoder_version == "yolo26" and det.shape == [1, 300, 6] and det.normalized is False
    assert meta.raw["validation"]["nms"] == "none" and meta.raw["model"]["end2end"] is True
    assert type(Decoder(meta).head) is RowsHead
    # the [1, 84, 8400] form (one-to-many head) stays a flat NMS head
    flat = read_meta(shared_path(*FIXTURES, "yolo26n-u8.4.190.onnx"))
    assert flat.decoder_version == "yolov8" and flat.output("detection") is not None


# ----------------------------------------------------------------------------- decoding


def test_topk_select_is_the_graphs_two_stage_top_k():
    # anchor 0 has two classes, anchors 1..3 one each; k=2 keeps anchors 0 and 2 (best 0.9, 0.8)
    cand = Candidates(np.zeros((5, 4), np.float32), np.array([0.9, 0.7, 0.5, 0.8, 0.3], np.float32),
                      np.array([1, 2, 0, 0, 0]), np.array([0, 0, 1, 2, 3]))
    np.testing.assert_array_equal(topk_select(cand, 2, 300), [0, 3])  # pairs (0,c1) 0.9, (2,c0) 0.8
    np.testing.assert_array_equal(topk_select(cand, 3, 300), [0, 3, 1])  # anchor 0's 2nd class beats anchor 1
    np.testing.assert_array_equal(topk_select(cand, 300, 2), [0, 3])  # max_det
    assert topk_select(cand.take(np.zeros(0, np.int64)), 300, 300).size == 0


def test_decoding_the_cut_endpoints_reproduces_the_models_own_output(e2e_path: Path, e2e_prep, val_dev: Path):
    import onnxruntime as ort

    cut = ort.InferenceSession(e2e_prep.graph.SerializeToString(), providers=["CPUExecutionProvider"])
    full = ort.InferenceSession(str(e2e_path), providers=["CPUExecutionProvider"])
    family = FAMILIES["yolo26"]
    outputs = family.outputs(e2e_prep.head, _tensors(e2e_prep.head), "nchw")
    scale_meta = ModelMeta("yolo26", "detect", e2e_prep.loaded.info.names, [1, 3, 640, 640], "nchw", outputs,
                           input_dtype="float32")
    rows_meta = read_meta(e2e_path)
    for image in IMAGES:
        x = to_nchw_float(letterbox(read_image(val_dev / "images" / image), (640, 640))[0])
        a = dict(zip([o.name for o in cut.get_outputs()], cut.run(None, {cut.get_inputs()[0].name: x})))
        b = {full.get_outputs()[0].name: full.run(None, {full.get_inputs()[0].name: x})[0]}
        for conf in (0.25, 0.05):
            got = Decoder(scale_meta).decode(a, conf=conf)
            ref = Decoder(rows_meta).decode(b, conf=conf)
            assert len(ref.scores) >= 1 and len(got.scores) == len(ref.scores), (image, conf)
            np.testing.assert_array_equal(got.class_ids, ref.class_ids)
            np.testing.assert_allclose(got.scores, ref.scores, atol=1e-5)
            np.testing.assert_allclose(got.boxes, ref.boxes, atol=0.05)


def test_float_onnx_predicts(e2e_path: Path, val_dev: Path):
    from edgeq.runtime import load

    dets = load(e2e_path).predict(read_image(val_dev / "images" / IMAGES[0]), conf=0.25)
    assert 5 <= len(dets.scores) <= 300 and np.all(np.diff(dets.scores) <= 0)


# ----------------------------------------------------------------------------- conversion


def test_small_conversion_loads_and_predicts(e2e_path: Path, val_dev: Path, tmp_path: Path):
    from edgeq.config import ConvertConfig
    from edgeq.pipeline import convert
    from edgeq.runtime import load

    out = tmp_path / "yolo26n.tflite"
    res = convert(e2e_path, shared_path("coco-calib"), out, ConvertConfig(calib_count=8, on_collapse="warn"), progress=False)
    meta = read_meta(out)
    assert meta.decoder_version == "yolo26" and meta.output("boxes").encoding == "ltrb"
    assert res.head.end2end and [c.shape for c in meta.output("scores").children][0] == [1, 80, 80, 80]
    model = load(out)
    assert type(model.decoder.head) is TopKHead
    dets = model.predict(read_image(val_dev / "images" / IMAGES[0]), conf=0.25)
    assert len(dets.scores) >= 1
