"""Pose family (YOLOv8/YOLO11/YOLO26 keypoint heads): discovery, metadata, decode, OKS, conversion."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path

from edgeq.calib.preprocess import letterbox, read_image
from edgeq.eval.coco import detections_to_coco, evaluate_coco
from edgeq.eval.dataset import build_label_map
from edgeq.families import FAMILIES, discover_head, family_for, get_family
from edgeq.families.pose import LANDMARKS_VIS, LANDMARKS_XY, Pose, PoseHead
from edgeq.graph.load import load_model
from edgeq.meta.read import read_meta
from edgeq.meta.schema import ModelMeta
from edgeq.runtime.decoder import Decoder
from edgeq.runtime.types import Detections

FIXTURES = ["yolov8n-pose-u8.3.172", "yolov8n-pose-u8.4.190", "yolo11n-pose-u8.3.172", "yolo11n-pose-u8.4.190",
            "yolo26n-pose-u8.4.190"]


def _fixture(name: str) -> Path:
    return shared_path("fixtures", "ultralytics", f"{name}.onnx")


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    scale: float = 0.0
    zero_point: int = 0


def _float_meta(head, graph, labels: list[str]) -> ModelMeta:
    """The metadata of the float cut graph (NCHW outputs, no quantization), after a JSON round trip."""
    outs = [_Tensor(o.name, tuple(d.dim_value for d in o.type.tensor_type.shape.dim)) for o in graph.graph.output]
    meta = ModelMeta(get_family(head.family).name, "pose", labels, [1, 3, 640, 640], "nchw",
                     get_family(head.family).outputs(head, outs, layout="nchw"), nms="class_aware", input_dtype="float32")
    return ModelMeta.from_json(meta.to_json())


@pytest.mark.parametrize("name", FIXTURES)
def test_discovery_finds_boxes_scores_keypoints_and_visibility(name: str) -> None:
    m = load_model(_fixture(name))
    head = discover_head(m.model, m.info)
    assert head.family == "yolov8-pose" and head.task == "pose" and head.nc == 1
    assert head.strides == (8, 16, 32)
    assert head.reg_max == (1 if name.startswith("yolo26") else 16)
    kinds = [e.kind for e in head.endpoints]
    assert kinds == ["boxes"] * 3 + ["scores"] * 3 + ["keypoints"] * 3 + ["keypoint_visibility"] * 3
    for e in head.of_kind("keypoints"):
        assert e.shape[1] == 34 and e.channels == tuple(k * 3 + d for k in range(17) for d in (0, 1))
    for e in head.of_kind("keypoint_visibility"):
        assert e.shape[1] == 17 and e.channels == tuple(range(2, 51, 3))


def test_pose_claims_only_pose_graphs() -> None:
    assert list(FAMILIES).index("yolov8-pose") < list(FAMILIES).index("yolov8")  # 8.3 pose graphs also hold a detect head
    for model in ("yolov8n.onnx", "yolov8n-seg.onnx"):
        m = load_model(shared_path("models", model))
        assert Pose().discover(m.model, m.info) is None


def test_metadata_round_trip_and_decoder_choice() -> None:
    from edgeq.prepare import prepare

    prep = prepare(_fixture("yolov8n-pose-u8.3.172"))
    meta = _float_meta(prep.head, prep.graph, ["person"])
    assert ModelMeta.from_json(meta.to_json()).to_json() == meta.to_json()
    assert meta.task == "pose"
    lm = meta.output("landmarks")
    assert lm.shape == [1, 51, 8400] and lm.encoding == "yolov8" and lm.decoder == "ultralytics"
    assert [c.type for c in lm.children] == [LANDMARKS_XY, LANDMARKS_VIS] * 3
    assert [c.activation_required for c in lm.children] == [None, "sigmoid"] * 3
    assert meta.output("boxes").encoding == "dfl"
    assert family_for(meta).name == "yolov8-pose"
    assert isinstance(Decoder(meta).head, PoseHead)
    assert family_for(read_meta(shared_path("models", "yolo11n-pose.onnx"))) is None  # a plain export: the flat layout


@pytest.mark.parametrize("model,conf", [("models/yolo11n-pose.onnx", 0.05), ("fixtures/ultralytics/yolo26n-pose-u8.4.190.onnx", 0.0)])
def test_float_cut_graph_decodes_the_models_own_keypoints(model: str, conf: float) -> None:
    """The cut graph's per-scale outputs, decoded by PoseHead, give the export's own decoded
    boxes and keypoints (its flat output, decoded by FlatHead): same formula, to float precision."""
    import onnxruntime as ort

    from edgeq.prepare import prepare

    path = shared_path(*model.split("/"))
    prep = prepare(path)
    meta = _float_meta(prep.head, prep.graph, ["person"])
    if "yolo26" in model:
        assert meta.output("landmarks").encoding == "yolo26" and meta.output("boxes").encoding == "ltrb"
    flat = read_meta(path)
    assert flat.task == "pose" and flat.edgeq["kpt_shape"] == [17, 3]
    cut = ort.InferenceSession(prep.graph.SerializeToString(), providers=["CPUExecutionProvider"])
    full = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = sorted((shared_path("coco-person-dev") / "images").iterdir())[:2]
    for img in images:
        rgb, _ = letterbox(read_image(img), (640, 640))
        x = (rgb.astype(np.float32) / 255).transpose(2, 0, 1)[None]
        a = dict(zip([o.name for o in cut.get_outputs()], cut.run(None, {cut.get_inputs()[0].name: x})))
        b = dict(zip([o.name for o in full.get_outputs()], full.run(None, {full.get_inputs()[0].name: x})))
        ref = Decoder(flat).decode(b, conf=conf, max_det=50)
        got = Decoder(meta).decode(a, conf=conf, max_det=50)
        assert len(ref.scores) >= 1 and len(got.scores) == len(ref.scores)
        np.testing.assert_allclose(got.boxes, ref.boxes, atol=1e-3)
        np.testing.assert_allclose(got.extras["keypoints"], ref.extras["keypoints"], atol=1e-3)
        assert got.extras["keypoints"].shape == (len(ref.scores), 17, 3)


def test_float_onnx_predicts_keypoints_in_image_pixels() -> None:
    import edgeq

    model = edgeq.load(shared_path("models", "yolo11n-pose.onnx"))
    img_path = min((shared_path("coco-person-dev") / "images").iterdir())
    img = read_image(img_path)
    dets = model.predict(img)
    assert len(dets) >= 1 and dets.keypoints is not None and dets.keypoints.shape == (len(dets), 17, 3)
    k = dets.keypoints[0]
    visible = k[:, 2] > 0.5
    assert visible.sum() >= 5
    x1, y1, x2, y2 = dets.boxes[0]
    pad = 0.1 * max(x2 - x1, y2 - y1)  # keypoints of a person lie in (or near) its box
    assert np.all((k[visible, 0] >= x1 - pad) & (k[visible, 0] <= x2 + pad))
    assert np.all((k[visible, 1] >= y1 - pad) & (k[visible, 1] <= y2 + pad))

    from edgeq.runtime.draw import draw

    drawn = draw(img, dets)
    plain = draw(img, Detections(dets.boxes, dets.scores, dets.class_ids, dets.labels))
    assert np.any(drawn != plain)  # keypoints and limbs are drawn


def _gt(nk: int = 17) -> dict:
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(1, 4):
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480})
        for j in range(2):
            x, y, w, h = 50.0 + 250 * j, 60.0, 150.0, 300.0
            kx = rng.uniform(x, x + w, nk)
            ky = rng.uniform(y, y + h, nk)
            v = np.where(rng.uniform(size=nk) < 0.8, 2, 0)
            kp = np.stack([np.where(v > 0, kx, 0), np.where(v > 0, ky, 0), v], 1).round(2)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "bbox": [x, y, w, h], "area": w * h,
                         "iscrowd": 0, "keypoints": kp.reshape(-1).tolist(), "num_keypoints": int((v > 0).sum())})
    return {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "person", "supercategory": "person"}]}


def test_oks_of_perfect_keypoints_is_one_and_drops_with_error() -> None:
    gt = _gt()
    label_map = build_label_map(["person"], gt["categories"], None)

    def results(noise: float) -> list[dict]:
        out = []
        for img in gt["images"]:
            anns = [a for a in gt["annotations"] if a["image_id"] == img["id"]]
            boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], np.float32)
            kpts = np.array([a["keypoints"] for a in anns], np.float32).reshape(len(anns), 17, 3)
            kpts[..., :2] += noise
            kpts[..., 2] = 0.9
            det = Detections(boxes, np.array([0.9, 0.8], np.float32), np.zeros(len(anns), np.int64), ["person"],
                             keypoints=kpts)
            recs, dropped = detections_to_coco(det, img["id"], label_map, with_keypoints=True)
            assert dropped == 0 and len(recs[0]["keypoints"]) == 51
            out += recs
        return out

    ids = [i["id"] for i in gt["images"]]
    metrics, per_class, _ = evaluate_coco(gt, results(0.0), ids, ("bbox", "keypoints"))
    assert metrics["keypoints"]["mAP50-95"] == pytest.approx(1.0)
    assert metrics["keypoints"]["recall"] == pytest.approx(1.0)
    assert metrics["bbox"]["mAP50-95"] == pytest.approx(1.0)
    assert per_class["keypoints"][0].ap50_95 == pytest.approx(1.0)
    worse, _, _ = evaluate_coco(gt, results(8.0), ids, ("keypoints",))
    assert worse["keypoints"]["mAP50-95"] < 0.9


def test_small_conversion_writes_a_decodable_pose_artifact(tmp_path: Path) -> None:
    import edgeq
    from edgeq.config import ConvertConfig
    from edgeq.pipeline import convert

    out = tmp_path / "pose.tflite"
    result = convert(_fixture("yolov8n-pose-u8.3.172"), shared_path("coco-calib"), out,
                     ConvertConfig(calib_count=8, on_collapse="warn", weight_rounding="nearest"), progress=False)
    assert result.meta.task == "pose" and result.meta.decoder_version == "yolov8-pose"
    model = edgeq.load(out)
    assert model.meta.task == "pose" and isinstance(model.decoder.head, PoseHead)
    lm = model.meta.output("landmarks")
    assert [c.dtype for c in lm.children] == ["int8"] * 6 and [c.shape[-1] for c in lm.children] == [34, 17] * 3
    img = read_image(min((shared_path("coco-val-dev") / "images").iterdir()))
    dets = model.predict(img, conf=0.0, max_det=5)  # random weights: scores sit at the floor, nothing passes
    assert dets.keypoints is not None and dets.keypoints.shape == (len(dets), 17, 3)

    # the INT8 keypoints of anchors on every level are the float cut graph's, within a few quantization steps
    import onnxruntime as ort

    x, _ = model.preprocess(img)
    rows = np.array([0, 3321, 6399, 6400, 7000, 7999, 8000, 8399])
    got = model.decoder.head.extras(model.run(x), rows)["keypoints"]
    sess = ort.InferenceSession(result.graph.SerializeToString(), providers=["CPUExecutionProvider"])
    rgb, _ = letterbox(img, (640, 640))
    ref_out = dict(zip([o.name for o in sess.get_outputs()],
                       sess.run(None, {sess.get_inputs()[0].name: (rgb.astype(np.float32) / 255).transpose(2, 0, 1)[None]})))
    ref = PoseHead(_float_meta(result.head, result.graph, ["person"]), {}).extras(ref_out, rows)["keypoints"]
    assert got.shape == ref.shape == (len(rows), 17, 3)
    np.testing.assert_allclose(got[..., :2], ref[..., :2], atol=2.0)  # px; stride-32 steps are ~0.1 px here
    np.testing.assert_allclose(got[..., 2], ref[..., 2], atol=0.02)
