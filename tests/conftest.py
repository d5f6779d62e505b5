"""Shared fixtures: locate ../shared/data beside the repo; tests that need it skip with a reason."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGEQ_SHARED", REPO.parent / "shared")) / "data"


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with a clear reason when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not found: {p} (set EDGEQ_SHARED or put shared/ beside the repo)")
    return p


@pytest.fixture(scope="session")
def yolov8n_onnx() -> Path:
    return shared_path("models", "yolov8n.onnx")


@pytest.fixture(scope="session")
def yolov8n_seg_onnx() -> Path:
    return shared_path("models", "yolov8n-seg.onnx")


@pytest.fixture(scope="session")
def val_dev() -> Path:
    return shared_path("coco-val-dev")


@pytest.fixture(scope="session")
def calib_dir() -> Path:
    return shared_path("coco-calib")


@pytest.fixture(scope="session")
def edgefirst_seg_smart() -> Path:
    return shared_path("peers", "edgefirst", "yolov8n-seg-smart-int8.tflite")


@pytest.fixture
def headless_onnx(tmp_path) -> Path:
    """An ONNX model with an image input and no detection head at all (a single 3x3 conv)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["images", "w"], ["y"], pads=[1, 1, 1, 1])], "plain",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 64, 64])], [w])
    path = tmp_path / "headless.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path
