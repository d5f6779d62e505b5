"""The family and target registries: lookup, dispatch, errors, and that nothing branches on a name."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_path
from edgeq.errors import EdgeqError, HeadNotFoundError
from edgeq.export import TARGETS, get_target, target_for_file
from edgeq.export.base import Target
from edgeq.families import FAMILIES, discover_head, family_for, get_family, head_decoder
from edgeq.families.base import HeadFamily
from edgeq.graph.load import load_model
from edgeq.meta.schema import ModelMeta, Output

SRC = Path(__file__).resolve().parents[1] / "src" / "edgeq"


def test_every_registered_family_and_target_implements_its_interface():
    assert set(FAMILIES) == {"yolov8-obb", "yolov8-pose", "yolov8", "yolov5", "classify", "semantic", "yolo26", "yolox"}
    for name, family in FAMILIES.items():
        assert isinstance(family, HeadFamily) and family.name == name
        assert family.nms in ("class_aware", "class_agnostic") and 0 < family.iou <= 1
    for name in TARGETS:
        target = get_target(name)
        assert isinstance(target, Target) and target.name == name and target.suffix.startswith(".")
        assert target.constraints("Concat").rule.value == "shared"


def test_unknown_names_are_clear_errors():
    with pytest.raises(EdgeqError, match="unknown target 'coreml'") as info:
        get_target("coreml")
    assert "tflite" in info.value.fix
    with pytest.raises(EdgeqError, match="unknown head family 'detr'"):
        get_family("detr")


def test_target_for_file_goes_by_suffix():
    assert target_for_file(Path("m.tflite")).name == "tflite"
    assert target_for_file(Path("m.TFLITE")).name == "tflite"
    assert target_for_file(Path("m.onnx")) is None


@pytest.mark.parametrize("model,family", [("yolov8n.onnx", "yolov8"), ("yolov8n-seg.onnx", "yolov8"), ("yolov5n.onnx", "yolov5")])
def test_discovery_goes_through_the_registry(model, family):
    m = load_model(shared_path("models", model))
    head = discover_head(m.model, m.info)
    assert head.family == family
    others = [f for f in FAMILIES.values() if f.name != family]
    assert all(f.discover(m.model, m.info) is None for f in others)  # each family claims only its own


def test_a_graph_no_family_recognises_names_every_family(headless_onnx):
    m = load_model(headless_onnx)
    with pytest.raises(HeadNotFoundError, match="tried yolov8-obb, .*yolov8, yolov5"):
        discover_head(m.model, m.info)


def _per_scale(encoding: str) -> ModelMeta:
    child = Output("b0", "boxes", [1, 80, 80, 4], stride=8, dtype="float32")
    boxes = Output("boxes", "boxes", [1, 4, 6400], encoding=encoding, children=[child])
    scores = Output("scores", "scores", [1, 2, 6400], children=[Output("s0", "scores", [1, 80, 80, 2], stride=8, dtype="float32")])
    return ModelMeta("yolov8", "detect", ["a", "b"], [1, 640, 640, 3], "nhwc", [boxes, scores])


def test_decoders_are_chosen_by_the_metadata_alone():
    assert family_for(_per_scale("dfl")).name == "yolov8"
    assert family_for(_per_scale("ltrb")).name == "yolov8"
    flat = ModelMeta("yolov8", "detect", ["a"], [1, 640, 640, 3], "nhwc", [Output("d", "detection", [1, 5, 8400])])
    assert family_for(flat) is None
    assert type(head_decoder(flat, {})).__name__ == "FlatHead"


def test_pipeline_runtime_and_analysis_never_branch_on_a_family_or_target_name():
    """The registries are the only place a family or target is named (onnxruntime-style)."""
    names = set(FAMILIES) | set(TARGETS)
    offenders = []
    for rel in ("pipeline.py", "prepare.py", "runtime/artifact.py", "runtime/decoder.py", "analysis/analyze.py",
                "quant/build.py", "quant/mixed.py", "quant/sensitivity.py", "quant/guard.py"):
        tree = ast.parse((SRC / rel).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value in names
                                                     for c in [node.left, *node.comparators]):
                offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, offenders


def test_family_decoded_errors_measure_noise_against_the_float_outputs():
    m = load_model(shared_path("models", "yolov8n.onnx"))
    head = discover_head(m.model, m.info)
    rng = np.random.default_rng(0)
    ref = {e.name: rng.normal(size=e.shape).astype(np.float32) for e in head.endpoints}
    noisy = {k: v + 0.1 for k, v in ref.items()}
    kinds = {k: noise for k, noise, _ in get_family("yolov8").decoded_errors(ref, noisy, head)}
    assert set(kinds) == {"scores", "boxes"} and all(v > 0 for v in kinds.values())
    assert all(n == 0 for _, n, _ in get_family("yolov8").decoded_errors(ref, ref, head))


@pytest.mark.parametrize("task,detection,segmentation", [
    ("detect", True, False), ("segment", True, True), ("pose", True, False), ("obb", True, False),
    ("classify", False, False), ("semantic", False, True),
])
def test_metadata_says_which_tasks_give_boxes_and_masks(task, detection, segmentation):
    meta = ModelMeta("yolov8", task, ["a"], [1, 640, 640, 3], "nhwc", [Output("d", "detection", [1, 5, 8400])])
    model = meta.to_json()["model"]
    assert (model["detection"], model["segmentation"]) == (detection, segmentation)
