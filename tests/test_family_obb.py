"""OBB family: discovery, metadata, float decode against the export's own output, rotated
IoU / NMS, rotated-box mAP, and a small conversion."""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import shared_path

from edgeq.decode.rotated import (
    polygon_iou,
    probiou,
    rbox_corners,
    rotated_hull,
    rotated_iou,
    rotated_nms,
)
from edgeq.errors import ArtifactError
from edgeq.eval.rotated import evaluate_rotated, load_rotated_json, validate_rotated
from edgeq.families import FAMILIES, discover_head, family_for
from edgeq.families.obb import ANGLE_ENCODINGS, OBB, OBBHead, RotatedHead, angle_formula
from edgeq.graph.load import load_model
from edgeq.meta.build import build_meta
from edgeq.meta.schema import ModelMeta
from edgeq.runtime.decoder import Decoder
from edgeq.runtime.types import Detections


def _fixture(stem: str) -> Path:
    return shared_path("fixtures", "ultralytics", f"{stem}.onnx")


@dataclass
class _T:  # a TensorLike for metadata
    name: str
    shape: tuple
    dtype: str = "float32"
    scale: float = 0.0
    zero_point: int = 0


def _float_meta(head, info) -> ModelMeta:
    fam = FAMILIES[head.family]
    outs = fam.outputs(head, [_T(e.name, tuple(e.shape)) for e in head.endpoints], "nchw")
    meta = build_meta(info, outs, _T("images", (1, 640, 640, 3), "uint8"), {}, name="t", decoder_version=fam.name,
                      nms=fam.nms, iou=fam.iou)
    return ModelMeta.from_json(json.loads(json.dumps(meta.to_json())))


# ----------------------------------------------------------------------------- discovery


@pytest.mark.parametrize("stem,reg_max,encoding", [
    ("yolov8n-obb-u8.3.172", 16, "yolov8"),  # one box+class Concat per level, dynamo names
    ("yolo11n-obb-u8.4.190", 16, "yolov8"),  # branches reshaped separately
    ("yolo26n-obb-u8.4.190", 1, "yolo26"),  # no DFL, raw angle
])
def test_discovery_by_structure(stem, reg_max, encoding):
    m = load_model(_fixture(stem))
    head = discover_head(m.model, m.info)
    assert isinstance(head, OBBHead) and head.family == "yolov8-obb" and head.task == "obb"
    assert head.nc == 15 and head.reg_max == reg_max and head.strides == (8, 16, 32)
    assert head.angle_encoding == encoding
    for kind, ch in (("boxes", 4 * reg_max), ("scores", 15), ("angle", 1)):
        eps = head.of_kind(kind)
        assert [e.shape for e in eps] == [(1, ch, 80, 80), (1, ch, 40, 40), (1, ch, 20, 20)]
        assert [e.name for e in eps] == [f"{kind}_{i}" for i in range(3)]
    # no other family claims an OBB graph (they return None or refuse it)
    for fam in FAMILIES.values():
        if fam.name != "yolov8-obb":
            try:
                assert fam.discover(m.model, m.info) is None
            except Exception as e:  # noqa: BLE001 - a refusal is not a claim
                assert "HeadNotFound" in type(e).__name__


def test_detect_graphs_are_not_obb():
    m = load_model(_fixture("yolov8n-u8.3.172"))
    assert OBB().discover(m.model, m.info) is None


# ----------------------------------------------------------------------------- metadata + float decode


@pytest.fixture(scope="module")
def yolo11_prep():
    from edgeq.prepare import prepare

    return prepare(_fixture("yolo11n-obb-u8.4.190"))


def test_metadata_round_trip(yolo11_prep):
    meta = _float_meta(yolo11_prep.head, yolo11_prep.loaded.info)
    assert meta.task == "obb" and meta.decoder_version == "yolov8-obb"
    assert [o.type for o in meta.outputs] == ["boxes", "scores", "angle"]
    boxes, scores, angle = meta.outputs
    assert boxes.encoding == "dfl" and scores.activation_required == "sigmoid" and angle.encoding == "yolov8"
    assert [c.stride for c in angle.children] == [8, 16, 32] and [c.shape[1] for c in angle.children] == [1, 1, 1]
    ext = meta.raw["outputs"][2]["edgeq"]
    assert ext["angle"] == 1 and ext["activation"] == "sigmoid" and ext["offset"] == 0.25 and ext["scale"] == math.pi
    assert angle_formula(meta) == ANGLE_ENCODINGS["yolov8"]
    assert isinstance(family_for(meta), OBB)
    # a reader that keeps only typed fields drops the extension: the encoding name still decodes
    again = ModelMeta.from_json(meta.to_json())
    assert "edgeq" not in again.raw["outputs"][2] and angle_formula(again) == ANGLE_ENCODINGS["yolov8"]
    bad = ModelMeta.from_json(copy.deepcopy(meta.raw))
    bad.raw["outputs"][2]["edgeq"]["angle"] = 2
    with pytest.raises(ArtifactError, match="version"):
        angle_formula(bad)


@pytest.mark.parametrize("stem", ["yolo11n-obb-u8.4.190", "yolo26n-obb-u8.4.190"])
def test_float_cut_decodes_to_the_exports_own_output(stem, yolo11_prep):
    from edgeq.prepare import prepare

    prep = yolo11_prep if stem.startswith("yolo11") else prepare(_fixture(stem))
    meta = _float_meta(prep.head, prep.loaded.info)
    x = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    full = ort.InferenceSession(str(_fixture(stem)), so, providers=["CPUExecutionProvider"])
    ref = full.run(None, {full.get_inputs()[0].name: x})[0][0]  # (4 + 15 + 1, 8400)
    cut = ort.InferenceSession(prep.graph.SerializeToString(), so, providers=["CPUExecutionProvider"])
    raw = dict(zip([o.name for o in cut.get_outputs()], cut.run(None, {cut.get_inputs()[0].name: x})))
    dec = Decoder(meta, {n: None for n in raw})
    assert isinstance(dec.head, RotatedHead)
    cand = dec.head.candidates(raw, 0.0, False)  # every anchor
    order = np.argsort(cand.rows)
    assert np.array_equal(cand.rows[order], np.arange(8400))
    rot = dec.head.extras(raw, cand.rows)["rotated"][order]
    want = np.concatenate([ref[:4].T, ref[-1:].T], axis=1)
    np.testing.assert_allclose(rot[:, :4], want[:, :4], atol=1e-3)  # pixels
    np.testing.assert_allclose(rot[:, 4], want[:, 4], atol=1e-5)  # radians
    np.testing.assert_allclose(cand.scores[order], ref[4:-1].max(axis=0), atol=1e-6)
    np.testing.assert_allclose(cand.boxes[order], rotated_hull(want), atol=1e-3)
    # the whole decode: Ultralytics' OBB NMS on the export's own boxes keeps the same detections
    top = np.unique(ref[4:-1].max(axis=0))  # random weights: many anchors tie
    k = next(k for k in range(2, top.size) if np.count_nonzero(ref[4:-1].max(axis=0) > top[-k]) >= 30)
    conf = float(top[-k] + top[-k - 1]) / 2  # >= 30 candidates, none within float error of conf
    res = dec.decode(raw, conf=conf, iou=0.7, max_det=300)
    keep = np.flatnonzero(ref[4:-1].max(axis=0) > conf)
    kept = keep[rotated_nms(want[keep], ref[4:-1].max(axis=0)[keep], 0.7, 300, ref[4:-1].argmax(axis=0)[keep])]
    np.testing.assert_allclose(res.extras["rotated"], want[kept], atol=1e-3)


# ----------------------------------------------------------------------------- IoU / NMS


def test_probiou_matches_the_closed_form():
    s = 10.0
    a = np.array([[50, 50, s, s, 0.0]])
    assert probiou(a, a)[0, 0] > 0.999
    # equal upright squares dx apart: Bhattacharyya distance 1.5 (dx/s)^2
    b = np.array([[55, 50, s, s, 0.0]])
    assert probiou(a, b)[0, 0] == pytest.approx(1 - math.sqrt(1 - math.exp(-0.375)), abs=1e-5)
    # a box and the same box described a quarter turn on (w, h swapped) are the same Gaussian
    c = np.array([[50, 50, 20, 8, 0.3]])
    d = np.array([[50, 50, 8, 20, 0.3 + math.pi / 2]])
    assert probiou(c, d)[0, 0] > 0.999


def test_exact_polygon_iou():
    sq = np.array([[0, 0, 10, 10, 0.0]])
    assert rotated_iou(sq, sq)[0, 0] == pytest.approx(1.0)
    assert rotated_iou(sq, np.array([[2, 0, 10, 10, 0.0]]))[0, 0] == pytest.approx(8 / 12)
    # a square and itself turned 45 degrees: octagon 2(sqrt2-1) s^2 over 2 s^2 minus it = 1/sqrt2
    assert rotated_iou(sq, np.array([[0, 0, 10, 10, math.pi / 4]]))[0, 0] == pytest.approx(1 / math.sqrt(2))
    assert rotated_iou(sq, np.array([[30, 0, 10, 10, 0.0]]))[0, 0] == 0.0
    assert polygon_iou(rbox_corners(sq)[0], rbox_corners(sq)[0][::-1]) == pytest.approx(1.0)  # orientation-free
    hull = rotated_hull(np.array([[0, 0, 2, 2, math.pi / 4]]))[0]
    np.testing.assert_allclose(hull, [-math.sqrt(2), -math.sqrt(2), math.sqrt(2), math.sqrt(2)], atol=1e-6)


def test_rotated_nms_is_ultralytics_fast_nms():
    # A > B > C; B overlaps A and C, C does not overlap A
    boxes = np.array([[50, 50, 20, 20, 0.0], [56, 50, 20, 20, 0.0], [62, 50, 20, 20, 0.0]])
    scores = np.array([0.9, 0.8, 0.7])
    iou = 0.4
    pi = probiou(boxes, boxes)
    assert pi[0, 1] >= iou and pi[1, 2] >= iou and pi[0, 2] < iou
    # Fast NMS: C is dropped by B although B itself was suppressed (greedy NMS would keep C)
    assert rotated_nms(boxes, scores, iou).tolist() == [0]
    assert rotated_nms(boxes, scores, iou, class_ids=np.array([0, 1, 1])).tolist() == [0, 1]
    assert rotated_nms(boxes, scores, 0.99).tolist() == [0, 1, 2]
    assert rotated_nms(boxes, scores, 0.99, max_det=2).tolist() == [0, 1]
    assert rotated_nms(boxes[::-1], scores[::-1], 0.99).tolist() == [2, 1, 0]  # best first
    assert rotated_nms(np.zeros((0, 5)), np.zeros(0), 0.5).shape == (0,)


# ----------------------------------------------------------------------------- rotated mAP


def _gt(polys, difficult=None):
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "poly": p, "difficult": (difficult or {}).get(i, 0)}
            for i, p in enumerate(polys)]
    return {"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "plane"}], "annotations": anns}


def _poly(cx, cy, w, h, a=0.0):
    return rbox_corners(np.array([[cx, cy, w, h, a]]))[0].reshape(-1).tolist()


def _res(poly, score):
    return {"image_id": 1, "category_id": 1, "score": score, "poly": poly}


def test_rotated_map_by_hand():
    gt = _gt([_poly(50, 50, 10, 10, 0.3), _poly(100, 80, 30, 12, 1.0)])
    perfect = [_res(a["poly"], 0.9) for a in gt["annotations"]]
    m, per_class = evaluate_rotated(gt, perfect, [1])
    assert m["mAP50-95"] == pytest.approx(1.0) and m["mAP50"] == 1.0 and m["recall"] == 1.0
    assert per_class[0].instances == 2
    # shifted by 2 px: IoU 8/12 passes the thresholds 0.50..0.65 (4 of 10)
    one = _gt([_poly(50, 50, 10, 10)])
    m, _ = evaluate_rotated(one, [_res(_poly(52, 50, 10, 10), 0.9)], [1])
    assert m["mAP50-95"] == pytest.approx(0.4) and m["mAP50"] == 1.0 and m["mAP75"] == 0.0
    # turned 45 degrees: IoU 1/sqrt2 passes 0.50..0.70 (5 of 10)
    m, _ = evaluate_rotated(one, [_res(_poly(50, 50, 10, 10, math.pi / 4), 0.9)], [1])
    assert m["mAP50-95"] == pytest.approx(0.5)
    # a false positive scored above the true one: precision 1/2 at every recall -> AP 0.5
    m, _ = evaluate_rotated(one, [_res(_poly(200, 200, 10, 10), 0.95), _res(_poly(50, 50, 10, 10), 0.9)], [1])
    assert m["mAP50"] == pytest.approx(0.5)
    # a detection of a difficult object is neither a hit nor a false positive
    two = _gt([_poly(50, 50, 10, 10), _poly(200, 200, 10, 10)], difficult={1: 1})
    m, per_class = evaluate_rotated(two, [_res(_poly(200, 200, 10, 10), 0.95), _res(_poly(50, 50, 10, 10), 0.9)], [1])
    assert m["mAP50"] == pytest.approx(1.0) and per_class[0].instances == 1
    m, _ = evaluate_rotated(one, [], [1])
    assert m["mAP50-95"] == 0.0


class _Oracle:
    """Predicts the ground truth of the image it is shown (by size)."""

    def __init__(self, meta, by_size):
        self.meta, self.by_size = meta, by_size

    def predict(self, image, **kw):
        rot = np.asarray(self.by_size[image.shape[:2]], np.float32).reshape(-1, 5)
        n = len(rot)
        return Detections(rotated_hull(rot), np.full(n, 0.9, np.float32), np.zeros(n, np.int64), self.meta.labels,
                          rotated=rot)


def test_validate_rotated_end_to_end(tmp_path, yolo11_prep):
    from edgeq.api import _validator

    images = shared_path("coco-val-dev", "images")
    files = sorted(p for p in images.iterdir())[:2]
    import cv2

    recs, anns, by_size = [], [], {}
    for i, f in enumerate(files, start=1):
        h, w = cv2.imread(str(f)).shape[:2]
        rb = [w / 2, h / 2, w / 4, h / 6, 0.4 * i]
        by_size[(h, w)] = rb
        recs.append({"id": i, "file_name": f.name, "width": w, "height": h})
        anns.append({"id": i, "image_id": i, "category_id": 3, "poly": _poly(*rb)})
    data = tmp_path / "obb.json"
    data.write_text(json.dumps({"images": recs, "categories": [{"id": 3, "name": "plane"}], "annotations": anns}))
    assert load_rotated_json(data)["annotations"][0]["poly"] == anns[0]["poly"]
    meta = _float_meta(yolo11_prep.head, yolo11_prep.loaded.info)
    assert _validator(meta.task) is validate_rotated
    res = validate_rotated(_Oracle(meta, by_size), data, images, progress=False, save_json=tmp_path / "r.json",
                           class_map={0: 3})
    assert res.metrics["obb"]["mAP50-95"] == pytest.approx(1.0) and res.images == 2 and res.detections == 2
    first = json.loads((tmp_path / "r.json").read_text())[0]
    assert first["image_id"] == 1 and first["rbox"] == pytest.approx(by_size[(recs[0]["height"], recs[0]["width"])], abs=1e-3)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": recs, "categories": [{"id": 3}], "annotations": [{**anns[0], "poly": [1, 2]}]}))
    from edgeq.eval.errors import DatasetError

    with pytest.raises(DatasetError, match=r"annotations\[0\]\.poly"):
        load_rotated_json(bad)


# ----------------------------------------------------------------------------- conversion


def test_small_conversion_predicts_rotated_boxes(tmp_path):
    import cv2

    import edgeq
    from edgeq.calib.preprocess import letterbox
    from edgeq.config import ConvertConfig
    from edgeq.pipeline import convert
    from edgeq.runtime.draw import draw

    out = tmp_path / "obb.tflite"
    result = convert(_fixture("yolov8n-obb-u8.4.190"), shared_path("coco-calib"), out,
                     ConvertConfig(calib_count=8, on_collapse="warn"), progress=False)
    assert result.meta.task == "obb" and result.meta.decoder_version == "yolov8-obb"
    model = edgeq.load(out)
    assert model.meta.task == "obb" and isinstance(model.decoder.head, RotatedHead)
    angle = model.meta.output("angle")
    assert [c.dtype for c in angle.children] == ["int8"] * 3 and [c.shape[-1] for c in angle.children] == [1, 1, 1]
    assert angle_formula(model.meta) == ANGLE_ENCODINGS["yolov8"]
    img_path = min((shared_path("coco-val-dev") / "images").iterdir())
    img = cv2.imread(str(img_path))
    dets = model.predict(img, conf=0.0)
    # random weights: every score sits at its output's lowest code, which is never a detection
    assert dets.rotated is not None and dets.rotated.shape == (len(dets), 5)
    # the INT8 rotated box of every anchor against the float cut graph's
    x, _ = model.preprocess(img)
    q = model.run(x)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(result.graph.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rgb, _ = letterbox(img, model.input_hw)
    xf = (rgb.astype(np.float32) / 255).transpose(2, 0, 1)[None]
    f = {o.name: v.transpose(0, 2, 3, 1) for o, v in zip(sess.get_outputs(), sess.run(None, {sess.get_inputs()[0].name: xf}))}
    rows = np.arange(0, model.decoder.head.num_anchors, 97)
    ref = Decoder(model.meta, {n: None for n in f}).head.extras(f, rows)["rotated"]
    got = model.decoder.head.extras(q, rows)["rotated"]
    assert np.diag(rotated_iou(ref, got)).min() > 0.95
    np.testing.assert_allclose(got[:, 4], ref[:, 4], atol=0.02)
    # drawing: rotated boxes as polygons
    rot = np.array([[100, 80, 60, 20, 0.5]], np.float32)
    fake = Detections(rotated_hull(rot), np.array([0.9], np.float32), np.array([1]), model.meta.labels, rotated=rot)
    drawn = draw(img, fake)
    assert drawn.shape == img.shape and not np.array_equal(drawn, img)
