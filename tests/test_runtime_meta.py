"""read_meta (appended ZIP, ONNX metadata_props, synthesized Ultralytics), output binding, letterbox."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from edgeq.calib.preprocess import letterbox
from edgeq.errors import ArtifactError
from edgeq.meta.embed import append_zip, metadata_files
from edgeq.meta.read import TensorDesc, read_meta, synthesize_ultralytics
from edgeq.meta.schema import ModelMeta, Output, Quant
from edgeq.runtime import load
from edgeq.runtime.artifact import bind_outputs

SHARED = Path(os.environ.get("EDGEQ_SHARED", Path(__file__).resolve().parents[1].parent / "shared")) / "data"


def _shared(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not found: {p} (set EDGEQ_SHARED or put shared/ beside the repo)")
    return p


# ----------------------------------------------------------------------------- read_meta


def test_read_edgefirst_smart_seg(edgefirst_seg_smart: Path) -> None:
    meta = read_meta(edgefirst_seg_smart)
    assert meta.task == "segment" and meta.decoder_version == "yolov8"
    assert meta.input_layout == "nhwc" and meta.imgsz == (640, 640)
    assert len(meta.labels) == 80 and meta.labels[0] == "person" and meta.labels[-1] == "toothbrush"
    boxes, scores, coefs, protos = (meta.output(t) for t in ("boxes", "scores", "mask_coefs", "protos"))
    assert boxes is not None and boxes.encoding == "dfl"
    assert [c.stride for c in boxes.children] == [8, 16, 32]
    assert [c.shape for c in boxes.children] == [[1, 80, 80, 64], [1, 40, 40, 64], [1, 20, 20, 64]]
    assert scores is not None and scores.activation_required == "sigmoid"
    assert [c.shape[-1] for c in scores.children] == [80, 80, 80]
    assert coefs is not None and len(coefs.children) == 3
    assert protos is not None and protos.shape == [1, 160, 160, 32]
    q = boxes.children[0].quantization
    assert q is not None and q.zero_point == -42 and abs(q.scale - 0.15675) < 1e-4


def test_read_synthesized_yolov8n(yolov8n_onnx: Path) -> None:
    meta = read_meta(yolov8n_onnx)
    assert meta.decoder_version == "yolov8" and meta.task == "detect"
    assert meta.input_layout == "nchw" and meta.input_shape == [1, 3, 640, 640] and meta.input_dtype == "float32"
    assert len(meta.labels) == 80 and meta.labels[:3] == ["person", "bicycle", "car"]
    (det,) = meta.outputs
    assert (det.name, det.type, det.shape) == ("output0", "detection", [1, 84, 8400])
    assert det.normalized is False and det.score_format == "per_class" and det.quantization is None
    assert det.dshape == [("batch", 1), ("num_features", 84), ("num_boxes", 8400)]
    # The synthesized description is valid v2 that survives a JSON round trip.
    again = ModelMeta.from_json(json.loads(json.dumps(meta.to_json())))
    assert again.outputs[0].to_json() == det.to_json()


def test_read_synthesized_seg_and_yolov5(yolov8n_seg_onnx: Path) -> None:
    seg = read_meta(yolov8n_seg_onnx)
    assert seg.task == "segment"
    protos = seg.output("protos")
    assert protos is not None and protos.shape == [1, 32, 160, 160] and protos.stride == 4
    assert protos.dshape[1] == ("num_protos", 32)
    assert seg.output("detection").shape == [1, 116, 8400]
    v5 = read_meta(_shared("models", "yolov5n.onnx"))
    (det,) = v5.outputs
    assert v5.decoder_version == "yolov5" and det.score_format == "obj_x_class" and det.shape == [1, 25200, 85]
    assert det.dshape == [("batch", 1), ("num_boxes", 25200), ("num_features", 85)]


def test_synthesize_rejects_unknown_heads(tmp_path: Path) -> None:
    props = {"names": "{0: 'a', 1: 'b'}", "imgsz": "[320, 320]", "task": "detect"}
    inp = [TensorDesc("images", (1, 3, 320, 320), "float32")]
    ok = synthesize_ultralytics(props, inp, [TensorDesc("out", (1, 6, 2100), "float32")], tmp_path / "m.onnx", "nchw")
    assert ok.labels == ["a", "b"] and ok.output("detection").shape == [1, 6, 2100]
    v5 = synthesize_ultralytics(props, inp, [TensorDesc("out", (1, 6300, 7), "float32")], tmp_path / "m.onnx", "nchw")
    assert v5.decoder_version == "yolov5"
    with pytest.raises(ArtifactError, match="matches neither"):
        synthesize_ultralytics(props, inp, [TensorDesc("out", (1, 6, 2000), "float32")], tmp_path / "m.onnx", "nchw")
    with pytest.raises(ArtifactError, match="not an Ultralytics export"):
        synthesize_ultralytics(props, inp, [TensorDesc("a", (1, 6), "float32")], tmp_path / "m.onnx", "nchw")
    with pytest.raises(ArtifactError, match="neither edgefirst metadata nor Ultralytics"):
        synthesize_ultralytics({}, inp, [TensorDesc("out", (1, 6, 2100), "float32")], tmp_path / "m.onnx", "nchw")


def test_onnx_metadata_props_edgefirst(yolov8n_onnx: Path, tmp_path: Path) -> None:
    """An ONNX file with metadata_props['edgefirst'] + ['labels'] is read from those, not synthesized."""
    import onnx

    meta = read_meta(yolov8n_onnx)
    doc = meta.to_json()
    doc["name"] = "tagged"
    model = onnx.load(str(yolov8n_onnx))
    del model.metadata_props[:]
    labels = [f"class{i}" for i in range(80)]
    onnx.helper.set_model_props(model, {"edgefirst": json.dumps(doc), "labels": json.dumps(labels)})
    out = tmp_path / "tagged.onnx"
    onnx.save(model, str(out))
    got = read_meta(out)
    assert got.raw["name"] == "tagged" and got.labels == labels
    assert got.outputs[0].to_json() == meta.outputs[0].to_json()


def test_appended_zip_on_any_file(tmp_path: Path) -> None:
    meta = read_meta(_shared("peers", "edgefirst", "yolov8n-seg-smart-int8.tflite"))
    blob = append_zip(b"not really a model" * 10, metadata_files(meta.to_json(), ["x"] * 80))
    path = tmp_path / "model.hef"
    path.write_bytes(blob)
    got = read_meta(path)
    assert got.labels == ["x"] * 80  # labels.txt wins over dataset.classes
    assert [c.name for c in got.output("boxes").children] == ["boxes_0", "boxes_1", "boxes_2"]
    (tmp_path / "bare.tflite").write_bytes(b"TFL3" + b"\0" * 60)
    with pytest.raises(ArtifactError, match="no appended ZIP") as e:
        read_meta(tmp_path / "bare.tflite")
    assert "bare.tflite" in str(e.value) and e.value.fix


# ----------------------------------------------------------------------------- binding


def _phys(name: str, shape: list[int], scale: float | None = None) -> Output:
    q = Quant(scale, 0) if scale is not None else None
    return Output(name, "scores", shape, quantization=q, dtype="int8")


def _meta(*outs: Output) -> ModelMeta:
    return ModelMeta("yolov8", "detect", [], [1, 64, 64, 3], "nhwc", list(outs))


def test_bind_by_name_shape_then_scale(tmp_path: Path) -> None:
    rt = [
        TensorDesc("PartitionedCall:2", (1, 8, 8, 5), "int8", Quant(0.2, 3)),
        TensorDesc("PartitionedCall:0", (1, 8, 8, 5), "int8", Quant(0.1, 3)),
        TensorDesc("PartitionedCall:1", (1, 4, 4, 5), "int8", Quant(0.3, 3)),
        TensorDesc("exact", (1, 2, 2, 5), "int8", Quant(0.4, 3)),
    ]
    meta = _meta(
        _phys("a", [1, 8, 8, 5], 0.1),
        _phys("b", [1, 8, 8, 5], 0.2),
        _phys("c", [1, 4, 4, 5]),
        _phys("exact", [1, 2, 2, 5]),
    )
    assert bind_outputs(meta, rt, tmp_path / "m") == {"a": 1, "b": 0, "c": 2, "exact": 3}


def test_bind_ambiguous_fails_loudly(tmp_path: Path) -> None:
    rt = [TensorDesc("x", (1, 8, 8, 5), "int8", Quant(0.1, 3)), TensorDesc("y", (1, 8, 8, 5), "int8", Quant(0.1, 3))]
    meta = _meta(_phys("a", [1, 8, 8, 5], 0.1), _phys("b", [1, 8, 8, 5], 0.1))
    with pytest.raises(ArtifactError, match="cannot match metadata outputs"):
        bind_outputs(meta, rt, tmp_path / "m")
    with pytest.raises(ArtifactError, match=r"\[1, 3, 3, 5\]"):
        bind_outputs(_meta(_phys("a", [1, 3, 3, 5])), rt, tmp_path / "m")


def test_smart_artifact_binds_by_shape(edgefirst_seg_smart: Path) -> None:
    model = load(edgefirst_seg_smart)
    names = {d.name for d in model.backend.outputs}
    assert not names & {"boxes_0", "scores_0"}  # the runtime names really differ
    x, _ = model.preprocess(np.full((480, 640, 3), 114, np.uint8))
    raw = model.run(x)
    assert set(raw) == {f"{k}_{i}" for k in ("boxes", "scores", "mask_coefs") for i in range(3)} | {"output_1"}
    assert raw["boxes_1"].shape == (1, 40, 40, 64) and raw["scores_2"].shape == (1, 20, 20, 80)
    assert raw["mask_coefs_0"].shape == (1, 80, 80, 32) and raw["output_1"].shape == (1, 160, 160, 32)


# ----------------------------------------------------------------------------- letterbox


@pytest.mark.parametrize("hw", [(480, 640), (640, 427), (1080, 1920), (100, 100), (333, 1000)])
def test_letterbox_round_trip(hw: tuple[int, int]) -> None:
    rng = np.random.default_rng(hw[0])
    img = rng.integers(0, 255, (*hw, 3), dtype=np.uint8)
    rgb, lb = letterbox(img, (640, 640))
    assert rgb.shape == (640, 640, 3)
    xy = rng.uniform(0, 1, (50, 2)) * [hw[1], hw[0]]
    boxes = np.concatenate([xy, xy + rng.uniform(1, 50, (50, 2))], 1).clip(0, [hw[1], hw[0]] * 2).astype(np.float32)
    model_px = boxes * lb.gain + np.array([lb.pad_x, lb.pad_y] * 2, np.float32)
    assert model_px.min() >= 0 and model_px.max() <= 640 + 1e-3
    np.testing.assert_allclose(lb.to_original(model_px), boxes, atol=1e-3)
    # The padding is 114 grey exactly outside the pasted image.
    if lb.pad_y >= 1:
        assert (rgb[: int(lb.pad_y)] == 114).all()
    if lb.pad_x >= 1:
        assert (rgb[:, : int(lb.pad_x)] == 114).all()


def test_preprocess_dtypes(edgefirst_seg_smart: Path) -> None:
    img = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    u8 = load(edgefirst_seg_smart).preprocess(img)[0]
    assert u8.dtype == np.uint8 and u8.shape == (1, 640, 640, 3)
    i8 = load(_shared("peers", "ultralytics", "yolov8n_full_integer_quant.tflite")).preprocess(img)[0]
    assert i8.dtype == np.int8
    np.testing.assert_array_equal(i8.astype(np.int16), u8.astype(np.int16) - 128)  # scale 1/255, zp -128
    f32 = load(_shared("models", "yolov8n.onnx")).preprocess(img)[0]
    assert f32.dtype == np.float32 and f32.shape == (1, 3, 640, 640)
    np.testing.assert_allclose(f32[0].transpose(1, 2, 0) * 255, u8[0], atol=1e-3)


def test_runtime_quantization_wins_over_metadata(edgefirst_seg_smart: Path) -> None:
    """Like HAL, the runtime tensor's scale/zero point are used; wrong metadata values are ignored."""
    meta = read_meta(edgefirst_seg_smart)
    for o in meta.outputs:
        for p in o.physical:
            q = p.quantization
            p.quantization = Quant(q.scale * 3, q.zero_point + 5, q.dtype)
    img = np.random.default_rng(1).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    img[100:300, 200:400] = 30  # something box-like
    good = load(edgefirst_seg_smart).predict(img, conf=0.01)
    bad_meta = load(edgefirst_seg_smart, meta=meta).predict(img, conf=0.01)
    assert len(good) > 0
    np.testing.assert_array_equal(good.boxes, bad_meta.boxes)
    np.testing.assert_array_equal(good.masks, bad_meta.masks)


def test_predict_accepts_grey_and_bgra(yolov8n_onnx: Path) -> None:
    model = load(yolov8n_onnx)
    grey = np.full((240, 320), 90, np.uint8)
    assert model.predict(grey).boxes.shape[1] == 4
    assert model.predict(np.dstack([grey] * 4)).boxes.shape[1] == 4
    with pytest.raises(ValueError, match="expected a BGR image"):
        model.predict(np.zeros((4, 4, 5), np.uint8))
