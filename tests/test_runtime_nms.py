"""NMS: exact greedy semantics on synthetic boxes, class-aware/agnostic, max_det, multi-label."""
from __future__ import annotations

import time

import numpy as np
import pytest

from edgeq.meta.schema import ModelMeta, Output
from edgeq.runtime.decoder import Decoder
from edgeq.decode import nms as nms_module
from edgeq.decode.nms import box_iou, nms, nms_cv2


def _reference(boxes: np.ndarray, scores: np.ndarray, iou: float, max_det: int, cls: np.ndarray | None) -> np.ndarray:
    """Textbook greedy NMS, one pair at a time (slow, obviously right)."""
    keep: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        k = np.asarray(keep, np.int64)
        overlap = box_iou(boxes[i : i + 1], boxes[k])[0] > iou
        if cls is not None:
            overlap &= cls[k] == cls[i]
        if not overlap.any():
            keep.append(int(i))
        if len(keep) >= max_det:
            break
    return np.asarray(keep, np.int64)


def _random_boxes(rng: np.random.Generator, n: int, extent: float = 600) -> tuple[np.ndarray, np.ndarray]:
    xy = rng.uniform(0, extent, (n, 2))
    wh = rng.uniform(2, 120, (n, 2))
    scores = rng.uniform(0, 1, n).astype(np.float32)
    scores[: n // 5] = scores[n // 5 : 2 * (n // 5)]  # plenty of exact ties, as int8 scores have
    return np.concatenate([xy, xy + wh], 1).astype(np.float32), scores


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("aware", [False, True])
@pytest.mark.parametrize("path", ["near_pairs", "chunked"])
def test_nms_equals_reference(seed: int, aware: bool, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if path == "chunked":
        monkeypatch.setattr(nms_module, "PAIR_BUDGET", 0)  # every call falls back
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 1500))  # crosses the chunk boundary
    boxes, scores = _random_boxes(rng, n)
    cls = rng.integers(0, 4, n) if aware else None
    for iou, max_det in ((0.5, 300), (0.7, 25), (0.3, 1000)):
        expected = _reference(boxes, scores, iou, max_det, cls)
        np.testing.assert_array_equal(nms(boxes, scores, iou, max_det, cls), expected)


def test_nms_long_suppression_chain_and_non_positive_iou() -> None:
    """A chain where each box only hits the next needs one fixed-point round per link: past
    MAX_ROUNDS the chunked greedy takes over, with the same result. iou <= 0 has no pair bound."""
    n = 3 * nms_module.MAX_ROUNDS
    x = np.arange(n, dtype=np.float32) * 2
    boxes = np.stack([x, np.zeros(n, np.float32), x + 10, np.full(n, 10, np.float32)], 1)  # IoU(k, k+1) = 2/3
    scores = np.linspace(1, 0.1, n).astype(np.float32)
    for iou in (0.6, 0.0, -1.0):
        np.testing.assert_array_equal(nms(boxes, scores, iou, 1000), _reference(boxes, scores, iou, 1000, None))
    assert nms(boxes, scores, 0.6, 1000).tolist() == list(range(0, n, 2))  # greedy keeps every other one
    far = boxes + np.array([1000, 0, 1000, 0], np.float32)  # two classes side by side, one far off
    both, cls = np.concatenate([boxes, far]), np.repeat([3, 0], n)
    np.testing.assert_array_equal(nms(both, np.r_[scores, scores], 0.6, 1000, cls),
                                  _reference(both, np.r_[scores, scores], 0.6, 1000, cls))


def test_nms_matches_cv2_on_distinct_scores() -> None:
    rng = np.random.default_rng(11)
    boxes, _ = _random_boxes(rng, 800)
    scores = rng.permutation(800).astype(np.float32) / 800  # distinct: tie order cannot differ
    cls = rng.integers(0, 5, 800)
    for c in (None, cls):
        np.testing.assert_array_equal(nms(boxes, scores, 0.6, 300, c), nms_cv2(boxes, scores, 0.6, 300, c))


def test_nms_small_cases() -> None:
    b = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60], [5, 5, 5, 5]], np.float32)
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.95], np.float32)
    assert nms(b, s, 0.5).tolist() == [4, 0, 3]  # zero-area box is kept and suppresses nothing
    assert nms(b, s, 0.5, class_ids=np.array([0, 1, 0, 0, 2])).tolist() == [4, 0, 1, 3]
    assert nms(b, s, 0.5, max_det=2).tolist() == [4, 0]
    assert nms(b[:0], s[:0], 0.5).shape == (0,)
    # IoU exactly at the threshold is kept (suppression needs IoU > iou).
    half = np.array([[0, 0, 10, 10], [0, 0, 10, 20]], np.float32)
    assert nms(half, np.array([0.9, 0.8], np.float32), 0.5).tolist() == [0, 1]


def test_nms_is_fast_at_validation_scale() -> None:
    """Tens of thousands of low-confidence multi-label candidates: the chunked greedy stops at
    max_det and stays in the tens of milliseconds (cv2.dnn.NMSBoxes takes seconds here)."""
    rng = np.random.default_rng(5)
    boxes, scores = _random_boxes(rng, 30000)
    cls = rng.integers(0, 80, 30000)
    t = time.perf_counter()
    keep = nms(boxes, scores, 0.7, 300, cls)
    assert time.perf_counter() - t < 1.0
    assert len(keep) == 300


def _flat_meta(nc: int, nms: str = "class_aware") -> ModelMeta:
    out = Output("out", "detection", [1, 4 + nc, 3], dshape=[("batch", 1), ("num_features", 4 + nc), ("num_boxes", 3)],
                 decoder="ultralytics", score_format="per_class", normalized=False, dtype="float32")
    return ModelMeta("yolov8", "detect", [f"c{i}" for i in range(nc)], [1, 3, 64, 64], "nchw", [out], nms=nms)


def test_multi_label_and_agnostic_through_decoder() -> None:
    # Three anchors; anchor 0 has two classes above conf; anchor 1 duplicates anchor 0's box.
    x = np.zeros((1, 6, 3), np.float32)
    x[0, :4, 0] = [20, 20, 10, 10]
    x[0, :4, 1] = [20, 20, 10, 10]
    x[0, :4, 2] = [50, 50, 8, 8]
    x[0, 4:, 0] = [0.9, 0.85]
    x[0, 4:, 1] = [0.1, 0.8]
    x[0, 4:, 2] = [0.3, 0.0]
    dec = Decoder(_flat_meta(2))
    single = dec.decode({"out": x}, conf=0.25)
    assert single.class_ids.tolist() == [0, 1, 0] and np.allclose(single.scores, [0.9, 0.8, 0.3])
    agnostic = dec.decode({"out": x}, conf=0.25, agnostic=True)
    assert agnostic.class_ids.tolist() == [0, 0] and np.allclose(agnostic.scores, [0.9, 0.3])
    multi = dec.decode({"out": x}, conf=0.25, multi_label=True)
    # (anchor 0, c1) = 0.85 now competes and suppresses (anchor 1, c1) = 0.8 on the same box.
    assert multi.class_ids.tolist() == [0, 1, 0]
    np.testing.assert_allclose(multi.scores, [0.9, 0.85, 0.3])
    np.testing.assert_allclose(single.boxes[0], [15, 15, 25, 25])
    assert len(dec.decode({"out": x}, conf=0.25, max_det=1).scores) == 1


def test_decoder_follows_the_declared_nms_mode() -> None:
    """No ``agnostic`` argument: the file's ``nms`` decides (schema default: class_agnostic)."""
    x = np.zeros((1, 6, 2), np.float32)
    x[0, :4, :] = [[20, 20], [20, 20], [10, 10], [10, 10]]  # two anchors, one box
    x[0, 4:, 0] = [0.9, 0.0]
    x[0, 4:, 1] = [0.0, 0.8]
    meta = _flat_meta(2, nms="class_aware")
    aware = Decoder(meta).decode({"out": x}, conf=0.25)
    assert aware.class_ids.tolist() == [0, 1]
    agnostic = Decoder(_flat_meta(2, nms="class_agnostic")).decode({"out": x}, conf=0.25)
    assert agnostic.class_ids.tolist() == [0]
    assert Decoder(meta).decode({"out": x}, conf=0.25, agnostic=True).class_ids.tolist() == [0]
    undeclared = ModelMeta.from_json({k: v for k, v in meta.to_json().items() if k != "nms"}, meta.labels)
    assert Decoder(undeclared).decode({"out": x}, conf=0.25).class_ids.tolist() == [0]
