"""The yolox family: discovery, metadata (input convention), decode against the float model,
the bottom-right letterbox, and one small conversion."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import pytest

from conftest import shared_path
from edgeq.calib.preprocess import InputConvention, Pixels, letterbox, read_image, to_nchw_float
from edgeq.families import FAMILIES, discover_head, family_for
from edgeq.families.yolox import YOLOX, GridHead
from edgeq.graph.load import load_model
from edgeq.meta.build import build_meta
from edgeq.meta.read import read_meta
from edgeq.meta.schema import ModelMeta
from edgeq.prepare import prepare


@pytest.fixture(scope="module")
def yolox_onnx():
    return shared_path("models", "yolox_nano.onnx")


@pytest.fixture(scope="module")
def image():
    return read_image(next(iter(sorted((shared_path("coco-val-dev") / "images").glob("*.jpg")))))


@dataclass
class _T:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    scale: float = 0.0
    zero_point: int = 0


def test_discovery_finds_the_three_convs_of_each_level(yolox_onnx):
    m = load_model(yolox_onnx)
    head = discover_head(m.model, m.info)
    assert head.family == "yolox" and head.nc == 80 and head.strides == (8, 16, 32) and head.task == "detect"
    assert [(e.name, e.shape) for e in head.of_kind("boxes")] == [
        ("boxes_0", (1, 4, 52, 52)), ("boxes_1", (1, 4, 26, 26)), ("boxes_2", (1, 4, 13, 13))]
    assert [e.shape[1] for e in head.of_kind("objectness")] == [1, 1, 1]
    assert [e.shape[1] for e in head.of_kind("scores")] == [80, 80, 80]
    convs = {m_.output[0]: m_ for m_ in m.model.graph.node if m_.op_type == "Conv"}
    assert all(e.tensor in convs and not e.channels for e in head.endpoints)  # own convs, pre-sigmoid
    assert head.score_logits() == {f"{k}_{i}" for k in ("objectness", "scores") for i in range(3)}
    assert all(f.discover(m.model, m.info) is None for f in FAMILIES.values() if f.name != "yolox")


def _split_meta(head, convention: InputConvention) -> ModelMeta:
    tensors = [_T(e.name, (1, e.shape[2], e.shape[3], e.shape[1]), "int8", 0.05, -3) for e in head.endpoints]
    m = load_model(shared_path("models", "yolox_nano.onnx"))
    outputs = YOLOX().outputs(head, tensors, "nhwc")
    return build_meta(m.info, outputs, _T("images", (1, 416, 416, 3), "uint8"), {}, name="yolox_nano",
                      decoder_version="yolox", nms=YOLOX.nms, iou=YOLOX.iou, input_convention=convention.to_json())


def test_metadata_round_trip_keeps_the_input_convention(yolox_onnx):
    m = load_model(yolox_onnx)
    head = discover_head(m.model, m.info)
    meta = _split_meta(head, YOLOX.input_convention)
    back = ModelMeta.from_json(meta.to_json())
    assert back.to_json() == meta.to_json()
    assert family_for(back).name == "yolox" and back.decoder_version == "yolox" and back.validation_iou == 0.65
    d = back.to_json()
    assert d["input"]["cameraadaptor"] == "bgr" and "normalization" not in d["validation"]
    assert d["validation"]["preprocessing"] == "letterbox"
    conv = d["edgeq"]["input_convention"]
    assert conv == {"version": 1, "pad": "bottom_right", "pad_value": 114, "channels": "bgr", "pixel_scale": 1.0}
    assert InputConvention.from_json(conv) == YOLOX.input_convention
    assert [o.type for o in back.outputs] == ["boxes", "objectness", "scores"]
    assert back.output("boxes").encoding == "yolox" and back.output("scores").score_format == "obj_x_class"
    assert [c.stride for c in back.output("scores").children] == [8, 16, 32]
    # the default convention: unsigned /255 stays, rgb, centred
    plain = ModelMeta.from_json(_split_meta(head, InputConvention()).to_json()).to_json()
    assert plain["validation"]["normalization"] == "unsigned" and plain["input"]["cameraadaptor"] == "rgb"
    assert InputConvention.from_json(plain["edgeq"]["input_convention"]) == InputConvention()
    assert InputConvention.from_json(None, "bgr") == InputConvention(channels="bgr")
    assert InputConvention.from_json({"version": 2, "pad": "bottom_right"}) == InputConvention()


def _megvii_decode(raw: np.ndarray, conf: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """YOLOX's own decode of the [1, N, 85] export (yolox/models/yolo_head.py decode_outputs)."""
    o = raw[0].astype(np.float64)
    grids, strides = [], []
    for s in (8, 16, 32):
        n = 416 // s
        yv, xv = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        grids.append(np.stack([xv, yv], -1).reshape(-1, 2))
        strides.append(np.full((n * n, 1), s))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    xy, wh = (o[:, :2] + grid) * stride, np.exp(o[:, 2:4]) * stride
    score = o[:, 4:5] * o[:, 5:]
    cls = score.argmax(1)
    best = score[np.arange(len(cls)), cls]
    keep = np.flatnonzero(best > conf)
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1)[keep]
    return keep, boxes, best[keep]


def test_cut_graph_decode_reproduces_the_float_models_decoded_output(yolox_onnx, image):
    conv = YOLOX.input_convention
    pix, lb = conv.pixels(image, (416, 416))
    assert lb.pad_x == 0 and lb.pad_y == 0
    x = to_nchw_float(pix)
    assert x.max() > 1.5  # 0..255, BGR
    raw = ort.InferenceSession(str(yolox_onnx), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    rows, want_boxes, want_scores = _megvii_decode(raw, 0.05)
    assert len(rows) > 0

    prep = prepare(yolox_onnx)
    assert prep.input_convention == conv
    sess = ort.InferenceSession(prep.graph.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(None, {"images": x})))
    tensors = [_T(e.name, e.shape) for e in prep.head.endpoints]
    meta = load_model(yolox_onnx)
    # NCHW children (their dshape says so) of an input whose (H, W) is 416 x 416
    m = build_meta(meta.info, YOLOX().outputs(prep.head, tensors, "nchw"), _T("images", (1, 416, 416, 3)), {},
                   name="cut", decoder_version="yolox")
    cut = GridHead(ModelMeta.from_json(m.to_json()), {}).candidates(outs, 0.05, False)
    order = np.argsort(cut.rows)
    np.testing.assert_array_equal(cut.rows[order], rows)
    np.testing.assert_allclose(cut.boxes[order], want_boxes, rtol=1e-4, atol=2e-3)
    np.testing.assert_allclose(cut.scores[order], want_scores, rtol=1e-4, atol=1e-6)

    # the plain export through its synthesized metadata (flat form, sigmoid already applied)
    flat_meta = read_meta(yolox_onnx)
    assert flat_meta.decoder_version == "yolox" and family_for(flat_meta).name == "yolox"
    flat = GridHead(flat_meta, {}).candidates({flat_meta.outputs[0].name: raw}, 0.05, False)
    np.testing.assert_array_equal(np.sort(flat.rows), rows)
    assert flat_meta.raw["edgeq"]["input_convention"]["pixel_scale"] == 1.0


def test_letterbox_bottom_right_puts_the_image_top_left():
    img = np.full((480, 640, 3), 7, np.uint8)
    img[0, 0] = (0, 0, 255)  # red in BGR
    out, lb = letterbox(img, (416, 416), pad="bottom_right")
    assert out.shape == (416, 416, 3)
    assert (lb.gain, lb.pad_x, lb.pad_y) == (0.65, 0.0, 0.0)
    assert (out[:312] == 7).all(axis=-1)[1:, 1:].all() and (out[312:] == 114).all()  # 480*0.65 = 312 rows
    assert tuple(out[0, 0]) != (7, 7, 7)  # the corner pixel stays at the corner
    centred, lbc = letterbox(img, (416, 416))
    assert lbc.pad_y == 52 and (centred[:52] == 114).all()
    # YOLOX's preproc truncates the resized size: int(333 * 416/500) = 277, not round() = 278
    _, lbt = letterbox(np.zeros((500, 333, 3), np.uint8), (416, 416), pad="bottom_right")
    np.testing.assert_allclose(lbt.to_original(np.array([[0, 0, 277, 416]], np.float32)), [[0, 0, 333, 500]], atol=0.5)
    with pytest.raises(ValueError, match="bottom_right"):
        letterbox(img, (416, 416), pad="top")
    # the pixels a YOLOX model takes: BGR, 0..255 as floats
    bgr = np.empty((480, 640, 3), np.uint8)
    bgr[:] = (10, 20, 250)
    pix, _ = YOLOX.input_convention.pixels(bgr, (416, 416))
    assert isinstance(pix, Pixels) and tuple(pix[5, 5]) == (10, 20, 250)
    assert to_nchw_float(pix)[0, 2, 5, 5] == 250.0 and to_nchw_float(letterbox(bgr, (416, 416))[0])[0, 0, 100, 5] == pytest.approx(250 / 255)


def test_small_conversion_runs_in_litert_and_finds_the_float_models_objects(tmp_path, yolox_onnx, image):
    import edgeq
    from edgeq.config import ConvertConfig
    from edgeq.pipeline import convert

    out = tmp_path / "yolox.tflite"
    res = convert(yolox_onnx, shared_path("coco-calib"), out, ConvertConfig(calib_count=8, on_collapse="warn"),
                  progress=False)
    assert res.head.family == "yolox"
    inp = res.plan.activations["images"]
    assert inp.dtype == "uint8" and float(np.asarray(inp.scale).reshape(-1)[0]) == 1.0  # 0..255 pixels
    model = edgeq.load(out)
    assert model.meta.decoder_version == "yolox" and model.iou == 0.65 and model._bgr
    assert model.input_convention == YOLOX.input_convention
    ref = edgeq.load(yolox_onnx).predict(image, conf=0.3)
    got = model.predict(image, conf=0.2)
    assert len(ref.scores) > 0
    from edgeq.decode.nms import box_iou

    iou = box_iou(ref.boxes, got.boxes) if len(got.scores) else np.zeros((len(ref.scores), 0))
    same = [(iou[i] > 0.5) & (got.class_ids == ref.class_ids[i]) for i in range(len(ref.scores))]
    found = sum(bool(s.any()) for s in same)
    assert found >= 0.75 * len(ref.scores), (found, len(ref.scores))
