"""Parity with EdgeFirst HAL's decoder (``edgefirst_hal``) on EdgeFirst's own INT8 artifacts.

Both decoders get the same raw int8 outputs of one LiteRT run and the artifact's edgefirst.json;
NMS settings match HAL's (class-agnostic, single label, IoU 0.7, no pre-NMS cap, max_det 300).
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgeq.calib.preprocess import read_image
from edgeq.meta.read import read_meta
from edgeq.runtime import load
from edgeq.runtime.artifact import Model
from edgeq.decode.masks import process_masks
from edgeq.decode.nms import box_iou

hal = pytest.importorskip("edgefirst_hal", reason="edgefirst-hal is not installed (pip install edgefirst-hal)")

SHARED = Path(os.environ.get("EDGEQ_SHARED", Path(__file__).resolve().parents[1].parent / "shared")) / "data"
N_IMAGES = 5


def _shared(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not found: {p} (set EDGEQ_SHARED or put shared/ beside the repo)")
    return p


def _images() -> list[Path]:
    return sorted((_shared("coco-val-dev") / "images").glob("*.jpg"))[:N_IMAGES]


def _hal_tensors(model: Model, outs: list[np.ndarray]) -> list:
    """Raw outputs as HAL tensors carrying the runtime tensors' quantization (as HAL expects)."""
    tensors = []
    for desc, arr in zip(model.backend.outputs, outs):
        t = hal.Tensor(list(arr.shape), dtype=str(arr.dtype), name=desc.name)
        t.from_numpy(arr)
        t.set_quantization_per_tensor(float(desc.quant.scale), int(desc.quant.zero_point))
        tensors.append(t)
    return tensors


def _hal_decoder(json_str: str, conf: float):
    dec = hal.Decoder.new_from_json_str(json_str, score_threshold=conf, iou_threshold=0.7)
    dec.pre_nms_top_k = 0  # no pre-NMS cap, like ours
    dec.max_det = 300
    return dec


def _run(model: Model, image: Path):
    img = read_image(image)
    x, lb = model.preprocess(img)
    outs = model.backend.run(x)
    raw = {name: outs[i] for name, i in model.binding.items()}
    return img, lb, outs, raw


def _matched(ours, hb: np.ndarray, hs: np.ndarray, hc: np.ndarray) -> np.ndarray:
    """Per our detection: does HAL have one with the same class and score, box within 1 px?"""
    close = np.abs(ours.boxes[:, None, :] - hb[None]).max(axis=2) <= 1.0
    same = (ours.class_ids[:, None] == hc[None]) & (np.abs(ours.scores[:, None] - hs[None]) < 1e-5)
    return (close & same).any(axis=1)


@pytest.fixture(scope="module")
def smart() -> tuple[Model, str]:
    path = _shared("peers", "edgefirst", "yolov8n-seg-smart-int8.tflite")
    return load(path), zipfile.ZipFile(path).read("edgefirst.json").decode()


def test_smart_seg_boxes_match_hal_at_conf_025(smart: tuple[Model, str]) -> None:
    model, js = smart
    dec = _hal_decoder(js, 0.25)
    total = 0
    for image in _images():
        _, _, outs, raw = _run(model, image)
        ours = model.decoder.decode(raw, conf=0.25, iou=0.7, agnostic=True)
        hb, hs, hc, _ = dec.decode(_hal_tensors(model, outs), max_boxes=300)
        assert dec.normalized_boxes
        hb = hb * np.array(model.input_hw[::-1] * 2, np.float32)
        assert len(hs) == len(ours.scores), image.name
        assert _matched(ours, hb, hs, hc).all(), image.name
        np.testing.assert_array_equal(np.sort(ours.class_ids), np.sort(hc.astype(np.int64)))
        total += len(hs)
    assert total >= 20


def test_smart_seg_boxes_match_hal_at_conf_0001(smart: tuple[Model, str]) -> None:
    """At validation settings the int8 scores tie often; HAL breaks ties in another order, so a
    few kept boxes swap with an equal-scored overlapping twin. Everything else must match."""
    model, js = smart
    dec = _hal_decoder(js, 0.001)
    n_ours = n_matched = 0
    for image in _images():
        _, _, outs, raw = _run(model, image)
        ours = model.decoder.decode(raw, conf=0.001, iou=0.7, agnostic=True)
        hb, hs, hc, _ = dec.decode(_hal_tensors(model, outs), max_boxes=300)
        hb = hb * np.array(model.input_hw[::-1] * 2, np.float32)
        assert len(hs) == len(ours.scores), image.name
        ok = _matched(ours, hb, hs, hc)
        for i in np.flatnonzero(~ok):  # each miss must be a tie swap
            tie = np.abs(hs - ours.scores[i]) < 1e-6
            assert (tie & (box_iou(ours.boxes[i : i + 1], hb)[0] > 0.7)).any(), (image.name, i)
        n_ours += len(ok)
        n_matched += int(ok.sum())
    assert n_matched >= 0.95 * n_ours


def test_smart_seg_masks_match_hal(smart: tuple[Model, str]) -> None:
    """Our masks vs HAL's ``MaskResolution.Scaled`` masks at original resolution (letterbox-aware)."""
    model, js = smart
    dec = _hal_decoder(js, 0.25)
    processor = hal.ImageProcessor()
    ious = []
    for image in _images():
        img, lb, outs, raw = _run(model, image)
        h0, w0 = img.shape[:2]
        ours = model.decoder.decode(raw, conf=0.25, iou=0.7, agnostic=True)
        boxes = lb.to_original(ours.boxes)
        masks = process_masks(model.decoder.protos(raw), ours.coefs, boxes, lb, model.input_hw)
        hb, hs, hc, proto = dec.decode_proto(_hal_tensors(model, outs), max_boxes=300)
        in_h, in_w = model.input_hw
        region = (lb.pad_x / in_w, lb.pad_y / in_h, (in_w - lb.pad_x) / in_w, (in_h - lb.pad_y) / in_h)
        scaled = hal.MaskResolution.Scaled(w0, h0)
        tiles = processor.materialize_masks(hb, hs, hc, proto, letterbox=region, resolution=scaled)
        hal_boxes = lb.to_original(hb * np.array([in_w, in_h, in_w, in_h], np.float32))
        assert len(tiles) == len(masks)
        for k, tile in enumerate(tiles):
            # A Scaled tile covers the box rows/cols round(y1)..round(y2), round(x1)..round(x2).
            full = np.zeros((h0, w0), bool)
            x0, y0 = int(round(hal_boxes[k, 0])), int(round(hal_boxes[k, 1]))
            t = tile[..., 0] > 127
            full[y0 : y0 + t.shape[0], x0 : x0 + t.shape[1]] = t[: h0 - y0, : w0 - x0]
            ious.append((full & masks[k]).sum() / max((full | masks[k]).sum(), 1))
    ious_arr = np.asarray(ious)
    assert len(ious_arr) >= 20
    assert np.median(ious_arr) >= 0.98 and ious_arr.mean() >= 0.97 and ious_arr.min() >= 0.9


@pytest.mark.parametrize("name", ["yolov8n-int8.tflite", "yolov8n-seg-combined-int8.tflite"])
def test_combined_int8_matches_hal(name: str) -> None:
    """Flat int8 ``detection`` outputs (normalized boxes). The detection file's edgefirst.json is
    schema v1 with map-style quantization, which HAL rejects; our reader's v2 rendering is used."""
    path = _shared("peers", "edgefirst", name)
    model = load(path)
    dec = _hal_decoder(json.dumps(read_meta(path).to_json()), 0.25)
    for image in _images()[:3]:
        _, _, outs, raw = _run(model, image)
        ours = model.decoder.decode(raw, conf=0.25, iou=0.7, agnostic=True)
        hb, hs, hc, _ = dec.decode(_hal_tensors(model, outs), max_boxes=300)
        hb = hb * np.array(model.input_hw[::-1] * 2, np.float32)
        assert len(hs) == len(ours.scores)
        assert _matched(ours, hb, hs, hc).all()
