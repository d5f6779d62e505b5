"""Classifiers (family ``classify``): discovery, the pooling/linear cut, the class_logits metadata
extension, decoding, centre-crop preprocessing, top-1/top-5 metrics, one small conversion."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import shared_path

from edgeq.calib.dataset import calibration_set
from edgeq.calib.preprocess import center_crop, preprocess_image, to_nchw_float
from edgeq.errors import ArtifactError
from edgeq.eval.classify import (
    accuracy_from_topk,
    image_folder,
    topk_accuracy,
    validate_classify,
)
from edgeq.eval.errors import DatasetError
from edgeq.families import FAMILIES, discover_head, family_for
from edgeq.families.classify import CLASS_LOGITS, ClassHead, Classify, softmax
from edgeq.graph.cut import cut_at_head
from edgeq.graph.load import load_model
from edgeq.meta.schema import ModelMeta
from edgeq.runtime.types import Detections

FIXTURES = ["yolov8n-cls-u8.4.190", "yolov8n-cls-u8.3.172", "yolo11n-cls-u8.4.190", "yolo11n-cls-u8.3.172",
            "yolo26n-cls-u8.4.190"]


def fixture(name: str) -> Path:
    return shared_path("fixtures", "ultralytics", f"{name}.onnx")


@dataclass
class Tensor:  # what Classify.outputs reads of an artifact tensor
    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int


def _meta(nc: int = 10, scale: float = 0.05, zp: int = -3, decoder: str | None = None) -> ModelMeta:
    head = discover_head(*_loaded("yolov8n-cls-u8.4.190"))
    outs = Classify().outputs(head, [Tensor(CLASS_LOGITS, (1, nc), "int8", scale, zp)])
    if decoder is not None:
        outs[0].decoder = decoder
    return ModelMeta("classify", "classify", [str(i) for i in range(nc)], [1, 224, 224, 3], "nhwc", outs,
                     raw={"validation": {"preprocessing": "center_crop"}})


_CACHE: dict[str, tuple] = {}


def _loaded(name: str):
    if name not in _CACHE:
        m = load_model(fixture(name))
        _CACHE[name] = (m.model, m.info)
    return _CACHE[name]


@pytest.mark.parametrize("name", FIXTURES)
def test_discovery_finds_the_logits_before_the_softmax(name):
    model, info = _loaded(name)
    head = discover_head(model, info)
    assert (head.family, head.task, head.nc) == ("classify", "classify", 10)
    (e,) = head.endpoints
    assert (e.kind, e.name, e.shape) == (CLASS_LOGITS, CLASS_LOGITS, (1, 10))
    # only this family claims a classifier
    assert [f.name for f in FAMILIES.values() if f.discover(model, info) is not None] == ["classify"]


def test_detectors_are_not_classifiers():
    m = load_model(shared_path("models", "yolov8n.onnx"))
    assert Classify().discover(m.model, m.info) is None


@pytest.mark.parametrize("name", ["yolov8n-cls-u8.4.190", "yolov8n-cls-u8.3.172"])
def test_cut_rewrites_pool_and_linear_as_exact_convolutions(name):
    model, info = _loaded(name)
    head = discover_head(model, info)
    plain = cut_at_head(model, head)
    rewritten = Classify().cut(model, head)
    ops = {n.op_type for n in rewritten.graph.node}
    assert not ops & {"Gemm", "GlobalAveragePool", "ReduceMean", "Flatten"}
    x = np.random.default_rng(0).random((1, 3, 224, 224), np.float32)
    a = ort.InferenceSession(plain.SerializeToString()).run(None, {info.input_name: x})[0]
    b = ort.InferenceSession(rewritten.SerializeToString()).run(None, {info.input_name: x})[0]
    assert b.shape == (1, 10)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


def test_metadata_round_trip_and_dispatch():
    meta = _meta()
    back = ModelMeta.from_json(meta.to_json())
    assert back.task == "classify"
    assert [o.to_json() for o in back.outputs] == [o.to_json() for o in meta.outputs]
    out = back.output(CLASS_LOGITS)
    assert (out.decoder, out.activation_required, out.dshape) == ("edgeq-v1", "softmax", [("batch", 1), ("num_classes", 10)])
    assert family_for(back).name == "classify"


def test_decode_is_the_softmax_of_the_dequantized_logits():
    meta = _meta(scale=0.05, zp=-3)
    head = ClassHead(meta, {})
    codes = np.array([[-128, -3, 0, 7, 127, 50, -60, 2, 3, 4]], np.int8)
    probs = head.dense({CLASS_LOGITS: codes})["probs"]
    np.testing.assert_allclose(probs, softmax(0.05 * (codes[0].astype(np.float64) + 3)), rtol=1e-6)
    assert probs.shape == (10,) and abs(float(probs.sum()) - 1) < 1e-6 and int(np.argmax(probs)) == 4


def test_a_later_extension_version_is_refused():
    with pytest.raises(ArtifactError, match="edgeq-v2"):
        ClassHead(_meta(decoder="edgeq-v2"), {})


def test_center_crop_is_short_side_resize_then_centre_crop():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, 50:150] = 255  # the centre square is white, the sides black
    rgb, lb = center_crop(img, (50, 50))
    assert rgb.shape == (50, 50, 3) and rgb.min() == 255  # only the centre survives
    assert (lb.gain, lb.pad_x, lb.pad_y) == (0.5, -25.0, 0.0)
    np.testing.assert_allclose(lb.points_to_original(np.array([[0.0, 0.0], [50.0, 50.0]])), [[50, 0], [150, 100]])
    assert preprocess_image(img, (50, 50), "center_crop")[0].shape == (50, 50, 3)
    assert preprocess_image(img, (64, 64), "letterbox")[1].pad_y > 0


def test_calibration_images_follow_the_set_preprocessing(calib_dir):
    cs = calibration_set(calib_dir, count=1)
    letterboxed = next(cs.images((224, 224)))
    cropped = next(replace(cs, preprocessing="center_crop").images((224, 224)))
    assert letterboxed.shape == cropped.shape == (224, 224, 3)
    assert not np.array_equal(letterboxed, cropped)


# ----------------------------------------------------------------------------- metrics


def test_topk_accuracy_hand_computed():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    targets = np.array([1, 1, 2, 2])
    assert topk_accuracy(probs, targets, 1) == 0.5  # rows 0 and 2
    assert topk_accuracy(probs, targets, 2) == 0.75  # row 3's target is last
    assert topk_accuracy(probs, targets, 3) == 1.0
    assert accuracy_from_topk([(0, [0, 1]), (1, [0, 1]), (2, [0, 1, 3, 4, 5, 2])]) == (1 / 3, 2 / 3)


class FolderOracle:
    """A 'classifier' that reads the class off an image's colour: red -> class 0, green -> class 1,
    blue -> class 2; ``confuse`` sends green to class 2."""

    def __init__(self, confuse: bool = False) -> None:
        self.meta = ModelMeta("classify", "classify", ["Red Car", "green", "blue"], [1, 8, 8, 3], "nhwc", [])
        self.confuse = confuse
        self.name = "oracle"

    def predict(self, image, **_):
        cls = int(np.argmax(image.reshape(-1, 3).mean(0)[::-1]))  # BGR -> R, G, B
        if self.confuse and cls == 1:
            cls = 2
        probs = np.full(3, 0.1, np.float32)
        probs[cls] = 0.8
        return Detections(np.zeros((0, 4), np.float32), probs, np.arange(3), self.meta.labels, probs=probs)


def _folder_set(root: Path) -> Path:
    colours = {"red_car": (0, 0, 255), "Green": (0, 255, 0), "blue": (255, 0, 0), "unknown": (9, 9, 9)}
    for folder, bgr in colours.items():
        (root / folder).mkdir(parents=True)
        for k in range(2):
            cv2.imwrite(str(root / folder / f"{k}.png"), np.full((8, 8, 3), bgr, np.uint8))
    (root / "blue" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_matches_folders_to_labels(tmp_path):
    samples, skipped = image_folder(_folder_set(tmp_path), ["red car", "green", "blue"])
    assert [c for _, c in samples] == [1, 1, 2, 2, 0, 0] and skipped == ["unknown"]
    with pytest.raises(DatasetError, match="no images in class folders"):
        image_folder(tmp_path, ["cat", "dog"])


def test_validate_classify_perfect_and_with_a_known_confusion(tmp_path):
    root = _folder_set(tmp_path)
    perfect = validate_classify(FolderOracle(), root, progress=False)
    assert (perfect.top1, perfect.top5, perfect.images) == (1.0, 1.0, 6)
    confused = validate_classify(FolderOracle(confuse=True), root, progress=False)
    assert confused.top1 == pytest.approx(4 / 6)  # both green images -> blue
    assert confused.top5 == 1.0  # 3 classes: the target is always in the top 5


# ----------------------------------------------------------------------------- conversion


def _without_linear_bias(src: Path, dst: Path) -> Path:
    """The fixture with its classifier Gemm's bias zeroed. The random-weight fixtures' logits are
    their bias (the image term is ~1e-9 of it), so the int8 logits would be compared on a constant;
    without the bias they are the image-dependent term alone."""
    from onnx import numpy_helper

    model = onnx.load(str(src))
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    for init in model.graph.initializer:
        if init.name == gemm.input[2]:
            init.CopyFrom(numpy_helper.from_array(np.zeros(numpy_helper.to_array(init).shape, np.float32), init.name))
    onnx.save(model, str(dst))
    return dst


def test_small_conversion_predicts_class_probabilities(tmp_path, calib_dir, val_dev):
    from edgeq.config import ConvertConfig
    from edgeq.pipeline import convert
    from edgeq.runtime import load

    src = _without_linear_bias(fixture("yolov8n-cls-u8.4.190"), tmp_path / "cls.onnx")
    out = tmp_path / "cls.tflite"
    res = convert(src, calib_dir, out, ConvertConfig(calib_count=8, on_collapse="warn", weight_rounding="nearest"), progress=False)
    assert res.meta.raw["validation"]["preprocessing"] == "center_crop"
    m = load(out)
    assert m.meta.task == "classify" and m.preprocessing == "center_crop"
    float_cut = ort.InferenceSession(res.graph.SerializeToString())
    noise = signal = 0.0
    for image in sorted((val_dev / "images").iterdir())[:3]:
        dets = m.predict(image)
        assert dets.probs.shape == (10,) and abs(float(dets.probs.sum()) - 1) < 1e-5
        assert len(dets) == 5 and dets.boxes.shape == (0, 4)
        assert np.all(np.diff(dets.scores) <= 0) and dets.class_ids[0] == int(np.argmax(dets.probs))
        # the int8 logits against the float cut graph on the same centre-cropped input
        bgr = cv2.imread(str(image))
        x = to_nchw_float(preprocess_image(bgr, (224, 224), "center_crop")[0])
        ref = float_cut.run(None, {"images": x})[0][0]
        got = m.decoder.head.logits(m.run(m.preprocess(bgr)[0]))
        noise, signal = noise + float(np.sum((got - ref) ** 2)), signal + float(np.sum(ref ** 2))
        assert int(np.argmax(got)) == int(np.argmax(ref))
    assert 10 * np.log10(signal / noise) > 15
