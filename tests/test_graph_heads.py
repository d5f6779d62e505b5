"""Head discovery by structure on the shared models, and split-hint handling."""
from __future__ import annotations

import pytest

from conftest import shared_path
from edgeq.errors import HeadNotFoundError, ModelError
from edgeq.families import discover_head
from edgeq.graph.heads import apply_split_hints
from edgeq.graph.load import load_model


@pytest.fixture(scope="module")
def det():
    m = load_model(shared_path("models", "yolov8n.onnx"))
    return m, discover_head(m.model, m.info)


@pytest.fixture(scope="module")
def seg():
    m = load_model(shared_path("models", "yolov8n-seg.onnx"))
    return m, discover_head(m.model, m.info)


def test_detect_head_endpoints(det):
    _, head = det
    assert head.task == "detect" and head.nc == 80 and head.reg_max == 16
    assert head.strides == (8, 16, 32)
    assert [e.name for e in head.endpoints] == ["boxes_0", "boxes_1", "boxes_2", "scores_0", "scores_1", "scores_2"]
    assert [e.shape for e in head.of_kind("boxes")] == [(1, 64, 80, 80), (1, 64, 40, 40), (1, 64, 20, 20)]
    assert all(e.shape[1] == 80 for e in head.of_kind("scores"))


def test_segment_head_endpoints(seg):
    _, head = seg
    assert head.task == "segment" and head.nm == 32
    assert [e.shape[1] for e in head.of_kind("mask_coefs")] == [32, 32, 32]
    (protos,) = head.of_kind("protos")
    assert protos.shape == (1, 32, 160, 160) and protos.stride == 4


def test_edgefirst_graph_variant_is_found():
    m = load_model(shared_path("models", "yolov8n-edgefirst-graph.onnx"))
    head = discover_head(m.model, m.info)
    assert head.strides == (8, 16, 32) and len(head.endpoints) == 6


def test_yolov5_anchor_head_and_anchors_from_graph():
    m = load_model(shared_path("models", "yolov5n.onnx"))
    head = discover_head(m.model, m.info)
    assert head.family == "yolov5" and head.nc == 80 and head.strides == (8, 16, 32)
    # each level's Detect conv [1, 3*85, H, W] is described as three channel selections of it
    assert [e.name for e in head.endpoints] == [f"{k}_{i}" for k in ("boxes", "objectness", "scores") for i in range(3)]
    assert [e.shape[1] for e in head.endpoints] == [12] * 3 + [3] * 3 + [240] * 3
    assert [e.shape[2:] for e in head.of_kind("scores")] == [(80, 80), (40, 40), (20, 20)]
    assert [e.stride for e in head.of_kind("objectness")] == [8, 16, 32]
    boxes, obj, cls = (head.of_kind(k)[0] for k in ("boxes", "objectness", "scores"))
    assert boxes.tensor == obj.tensor == cls.tensor
    assert boxes.channels == (0, 1, 2, 3, 85, 86, 87, 88, 170, 171, 172, 173)
    assert obj.channels == (4, 89, 174)
    assert cls.channels == tuple(range(5, 85)) + tuple(range(90, 170)) + tuple(range(175, 255))
    # YOLOv5's default COCO anchors, read from the anchor_grid constants of the decode tail
    assert head.anchors[0] == ((10, 13), (16, 30), (33, 23))
    assert head.anchors[2] == ((116, 90), (156, 198), (373, 326))


def test_unknown_head_says_what_to_do(headless_onnx):
    m = load_model(headless_onnx)
    with pytest.raises(HeadNotFoundError) as e:
        discover_head(m.model, m.info)
    assert "--split combined" in str(e.value) and "graph outputs" in str(e.value)


def test_split_hints_rename_and_check(seg):
    _, head = seg
    hints = [{"type": "quantization_split", "target": "output0", "strides": [8, 16, 32],
              "boundaries": [{"name": "boxes", "channels": [0, 4]},
                             {"name": "scores", "channels": [4, 84], "activation": "sigmoid"},
                             {"name": "mask_coefs", "channels": [84, 116]}]}]
    assert apply_split_hints(head, hints) == head
    bad = [{**hints[0], "strides": [8, 16]}]
    with pytest.raises(HeadNotFoundError, match="strides"):
        apply_split_hints(head, bad)
    wrong = [{**hints[0], "boundaries": [{"name": "scores", "channels": [4, 90]}]}]
    with pytest.raises(HeadNotFoundError, match="matches no head branch"):
        apply_split_hints(head, wrong)
    assert apply_split_hints(head, [{"type": "decoder_offload"}]) == head


def test_non_onnx_file_is_rejected(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"this is not a protobuf \xff\xfe" * 10)
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        load_model(bad)
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "missing.onnx")
