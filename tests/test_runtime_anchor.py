"""YOLOv5 per-scale anchor decoding equals the float model's own in-graph decode."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnxruntime as ort

from conftest import shared_path
from edgeq.calib.preprocess import letterbox, read_image, to_nchw_float
from edgeq.graph.cut import cut_at_head
from edgeq.families import discover_head
from edgeq.graph.load import load_model
from edgeq.families import get_family
from edgeq.meta.build import build_meta
from edgeq.meta.schema import Quant
from edgeq.families.yolov5 import AnchorHead
from edgeq.runtime.decoder import Decoder


class _T:  # a float "artifact tensor" for the metadata builder
    def __init__(self, name, shape):
        self.name, self.shape, self.dtype, self.scale, self.zero_point = name, shape, "float32", 1.0, 0


def test_anchor_decoder_matches_in_graph_decode(val_dev):
    m = load_model(shared_path("models", "yolov5n.onnx"))
    head = discover_head(m.model, m.info)
    cut = cut_at_head(m.model, head)
    full = ort.InferenceSession(m.model.SerializeToString(), providers=["CPUExecutionProvider"])
    part = ort.InferenceSession(cut.SerializeToString(), providers=["CPUExecutionProvider"])
    tensors = [_T(e.name, tuple(e.shape)) for e in head.endpoints]
    meta = build_meta(m.info, get_family("yolov5").outputs(head, tensors, layout="nchw"), _T("images", (1, 640, 640, 3)), {}, name="v5", decoder_version="yolov5")
    dec = Decoder(meta)
    for path in sorted((val_dev / "images").glob("*.jpg"))[:3]:
        x = to_nchw_float(letterbox(read_image(path), (640, 640))[0])
        ref = full.run(None, {"images": x})[0][0]  # (25200, 85): cx, cy, w, h px, obj, cls
        raw = dict(zip([e.name for e in head.endpoints], part.run(None, {"images": x})))
        got = dec.decode(raw, conf=0.25, iou=0.6)
        score = ref[:, 4:5] * ref[:, 5:]
        best = score.max(1)
        assert len(got.scores) > 0
        for box, s, c in zip(got.boxes, got.scores, got.class_ids):
            i = int(np.argmin(np.abs(best - s) + (score.argmax(1) != c)))  # same score and class
            cx, cy, w, h = ref[i, :4]
            np.testing.assert_allclose(box, [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], atol=0.05)
            assert abs(best[i] - s) < 1e-5


def _combined_head(head):
    """The same head described the old way: one ``detection_i`` endpoint (the whole conv) per level."""
    eps = tuple(
        replace(e, kind="detection", name=f"detection_{e.scale_index}", shape=(1, 255, *e.shape[2:]), channels=())
        for e in head.of_kind("boxes")
    )
    return replace(head, endpoints=eps)


def _same(a, b):
    assert len(a.scores) == len(b.scores) > 0
    np.testing.assert_allclose(a.boxes, b.boxes, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)


def test_split_form_decodes_like_single_tensor_form(val_dev):
    """Split (boxes/objectness/scores per level) and single-tensor metadata decode identically,
    float and quantized (integer-domain objectness threshold on the split form's own scales)."""
    m = load_model(shared_path("models", "yolov5n.onnx"))
    head = discover_head(m.model, m.info)
    old = _combined_head(head)
    split_sess = ort.InferenceSession(cut_at_head(m.model, head).SerializeToString(), providers=["CPUExecutionProvider"])
    old_sess = ort.InferenceSession(cut_at_head(m.model, old).SerializeToString(), providers=["CPUExecutionProvider"])
    img = _T("images", (1, 640, 640, 3))
    split_outs = get_family("yolov5").outputs(head, [_T(e.name, tuple(e.shape)) for e in head.endpoints], layout="nchw")
    old_outs = get_family("yolov5").outputs(old, [_T(e.name, tuple(e.shape)) for e in old.endpoints], layout="nchw")
    assert [o.name for o in split_outs] == ["boxes", "objectness", "scores"] and [o.name for o in old_outs] == ["detection"]
    assert split_outs[0].encoding == "anchor" and split_outs[0].anchors == old_outs[0].anchors
    assert split_outs[2].score_format == "obj_x_class" and all(c.stride for o in split_outs for c in o.children)
    dec_split = Decoder(build_meta(m.info, split_outs, img, {}, name="v5", decoder_version="yolov5"))
    dec_old = Decoder(build_meta(m.info, old_outs, img, {}, name="v5", decoder_version="yolov5"))
    assert isinstance(dec_split.head, AnchorHead) and isinstance(dec_old.head, AnchorHead)
    # quantized split form: one int8 scale per tensor, from its own range
    quant, scales = {}, {}
    for path in sorted((val_dev / "images").glob("*.jpg"))[:3]:
        x = to_nchw_float(letterbox(read_image(path), (640, 640))[0])
        split = dict(zip([e.name for e in head.endpoints], split_sess.run(None, {"images": x})))
        whole = dict(zip([e.name for e in old.endpoints], old_sess.run(None, {"images": x})))
        for conf in (0.25, 0.01):
            _same(dec_split.decode(split, conf=conf, iou=0.6), dec_old.decode(whole, conf=conf, iou=0.6))
        codes, deq = {}, {}
        for name, v in split.items():
            lo, hi = min(float(v.min()), 0.0), max(float(v.max()), 0.0)
            s = scales.setdefault(name, (hi - lo) / 255)
            zp = int(round(-128 - lo / s))
            codes[name] = np.clip(np.round(v / s) + zp, -128, 127).astype(np.int8)
            deq[name] = ((codes[name].astype(np.float32) - zp) * s).astype(np.float32)
            quant[name] = Quant(scale=s, zero_point=zp, dtype="int8")
        dec_q = Decoder(dec_split.meta, quant)
        for conf in (0.25, 0.01):
            _same(dec_q.decode(codes, conf=conf, iou=0.6), dec_split.decode(deq, conf=conf, iou=0.6))
    assert len({round(s, 6) for s in scales.values()}) == 9


def test_converted_yolov5n_has_nine_int8_outputs_with_own_scales(tmp_path, calib_dir, val_dev):
    from edgeq.config import ConvertConfig
    from edgeq.pipeline import convert
    from edgeq.runtime import load

    out = tmp_path / "yolov5n-smart.tflite"
    res = convert(shared_path("models", "yolov5n.onnx"), calib_dir, out, ConvertConfig(calib_count=8, on_collapse="warn"), progress=False)
    meta = res.meta
    assert meta.decoder_version == "yolov5"
    rounding = meta.edgeq["techniques"]["weight_rounding"]  # float weights: GPTQ rounds every conv
    assert rounding["convs"] == 66 and rounding["images"] == 8 and rounding["median_error_ratio"] < 0.5
    assert [o.name for o in meta.outputs] == ["boxes", "objectness", "scores"]
    boxes = meta.output("boxes")
    # HAL's `anchors` type: [w, h] pairs, three per level in level order
    assert boxes.encoding == "anchor" and np.asarray(boxes.anchors).shape == (9, 2)
    assert meta.output("scores").score_format == "obj_x_class"
    phys = [c for o in meta.outputs for c in o.children]
    assert [c.shape[-1] for c in phys] == [12] * 3 + [3] * 3 + [240] * 3
    assert all(c.dtype == "int8" and c.quantization is not None and c.stride in (8, 16, 32) for c in phys)
    assert all(dict(c.dshape)["num_anchors_x_features"] == c.shape[-1] for c in phys)
    by_level = {}
    for c in phys:
        by_level.setdefault(c.stride, []).append(c.quantization.scale)
    for s in by_level.values():  # boxes get a finer step than objectness and class logits
        assert len(set(s)) == 3 and s[0] < s[1] and s[0] < s[2]
    model = load(out)
    assert len(model.meta.outputs) == 3 and isinstance(model.decoder.head, AnchorHead)
    det = model.predict(read_image(sorted((val_dev / "images").glob("*.jpg"))[0]), conf=0.25)
    assert len(det.scores) > 0


def test_anchors_read_as_flat_pairs_or_per_level():
    from edgeq.families.yolov5 import _anchors_per_level

    nested = [[[10, 13], [16, 30], [33, 23]], [[30, 61], [62, 45], [59, 119]], [[116, 90], [156, 198], [373, 326]]]
    flat = [pair for level in nested for pair in level]
    for given in (nested, flat):
        levels = _anchors_per_level(given, 3)
        assert levels is not None and [lv.tolist() for lv in levels] == nested
    assert _anchors_per_level(flat[:8], 3) is None, "8 pairs cannot be shared evenly by 3 levels"
    assert _anchors_per_level([1.0, 2.0], 1) is None
