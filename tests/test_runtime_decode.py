"""Decoder correctness: float reference models, per-scale DFL vs the ONNX graph, integer thresholds."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edgeq.calib.preprocess import letterbox, read_image, to_nchw_float
from edgeq.errors import ArtifactError
from edgeq.meta.read import read_meta
from edgeq.meta.schema import ModelMeta, Output, Quant
from edgeq.runtime import load
from edgeq.decode.fields import Field, QParams, candidate_anchors, select_scores, single_label_codes
from edgeq.runtime.decoder import Decoder

SHARED = Path(os.environ.get("EDGEQ_SHARED", Path(__file__).resolve().parents[1].parent / "shared")) / "data"


def shared_path(*parts: str) -> Path:
    """A file under shared/data, or skip (same rule as conftest.shared_path)."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not found: {p} (set EDGEQ_SHARED or put shared/ beside the repo)")
    return p

BUS_LIKE = "000000000139.jpg"  # living room: tv, chairs, person, plants (COCO val2017)


def _image(val_dev: Path, name: str = BUS_LIKE) -> np.ndarray:
    return read_image(val_dev / "images" / name)


# ----------------------------------------------------------------------------- float flat path


def test_yolov8n_onnx_predicts_sensible_detections(yolov8n_onnx: Path, val_dev: Path) -> None:
    model = load(yolov8n_onnx)
    img = _image(val_dev)
    det = model.predict(img, conf=0.25)
    names = det.names
    assert "tv" in names[:2] and "chair" in names and "person" in names
    assert det.masks is None
    h, w = img.shape[:2]
    assert (det.boxes[:, [0, 2]] <= w).all() and (det.boxes[:, [1, 3]] <= h).all()
    assert (det.boxes[:, 2] > det.boxes[:, 0]).all() and (det.boxes[:, 3] > det.boxes[:, 1]).all()
    assert np.all(np.diff(det.scores) <= 0), "detections must be sorted best first"
    tv = det.boxes[names.index("tv")]
    # The TV in 000000000139 (COCO annotation 5.5,166.8,154.7,262.7 xyxy, rounded).
    np.testing.assert_allclose(tv, [5.5, 166.8, 154.7, 262.7], atol=4)
    assert set(det.timings_ms) == {"preprocess", "inference", "decode", "masks"}


def test_yolov5n_obj_x_class(val_dev: Path) -> None:
    model = load(shared_path("models", "yolov5n.onnx"))
    assert model.meta.decoder_version == "yolov5"
    det = model.predict(_image(val_dev), conf=0.25)
    assert det.names[:2] == ["tv", "chair"]
    assert (det.scores > 0.25).all() and (det.scores <= 1).all()


# ----------------------------------------------------------------------------- per-scale DFL == graph


def _head_convs(model) -> list[tuple[str, str, int]]:  # noqa: ANN001 (onnx.ModelProto)
    """Per stride (in graph order): the 64-channel box conv and nc-channel class conv that one
    Concat joins, found by graph structure (Conv producers and their weight shapes)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}

    def out_channels(name: str) -> int | None:
        node = producers.get(name)
        return int(inits[node.input[1]].dims[0]) if node is not None and node.op_type == "Conv" else None

    pairs = []
    for node in model.graph.node:
        if node.op_type == "Concat" and len(node.input) == 2:
            ch = [out_channels(i) for i in node.input]
            if ch[0] == 64 and ch[1] is not None:
                pairs.append((node.input[0], node.input[1], ch[1]))
    return pairs


def _per_scale_meta(
    pairs: list[tuple[str, str, int]], shapes: dict[str, tuple[int, ...]], labels: list[str]
) -> ModelMeta:
    """Float NCHW per-scale metadata for the exposed head convs (what a smart float export says)."""

    def child(name: str, kind: str, i: int) -> Output:
        _, c, h, w = shapes[name]
        return Output(
            name=name,
            type=kind,
            shape=[1, c, h, w],
            dshape=[("batch", 1), ("num_features", c), ("height", h), ("width", w)],
            dtype="float32",
            stride=640 // h,
            scale_index=i,
        )

    boxes = Output("boxes", "boxes", [1, 4, 8400], encoding="dfl", decoder="ultralytics",
                   children=[child(b, "boxes", i) for i, (b, _, _) in enumerate(pairs)])
    scores = Output("scores", "scores", [1, len(labels), 8400], score_format="per_class",
                    activation_required="sigmoid",
                    children=[child(s, "scores", i) for i, (_, s, _) in enumerate(pairs)])
    return ModelMeta("yolov8", "detect", labels, [1, 3, 640, 640], "nchw", [boxes, scores], input_dtype="float32",
                     nms="class_aware")


@pytest.mark.parametrize("image", [BUS_LIKE, "000000006818.jpg", "000000017627.jpg"])
def test_per_scale_dfl_matches_onnx_graph(yolov8n_onnx: Path, val_dev: Path, image: str) -> None:
    """Decoding the raw per-scale head convs (DFL softmax, dist2bbox, sigmoid in numpy) gives the
    float model's own decoded output0: same detections, boxes within 0.5 px."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(yolov8n_onnx))
    pairs = _head_convs(model)
    assert len(pairs) == 3
    for b, s, _ in pairs:
        model.graph.output.extend([onnx.helper.make_empty_tensor_value_info(n) for n in (b, s)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rgb, _ = letterbox(_image(val_dev, image), (640, 640))
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(None, {"images": to_nchw_float(rgb)})))

    flat_meta = read_meta(yolov8n_onnx)
    scale_meta = _per_scale_meta(pairs, {k: v.shape for k, v in outs.items()}, flat_meta.labels)
    for conf in (0.25, 0.05):
        ref = Decoder(flat_meta).decode(outs, conf=conf)
        got = Decoder(scale_meta).decode(outs, conf=conf)
        assert len(ref.scores) >= 1
        assert len(got.scores) == len(ref.scores)
        np.testing.assert_array_equal(got.class_ids, ref.class_ids)
        np.testing.assert_allclose(got.scores, ref.scores, atol=1e-5)
        np.testing.assert_allclose(got.boxes, ref.boxes, atol=0.5)


# ----------------------------------------------------------------------------- integer thresholds


def _float_reference_candidates(field: Field, rows: np.ndarray, conf: float, sigmoid: bool, multi: bool):
    real = field.values(rows)
    score = 1 / (1 + np.exp(-real)) if sigmoid else real
    return select_scores(score, conf, multi)


@pytest.mark.parametrize("conf", [0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("sigmoid", [True, False])
def test_integer_threshold_equals_float_threshold(conf: float, sigmoid: bool) -> None:
    rng = np.random.default_rng(7)
    for dtype, (lo, hi), zp in (("int8", (-128, 128), 108), ("uint8", (0, 256), 3), ("int8", (-128, 128), -128)):
        q = rng.integers(lo, hi, size=(6400, 80)).astype(dtype)
        scale = 0.178 if sigmoid else 1 / 255
        field = Field("x", 1, slice(None), QParams.from_quant(Quant(scale, zp, dtype), 1, "x"))
        act = "sigmoid" if sigmoid else None
        for multi in (False, True):
            idx = candidate_anchors(field, q, conf, act)
            real = field.values(q[idx])
            r, c, s = select_scores(1 / (1 + np.exp(-real)) if sigmoid else real, conf, multi)
            rr, rc, rs = _float_reference_candidates(field, q, conf, sigmoid, multi)
            np.testing.assert_array_equal(idx[r], rr)
            np.testing.assert_array_equal(c, rc)
            np.testing.assert_array_equal(s, rs)


@pytest.mark.parametrize("conf", [0.0, 0.001, 0.004, 0.01, 0.25, 0.9])
def test_single_label_codes_equal_float_selection(conf: float) -> None:
    """Argmax + threshold on the codes == select_scores on dequantized, activated scores.

    Cases: probabilities with the zero point at the lowest code (combined outputs, where conf
    0.001 used to let every anchor through), sigmoid logits, and a scale so coarse that sigmoid
    saturates (distinct codes, equal floats: the lowest tied class must win, as in float).
    """
    rng = np.random.default_rng(5)
    cases = (("int8", 1 / 246, -127, None), ("int8", 0.178, 10, "sigmoid"), ("uint8", 0.6, 128, "sigmoid"))
    for dtype, scale, zp, act in cases:
        lo, hi = (-128, 128) if dtype == "int8" else (0, 256)
        q = rng.integers(lo, hi, size=(4000, 80)).astype(dtype)
        q[:2000] = np.minimum(q[:2000], zp + 2)  # plenty of low scores and ties, as real heads have
        field = Field("x", 1, slice(None), QParams.from_quant(Quant(scale, zp, dtype), 1, "x"))
        picks = single_label_codes(field, q, conf, act)
        rr, rc, rs = _float_reference_candidates(field, q, conf, act == "sigmoid", False)
        assert picks is not None
        np.testing.assert_array_equal(picks[0], rr)
        np.testing.assert_array_equal(picks[1], rc)
        np.testing.assert_array_equal(picks[2], rs)


@pytest.mark.parametrize("multi", [False, True])
def test_lowest_code_of_a_floored_score_output_is_never_a_detection(multi: bool) -> None:
    """Score logits floored at logit(1e-4): below that confidence the floor code would tie every
    background anchor with it; the decoder treats that code as saturated, at any conf."""
    from edgeq.decode.fields import pick as _pick

    lo, hi = -9.21, 2.0
    scale = (hi - lo) / 255
    zp = round(-128 - lo / scale)
    field = Field("x", 1, slice(None), QParams.from_quant(Quant(scale, zp, "int8"), 1, "x"))
    q = np.full((500, 80), -128, np.int8)
    q[7, 3], q[9, 5] = 100, -120  # one confident candidate, one weak one just above the floor
    floor_p = 1 / (1 + np.exp(-field.values(np.array([-128], np.int8))[0]))
    for conf in (0.0, 1e-6, float(floor_p) / 2):
        anchors, cls, _ = _pick(field, q, conf, "sigmoid", multi)
        assert sorted(zip(anchors.tolist(), cls.tolist())) == [(7, 3), (9, 5)]
    anchors, _, _ = _pick(field, q, 0.5, "sigmoid", multi)
    assert anchors.tolist() == [7]


def test_integer_threshold_per_channel() -> None:
    rng = np.random.default_rng(3)
    q = rng.integers(-128, 128, size=(2000, 8)).astype(np.int8)
    quant = Quant(scale=list(rng.uniform(0.05, 0.3, 8)), zero_point=list(rng.integers(-20, 20, 8)), axis=1)
    field = Field("x", 1, slice(None), QParams.from_quant(quant, 1, "x"))
    for conf in (0.01, 0.3, 0.8):
        idx = candidate_anchors(field, q, conf, "sigmoid")
        r, c, _ = select_scores(1 / (1 + np.exp(-field.values(q[idx]))), conf, False)
        rr, rc, _ = _float_reference_candidates(field, q, conf, True, False)
        np.testing.assert_array_equal(idx[r], rr)
        np.testing.assert_array_equal(c, rc)


def test_smart_int8_decode_equals_dequantized_float_decode(edgefirst_seg_smart: Path, val_dev: Path) -> None:
    """The int8 smart path equals decoding the same tensors dequantized to float32 up front."""
    model = load(edgefirst_seg_smart)
    x, _ = model.preprocess(_image(val_dev))
    raw = model.run(x)
    phys = {p.name: p for o in model.meta.outputs for p in o.physical}
    quant = {n: phys[n].quantization for n in raw}
    real = {n: (a.astype(np.float32) - quant[n].zero_point) * quant[n].scale for n, a in raw.items()}
    float_meta = read_meta(edgefirst_seg_smart)
    for o in float_meta.outputs:
        for p in o.physical:
            p.quantization, p.dtype = None, "float32"
    for conf, multi in ((0.25, False), (0.001, False), (0.001, True)):
        a = model.decoder.decode(raw, conf=conf, multi_label=multi)
        b = Decoder(float_meta).decode(real, conf=conf, multi_label=multi)
        assert a.num_candidates == b.num_candidates
        np.testing.assert_array_equal(a.class_ids, b.class_ids)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_allclose(a.coefs, b.coefs, atol=1e-5)


# ----------------------------------------------------------------------------- flat int8 peers


def test_ultralytics_int8_tflite_without_edgefirst_json(val_dev: Path) -> None:
    """Upstream Ultralytics full_integer_quant: int8 input and output, normalized boxes, and only
    Ultralytics' metadata.json; the reader synthesizes the description."""
    path = shared_path("peers", "ultralytics", "yolov8n_full_integer_quant.tflite")
    model = load(path)
    assert model.meta.outputs[0].normalized is True
    x, _ = model.preprocess(_image(val_dev))
    assert x.dtype == np.int8 and x.shape == (1, 640, 640, 3)
    det = model.predict(_image(val_dev))
    assert det.names[:2] == ["tv", "chair"]
    np.testing.assert_allclose(det.boxes[0], [5.5, 166.8, 154.7, 262.7], atol=6)


def test_meta_override_and_combined_int8(val_dev: Path) -> None:
    det_path = shared_path("peers", "edgefirst", "yolov8n-int8.tflite")
    meta = read_meta(det_path)
    model = load(det_path, meta=meta)
    det = model.predict(_image(val_dev))
    assert det.names[0] == "tv" and len(det) >= 5


def test_unknown_model_is_a_clear_error(tmp_path: Path, headless_onnx: Path) -> None:
    bogus = tmp_path / "model.bin"
    bogus.write_bytes(b"\0" * 64)
    with pytest.raises(ArtifactError, match="no appended ZIP"):
        read_meta(bogus)
    with pytest.raises(ArtifactError, match="unknown model type"):
        load(bogus)
    with pytest.raises(ArtifactError):
        read_meta(headless_onnx)
