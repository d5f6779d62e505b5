"""Semantic segmentation (family ``semantic``, YOLO26-sem): discovery, metadata round trip, decode
against the float model, class maps back to the image, mIoU on COCO-built ground truth, one small
conversion."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import shared_path
from onnx import TensorProto, helper, numpy_helper

from edgeq.calib.preprocess import letterbox, to_nchw_float
from edgeq.eval.semantic import (
    IGNORE,
    background_index,
    class_map_from_coco,
    confusion,
    miou,
    validate_semantic,
)
from edgeq.families import FAMILIES, discover_head, family_for
from edgeq.families.semantic import SEGMENTATION, Semantic, SemanticHead
from edgeq.graph.load import load_model
from edgeq.meta.schema import ModelMeta, Output, Quant
from edgeq.runtime.types import Detections


def sem_fixture() -> Path:
    return shared_path("fixtures", "ultralytics", "yolo26n-sem-u8.4.190.onnx")


_LOADED: list = []


def loaded_fixture():
    """The loaded (normalized) sem fixture, loaded once per session."""
    if not _LOADED:
        _LOADED.append(load_model(sem_fixture()))
    return _LOADED[0]


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int


def tiny_semantic(path: Path, nc: int = 5, size: int = 64, stride: int = 8) -> Path:
    """A small YOLO26-sem-shaped graph: conv (stride 8), SiLU, 1x1 class conv, bilinear x8 Resize
    (half-pixel), ArgMax over classes, Cast to uint8."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.2, (8, 3, stride, stride)).astype(np.float32), "w0"),
        numpy_helper.from_array(rng.normal(0, 0.5, (8,)).astype(np.float32), "b0"),
        numpy_helper.from_array(rng.normal(0, 1.0, (nc, 8, 1, 1)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.3, (nc,)).astype(np.float32), "b1"),
        numpy_helper.from_array(np.array([1, 1, stride, stride], np.float32), "scales"),
    ]
    nodes = [
        helper.make_node("Conv", ["images", "w0", "b0"], ["c0"], kernel_shape=[stride, stride], strides=[stride, stride]),
        helper.make_node("Sigmoid", ["c0"], ["s0"]),
        helper.make_node("Mul", ["c0", "s0"], ["a0"]),
        helper.make_node("Conv", ["a0", "w1", "b1"], ["logits"], kernel_shape=[1, 1]),
        helper.make_node("Resize", ["logits", "", "scales"], ["up"], mode="linear",
                         coordinate_transformation_mode="half_pixel"),
        helper.make_node("ArgMax", ["up"], ["idx"], axis=1, keepdims=0),
        helper.make_node("Cast", ["idx"], ["output0"], to=TensorProto.UINT8),
    ]
    graph = helper.make_graph(nodes, "tiny-sem", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("output0", TensorProto.UINT8, [1, size, size])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    for k, v in {"task": "semantic", "imgsz": f"[{size}, {size}]", "stride": "32",
                 "names": str({i: f"c{i}" for i in range(nc)})}.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.save(model, str(path))
    return path


def _meta(nc: int = 19, quant: Quant | None = None, shape=(1, 80, 80, 19)) -> ModelMeta:
    m = loaded_fixture()
    head = discover_head(m.model, m.info)
    dtype = "int8" if quant else "float32"
    outs = Semantic().outputs(head, [Tensor(SEGMENTATION, shape, dtype, quant.scale if quant else 1.0,
                                            quant.zero_point if quant else 0)])
    return ModelMeta("semantic", "semantic", [str(i) for i in range(nc)], [1, 640, 640, 3], "nhwc", outs)


def test_discovery_takes_the_logits_before_the_upsample_and_argmax():
    m = loaded_fixture()
    head = discover_head(m.model, m.info)
    assert (head.family, head.task, head.nc, head.strides) == ("semantic", "semantic", 19, (8,))
    (e,) = head.endpoints
    assert (e.kind, e.shape, e.stride) == (SEGMENTATION, (1, 19, 80, 80), 8)
    assert [f.name for f in FAMILIES.values() if f.discover(m.model, m.info) is not None] == ["semantic"]


def test_metadata_round_trip_and_dispatch():
    meta = _meta(quant=Quant(0.1, -5))
    back = ModelMeta.from_json(meta.to_json())
    assert back.task == "semantic"
    assert [o.to_json() for o in back.outputs] == [o.to_json() for o in meta.outputs]
    out = back.output(SEGMENTATION)
    assert out.stride == 8 and out.dshape[-1] == ("num_classes", 19) and out.decoder == "modelpack"
    assert family_for(back).name == "semantic"


def test_decode_matches_the_float_model_class_map(val_dev):
    """The float cut graph's logits through the decoder (bilinear x8, argmax) give the fixture's own map."""
    m = loaded_fixture()
    fam = Semantic()
    head = fam.discover(m.model, m.info)
    cut = ort.InferenceSession(fam.cut(m.model, head).SerializeToString())
    full = ort.InferenceSession(str(sem_fixture()))
    decoder = SemanticHead(_meta(), {})
    image = cv2.imread(str(min((val_dev / "images").iterdir())))
    x = to_nchw_float(letterbox(image, (640, 640))[0])
    logits = cut.run(None, {m.info.input_name: x})[0].transpose(0, 2, 3, 1)  # NHWC, as the artifact
    got = decoder.dense({SEGMENTATION: logits})["class_map"]
    ref = full.run(None, {m.info.input_name: x})[0][0]
    assert got.shape == (640, 640) and got.dtype == np.int32
    assert np.mean(got == ref) > 0.999


def test_argmax_on_int8_codes_equals_argmax_on_dequantized_values():
    rng = np.random.default_rng(1)
    codes = rng.integers(-128, 128, (1, 4, 4, 3)).astype(np.int8)
    meta = ModelMeta("semantic", "semantic", ["a", "b", "c"], [1, 32, 32, 3], "nhwc",
                     [Output("seg", SEGMENTATION, [1, 4, 4, 3], dshape=[("batch", 1), ("height", 4), ("width", 4), ("num_classes", 3)],
                             dtype="int8", quantization=Quant(0.07, 11), stride=8)])
    got = SemanticHead(meta, {}).dense({"seg": codes})["class_map"]
    deq = 0.07 * (codes[0].astype(np.float32) - 11)
    ref = np.argmax(cv2.resize(deq, (32, 32), interpolation=cv2.INTER_LINEAR), axis=-1)
    np.testing.assert_array_equal(got, ref)


def test_int_class_maps_go_back_to_the_original_image():
    img = np.zeros((48, 96, 3), np.uint8)
    _, lb = letterbox(img, (64, 64))
    cm = np.zeros((64, 64), np.int64)
    cm[:, 32:] = 7  # right half of the input (the image fills rows 16..47)
    back = lb.map_to_original(cm)
    assert back.shape == (48, 96) and back.dtype == np.int64
    assert set(np.unique(back[:, :48])) == {0} and set(np.unique(back[:, 48:])) == {7}
    assert lb.map_to_original(cm.astype(bool)).dtype == bool


# ----------------------------------------------------------------------------- metrics


def test_miou_hand_computed():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, IGNORE, IGNORE]])
    assert miou(confusion(gt, gt, 3)) == (1.0, 1.0)
    pred = np.array([[0, 1, 1, 1], [0, 0, 1, 1], [2, 1, 0, 0]])  # two errors; ignored pixels do not count
    cm = confusion(gt, pred, 3)
    assert cm.sum() == 10 and np.trace(cm) == 8
    # class 0: tp 3, fp 0, fn 1 -> 3/4; class 1: tp 4, fp 2 -> 4/6; class 2: tp 1, fn 1 -> 1/2
    m, acc = miou(cm)
    assert m == pytest.approx((3 / 4 + 4 / 6 + 1 / 2) / 3) and acc == pytest.approx(0.8)


def _coco(tmp_path: Path) -> tuple[Path, Path]:
    """One 20x20 image: a 'car' square painted over by a smaller 'person' square, a crowd region,
    and a category the model does not know."""
    import json

    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.zeros((20, 20, 3), np.uint8))
    sq = lambda x0, y0, x1, y1: [[x0, y0, x1, y0, x1, y1, x0, y1]]
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 20}],
        "categories": [{"id": 3, "name": "car"}, {"id": 1, "name": "person"}, {"id": 9, "name": "boat"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "area": 100, "segmentation": sq(0, 0, 10, 10), "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [2, 2, 4, 4], "area": 16, "segmentation": sq(2, 2, 6, 6), "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [12, 12, 4, 4], "area": 16, "segmentation": sq(12, 12, 16, 16), "iscrowd": 1},
            {"id": 4, "image_id": 1, "category_id": 9, "bbox": [12, 0, 4, 4], "area": 16, "segmentation": sq(12, 0, 16, 4), "iscrowd": 0},
        ],
    }
    (tmp_path / "instances.json").write_text(json.dumps(data))
    return tmp_path / "instances.json", tmp_path / "images"


LABELS = ["person", "car"]


def test_ground_truth_from_instance_masks(tmp_path):
    import json

    data, _ = _coco(tmp_path)
    gt = json.loads(data.read_text())
    bg = background_index(LABELS)
    assert bg == 2 and background_index(["x", "Background"]) == 1
    cm = class_map_from_coco(gt["images"][0], gt["annotations"], {1: 0, 3: 1}, bg)
    assert cm.shape == (20, 20)
    assert cm[4, 4] == 0 and cm[1, 1] == 1 and cm[19, 19] == bg  # person on top of the car, background
    assert cm[14, 14] == IGNORE and cm[2, 14] == IGNORE  # crowd, and a category the model lacks


class Oracle:
    """Predicts a fixed class map for every image (at the image's size)."""

    def __init__(self, class_map: np.ndarray) -> None:
        self.meta = ModelMeta("semantic", "semantic", LABELS, [1, 20, 20, 3], "nhwc", [])
        self.class_map, self.name = class_map, "oracle"

    def predict(self, image, **_):
        z = np.zeros((0,), np.float32)
        return Detections(np.zeros((0, 4), np.float32), z, z.astype(np.int64), LABELS, class_map=self.class_map)


def test_validate_semantic_perfect_and_with_a_known_confusion(tmp_path):
    import json

    data, images = _coco(tmp_path)
    gt = json.loads(data.read_text())
    truth = class_map_from_coco(gt["images"][0], gt["annotations"], {1: 0, 3: 1}, 2)
    perfect = validate_semantic(Oracle(np.where(truth == IGNORE, 2, truth)), data, images, progress=False)
    assert (perfect.miou, perfect.pixel_accuracy) == (1.0, 1.0)
    # the person square (16 px) predicted as car: person IoU 0, car IoU 84/100, background 1
    wrong = np.where(truth == 0, 1, np.where(truth == IGNORE, 2, truth))
    r = validate_semantic(Oracle(wrong), data, images, progress=False)
    assert r.miou == pytest.approx((0 + 84 / 100 + 1) / 3)
    n_valid = int(np.count_nonzero(truth != IGNORE))
    assert r.pixel_accuracy == pytest.approx((n_valid - 16) / n_valid)


# ----------------------------------------------------------------------------- conversion


def test_small_conversion_predicts_a_class_map(tmp_path, calib_dir, val_dev):
    from edgeq.config import ConvertConfig
    from edgeq.pipeline import convert
    from edgeq.runtime import load

    src = tiny_semantic(tmp_path / "tiny-sem.onnx")
    out = tmp_path / "sem.tflite"
    res = convert(src, calib_dir, out, ConvertConfig(calib_count=8, on_collapse="warn", weight_rounding="nearest"), progress=False)
    assert res.head.endpoints[0].shape == (1, 5, 8, 8)
    m = load(out)
    assert m.meta.task == "semantic" and m.meta.output(SEGMENTATION).stride == 8
    full = ort.InferenceSession(str(src))
    same = total = 0
    for path in sorted((val_dev / "images").iterdir())[:4]:
        image = cv2.imread(str(path))
        dets = m.predict(image)
        assert dets.class_map.shape == image.shape[:2] and len(dets) == 0
        raw = m.decoder.decode(m.run(m.preprocess(image)[0])).extras["class_map"]
        ref = full.run(None, {"images": to_nchw_float(letterbox(image, (64, 64))[0])})[0][0]
        same, total = same + int(np.count_nonzero(raw == ref)), total + ref.size
    assert same / total > 0.9
