"""Masks: direct original-resolution sampling vs the two-stage reference; NCHW == NHWC protos."""
from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeq.calib.preprocess import Letterbox, letterbox
from edgeq.meta.schema import ModelMeta, Output
from edgeq.runtime import load
from edgeq.runtime.decoder import Decoder
from edgeq.decode.masks import process_masks

SHARED = Path(os.environ.get("EDGEQ_SHARED", Path(__file__).resolve().parents[1].parent / "shared")) / "data"


def _two_stage(
    protos: np.ndarray, coef: np.ndarray, box_in: np.ndarray, lb: Letterbox, in_hw: tuple[int, int]
) -> np.ndarray:
    """MODELS.md §5 literally: sigmoid at proto res, bilinear to the input size, crop to the box
    (pixel centres), > 0.5, remove the pad, resize to the original size."""
    prob = 1 / (1 + np.exp(-(protos @ coef)))
    up = cv2.resize(prob.astype(np.float32), (in_hw[1], in_hw[0]), interpolation=cv2.INTER_LINEAR)
    x1, y1, x2, y2 = box_in
    cols, rows = np.arange(in_hw[1]) + 0.5, np.arange(in_hw[0]) + 0.5
    inside = ((rows >= y1) & (rows < y2))[:, None] & ((cols >= x1) & (cols < x2))[None, :]
    m = ((up > 0.5) & inside).astype(np.float32)
    top, left = int(lb.pad_y), int(lb.pad_x)
    h, w = round(lb.orig_h * lb.gain), round(lb.orig_w * lb.gain)
    m = m[top : top + h, left : left + w]
    return cv2.resize(m, (lb.orig_w, lb.orig_h), interpolation=cv2.INTER_LINEAR) > 0.5


def _random_protos(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Smooth protos (blurred noise) so masks have real shapes rather than salt and pepper.
    raw = rng.normal(size=(160, 160, 32)).astype(np.float32)
    protos = np.stack([cv2.GaussianBlur(raw[..., i], (0, 0), 6) * 6 for i in range(32)], axis=-1)
    return protos, rng.normal(size=(6, 32)).astype(np.float32)


@pytest.mark.parametrize("orig_hw", [(480, 640), (427, 640), (640, 480), (1000, 1500), (240, 320)])
def test_masks_equal_two_stage_reference(orig_hw: tuple[int, int]) -> None:
    protos, coefs = _random_protos(sum(orig_hw))
    _, lb = letterbox(np.zeros((*orig_hw, 3), np.uint8), (640, 640))
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 400, (6, 2))
    boxes_in = np.concatenate([xy, xy + rng.uniform(60, 240, (6, 2))], 1).astype(np.float32)
    boxes_in[:, [1, 3]] = np.clip(boxes_in[:, [1, 3]], lb.pad_y, 640 - lb.pad_y)
    boxes_in[:, [0, 2]] = np.clip(boxes_in[:, [0, 2]], lb.pad_x, 640 - lb.pad_x)
    boxes = lb.to_original(boxes_in)
    got = process_masks(protos, coefs, boxes, lb, (640, 640))
    assert got.shape == (6, *orig_hw)
    ious = []
    for k in range(6):
        ref = _two_stage(protos, coefs[k], boxes_in[k], lb, (640, 640))
        ious.append((got[k] & ref).sum() / max((got[k] | ref).sum(), 1))
        if math.isclose(lb.gain, 1.0):
            # One resampling either way: only threshold-boundary pixels may differ.
            assert (got[k] != ref).sum() <= 0.002 * max(ref.sum(), 1) + 2, k
    # gain != 1: the reference resamples a binary mask a second time, which erodes edges; the
    # two agree up to edge pixels (worst on masks of ~300 px in a 240x320 image).
    assert min(ious) >= 0.9 and np.mean(ious) >= 0.96, ious


def test_nchw_and_nhwc_protos_agree() -> None:
    protos, coefs = _random_protos(3)

    def meta(nhwc: bool) -> ModelMeta:
        det = Output("det", "detection", [1, 37, 2], dshape=[("batch", 1), ("num_features", 37), ("num_boxes", 2)],
                     score_format="per_class", normalized=False, dtype="float32")
        shape = [1, 160, 160, 32] if nhwc else [1, 32, 160, 160]
        dshape = ([("batch", 1), ("height", 160), ("width", 160), ("num_protos", 32)] if nhwc
                  else [("batch", 1), ("num_protos", 32), ("height", 160), ("width", 160)])
        pro = Output("protos", "protos", shape, dshape=dshape, dtype="float32", stride=4)
        return ModelMeta("yolov8", "segment", ["a"], [1, 3, 640, 640], "nchw", [det, pro])

    det = np.zeros((1, 37, 2), np.float32)
    det[0, :5, 0] = [200, 200, 180, 120, 0.9]
    det[0, :5, 1] = [450, 400, 150, 200, 0.8]
    det[0, 5:, :] = coefs[:2].T
    lb = Letterbox(gain=1.0, pad_x=0.0, pad_y=80.0, orig_h=480, orig_w=640)
    results = []
    for nhwc in (True, False):
        p = protos[None] if nhwc else protos.transpose(2, 0, 1)[None]
        dec = Decoder(meta(nhwc))
        res = dec.decode({"det": det, "protos": np.ascontiguousarray(p)}, conf=0.25)
        np.testing.assert_allclose(res.coefs, coefs[:2], rtol=1e-6)
        protos_hwc = dec.protos({"det": det, "protos": p})
        results.append(process_masks(protos_hwc, res.coefs, lb.to_original(res.boxes), lb, (640, 640)))
    np.testing.assert_array_equal(results[0], results[1])
    assert results[0].any()


def test_seg_predict_masks_shape_and_empty() -> None:
    path = SHARED / "models" / "yolov8n-seg.onnx"
    img_path = SHARED / "coco-val-dev" / "images" / "000000000139.jpg"
    if not path.exists() or not img_path.exists():
        pytest.skip(f"shared data not found: {path}")
    model = load(path)
    img = cv2.imread(str(img_path))
    det = model.predict(img, conf=0.25)
    assert det.masks is not None and det.masks.shape == (len(det), *img.shape[:2]) and det.masks.dtype == bool
    # Every mask lies inside its (pixel-centre) box and is not empty for confident detections.
    for k in range(len(det)):
        ys, xs = np.nonzero(det.masks[k])
        assert ys.size > 0
        x1, y1, x2, y2 = det.boxes[k]
        assert xs.min() + 0.5 >= x1 and xs.max() + 0.5 < x2 + 1e-3
        assert ys.min() + 0.5 >= y1 and ys.max() + 0.5 < y2 + 1e-3
    tv = det.masks[det.names.index("tv")]
    assert tv.sum() > 0.8 * (det.boxes[0, 2] - det.boxes[0, 0]) * (det.boxes[0, 3] - det.boxes[0, 1])
    none = model.predict(img, conf=0.9999)
    assert len(none) == 0 and none.masks is not None and none.masks.shape == (0, *img.shape[:2])
    assert model.predict(img, masks=False).masks is None
