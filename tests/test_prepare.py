"""The graph stage, and rebuilding the float graph an artifact was cut from out of its provenance."""
from __future__ import annotations

import pytest

from conftest import shared_path
from edgeq.errors import ArtifactError
from edgeq.graph.load import load_model
from edgeq.prepare import prepare, prepare_as_recorded


@pytest.fixture(scope="module")
def yolov8n():
    path = shared_path("models", "yolov8n.onnx")
    return path, load_model(path).info.source_sha256


def test_a_different_model_than_the_recorded_source_is_refused(yolov8n):
    path, _ = yolov8n
    prov = {"split": "smart", "source": {"file": "yolov8n-seg.onnx", "sha256": "ab" * 32}}
    with pytest.raises(ArtifactError, match="is not the model a.tflite was converted from") as info:
        prepare_as_recorded(path, prov, "a.tflite")
    assert "yolov8n-seg.onnx" in info.value.fix


def test_recorded_settings_shape_the_rebuilt_graph(yolov8n):
    path, sha = yolov8n
    source = {"file": path.name, "sha256": sha}
    plain = prepare_as_recorded(path, {"split": "smart", "source": source}, "a.tflite")
    equalized = prepare_as_recorded(path, {"split": "smart", "source": source, "config": {"equalize": True}}, "a.tflite")
    assert "equalize" in equalized.techniques and "equalize" not in plain.techniques
    combined = prepare_as_recorded(path, {"split": "combined", "source": source}, "a.tflite")
    assert combined.head is None and plain.head is not None


def test_recorded_split_hints_rename_the_outputs_again(yolov8n):
    path, sha = yolov8n
    hints = [{"type": "quantization_split", "strides": [8, 16, 32],
              "boundaries": [{"name": "head_boxes", "channels": [0, 4]}, {"name": "head_scores", "channels": [4, 84]}]}]
    direct = prepare(path, split_hints=hints)
    assert direct.techniques["split_hints"] == hints
    rebuilt = prepare_as_recorded(path, {"split": "smart", "split_hints": hints, "source": {"sha256": sha}}, "a.tflite")
    assert [o.name for o in rebuilt.graph.graph.output] == [o.name for o in direct.graph.graph.output]
    assert rebuilt.graph.graph.output[0].name == "head_boxes_0"


def test_unknown_recorded_split_is_an_artifact_error(yolov8n):
    with pytest.raises(ArtifactError, match="unknown split 'diagonal'"):
        prepare_as_recorded(yolov8n[0], {"split": "diagonal"}, "a.tflite")
