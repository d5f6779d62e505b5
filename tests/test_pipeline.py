"""End to end: convert -> artifact checks -> decode -> validate, on a few shared images."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from conftest import shared_path
from edgeq.config import ConvertConfig
from edgeq.errors import CalibrationError, HeadNotFoundError, ModelError
from edgeq.pipeline import convert

CALIB_N = 8


@pytest.fixture(scope="module")
def smart_det(tmp_path_factory):
    out = tmp_path_factory.mktemp("det") / "yolov8n-smart.tflite"
    res = convert(shared_path("models", "yolov8n.onnx"), shared_path("coco-calib"), out, ConvertConfig(calib_count=CALIB_N), progress=False)
    return res


@pytest.fixture(scope="module")
def smart_seg(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "yolov8n-seg-smart.tflite"
    return convert(shared_path("models", "yolov8n-seg.onnx"), shared_path("coco-calib"), out, ConvertConfig(calib_count=CALIB_N), progress=False)


def _tensor_types(path: Path) -> tuple[list, list, set[str]]:
    interp = Interpreter(model_path=str(path))
    ins = interp.get_input_details()
    outs = interp.get_output_details()
    dtypes = {np.dtype(t["dtype"]).name for t in interp.get_tensor_details()}
    return ins, outs, dtypes


@pytest.mark.parametrize("fixture", ["smart_det", "smart_seg"])
def test_artifact_is_fully_integer_and_self_describing(fixture, request):
    res = request.getfixturevalue(fixture)
    ins, outs, dtypes = _tensor_types(res.path)
    assert len(ins) == 1 and ins[0]["dtype"] == np.uint8 and list(ins[0]["shape"]) == [1, 640, 640, 3]
    assert ins[0]["quantization"][0] == pytest.approx(1 / 255)
    assert all(o["dtype"] == np.int8 for o in outs)
    assert "float32" not in dtypes, "no float tensor may sit between input and outputs"
    meta = json.loads(zipfile.ZipFile(res.path).read("edgefirst.json"))
    labels = zipfile.ZipFile(res.path).read("labels.txt").decode().split("\n")
    assert meta["schema_version"] == 2 and meta["decoder_version"] == "yolov8"
    assert labels[0] == "person" and len(meta["dataset"]["classes"]) == 80
    kinds = {o["type"] for o in meta["outputs"]}
    assert {"boxes", "scores"} <= kinds
    boxes = next(o for o in meta["outputs"] if o["type"] == "boxes")
    assert boxes["encoding"] == "dfl" and [c["stride"] for c in boxes["outputs"]] == [8, 16, 32]
    scores = next(o for o in meta["outputs"] if o["type"] == "scores")
    assert scores["activation_required"] == "sigmoid"
    by_name = {o["name"]: o for o in outs}
    for child in boxes["outputs"] + scores["outputs"]:
        rt = by_name[child["name"]]
        assert list(rt["shape"]) == child["shape"]
        assert rt["quantization"][0] == pytest.approx(child["quantization"]["scale"])
        assert rt["quantization"][1] == child["quantization"]["zero_point"]
    scales = {c["quantization"]["scale"] for c in boxes["outputs"] + scores["outputs"]}
    assert len(scales) == 6, "each endpoint must carry its own scale"
    prov = meta["edgeq"]
    assert prov["calibration"]["count"] == CALIB_N and prov["source"]["sha256"]
    if fixture == "smart_seg":
        assert "protos" in kinds and "mask_coefs" in kinds


def test_same_input_gives_byte_identical_artifact(smart_det, tmp_path):
    again = convert(shared_path("models", "yolov8n.onnx"), shared_path("coco-calib"), tmp_path / "again.tflite",
                    ConvertConfig(calib_count=CALIB_N), progress=False)
    assert again.path.read_bytes() == smart_det.path.read_bytes()


def test_smart_artifact_detects_like_float(smart_det, val_dev):
    """Accuracy smoke: the INT8 artifact finds the same objects as the float model on real images."""
    from edgeq.calib.preprocess import read_image
    from edgeq.runtime import load

    q, f = load(smart_det.path), load(shared_path("models", "yolov8n.onnx"))
    images = sorted((val_dev / "images").glob("*.jpg"))[:6]
    matched = total = 0
    for p in images:
        img = read_image(p)
        dq, df = q.predict(img, conf=0.4), f.predict(img, conf=0.4)
        for box, cls in zip(df.boxes, df.class_ids):
            total += 1
            same = dq.boxes[dq.class_ids == cls]
            if len(same):
                iou = _iou(box, same).max()
                matched += iou > 0.8
    assert total >= 10 and matched / total >= 0.85, f"{matched}/{total} float detections reproduced"


def _iou(b: np.ndarray, bs: np.ndarray) -> np.ndarray:
    lt = np.maximum(b[:2], bs[:, :2])
    rb = np.minimum(b[2:], bs[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / (area(b) + area(bs) - inter)


def test_accuracy_smoke_map_on_dev_subset(smart_det, val_dev):
    """A small but real COCO accuracy check: INT8 mAP close to float on 12 dev images."""
    from edgeq.eval import validate
    from edgeq.runtime import load

    from edgeq.eval.report import compare

    kw = dict(max_images=12, progress=False, keep_matches=True)
    fq = validate(load(smart_det.path), val_dev / "instances.json", val_dev / "images", **kw)
    ff = validate(load(shared_path("models", "yolov8n.onnx")), val_dev / "instances.json", val_dev / "images", **kw)
    drop = ff.metric("mAP50-95", "bbox") - fq.metric("mAP50-95", "bbox")
    assert drop < 0.05, f"INT8 lost {drop:.3f} mAP50-95 on 12 images (8 calibration images)"
    cmp = compare(ff, fq, ci=True)  # the interval and the resolution floor on real detections
    interval = cmp.intervals["bbox"]
    assert interval.low <= -drop <= interval.high
    assert cmp.floor is not None and len(cmp.floor.deltas["bbox"]) == 8 and cmp.floor.bound() < 0.03


def test_unknown_head_fails_clearly_without_output(tmp_path, headless_onnx):
    out = tmp_path / "x.tflite"
    with pytest.raises(HeadNotFoundError, match="--split combined"):
        convert(headless_onnx, shared_path("coco-calib"), out, progress=False)
    assert not out.exists()


def test_calibration_errors_leave_no_output(tmp_path, calib_dir):
    out = tmp_path / "x.tflite"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="no images"):
        convert(shared_path("models", "yolov8n.onnx"), tmp_path / "empty", out, progress=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(next((calib_dir / "images").glob("*.jpg")), bad / "a.jpg")
    (bad / "b.jpg").write_bytes(b"\x00garbage")
    with pytest.raises(CalibrationError, match="b.jpg"):
        convert(shared_path("models", "yolov8n.onnx"), bad, out, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".x.tflite*"))


def test_non_onnx_model_fails_clearly(tmp_path, calib_dir):
    fake = tmp_path / "model.onnx"
    fake.write_text("hello")
    with pytest.raises(ModelError, match="not a valid ONNX"):
        convert(fake, calib_dir, tmp_path / "o.tflite", progress=False)
    assert not (tmp_path / "o.tflite").exists()


@pytest.mark.parametrize("fixture", ["smart_det", "smart_seg"])
def test_edgefirst_hal_decodes_our_artifact_like_we_do(fixture, request, val_dev):
    """EdgeFirst's own decoder, fed our embedded edgefirst.json, finds the same detections."""
    pytest.importorskip("edgefirst_hal", reason="edgefirst-hal is not installed (pip install edgefirst-hal)")
    from test_runtime_hal import _hal_decoder, _hal_tensors, _matched, _run

    from edgeq.runtime import load

    res = request.getfixturevalue(fixture)
    model = load(res.path)
    dec = _hal_decoder(zipfile.ZipFile(res.path).read("edgefirst.json").decode(), 0.25)
    total = 0
    for image in sorted((val_dev / "images").glob("*.jpg"))[:5]:
        _, _, outs, raw = _run(model, image)
        ours = model.decoder.decode(raw, conf=0.25, iou=0.7, agnostic=True)
        hb, hs, hc, _ = dec.decode(_hal_tensors(model, outs), max_boxes=300)
        hb = hb * np.array(model.input_hw[::-1] * 2, np.float32)
        assert len(hs) == len(ours.scores), image.name
        assert _matched(ours, hb, hs, hc).all(), f"{image.name}: a detection differs by more than 1 px or in class"
        total += len(hs)
    assert total >= 10
