"""Mixed precision: unit closures, budgeted selection, and int16-promoted artifacts in LiteRT."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from conftest import shared_path
from edgeq.config import ConvertConfig
from edgeq.errors import EdgeqError
from edgeq.pipeline import convert
from edgeq.runtime import load
from edgeq.export.tflite.constraints import TFLITE
from edgeq.quant.mixed import Candidate, choose_int16, closure, expand_names, promotion_units

CALIB_N = 2
CONV1 = "/model.1/conv/Conv_output_0"
SILU1 = ("/model.1/act/Sigmoid_output_0", "/model.1/act/Mul_output_0")
SPPF_CV1 = "/model.9/cv1/conv/Conv_output_0"  # small (20x20): its closure is ~0.9% of the elements
SPPF_SILU = ("/model.9/cv1/act/Sigmoid_output_0", "/model.9/cv1/act/Mul_output_0")
BUDGET = 3.5  # the outputs (2.2%) + the explicit closure (0.9%) + a little sensitivity fill


@pytest.fixture(scope="module")
def promoted(tmp_path_factory):
    """One conversion for both paths: an explicit name plus a budget filled by sensitivity."""
    out = tmp_path_factory.mktemp("mixed") / "yolov8n-int16.tflite"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("edgeq.quant.mixed.SENSITIVITY_IMAGES", 1)  # one image keeps the test fast
        return convert(shared_path("models", "yolov8n.onnx"), shared_path("coco-calib"), out,
                       ConvertConfig(calib_count=CALIB_N, int16=(SPPF_CV1,), int16_budget=BUDGET), progress=False)


def _outputs(meta: dict) -> list[dict]:
    """The physical outputs of schema-v2 metadata (children of logical outputs, or the outputs)."""
    return [c for o in meta["outputs"] for c in (o.get("outputs") or [o])]


def _details(path) -> dict[str, dict]:
    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    return {d["name"]: d for d in interp.get_tensor_details()}


def test_explicit_int16_artifact_is_valid_fully_integer_and_int16(promoted):
    details = _details(promoted.path)
    dtypes = {np.dtype(d["dtype"]).name for d in details.values()}
    assert "float32" not in dtypes
    # the named conv output and the ops reading it (SiLU) compute in 16x8
    for name in (SPPF_CV1, *SPPF_SILU):
        assert np.dtype(details[name]["dtype"]).name == "int16", name
        assert details[name]["quantization"][1] == 0, "int16 activations are symmetric"
    meta = json.loads(zipfile.ZipFile(promoted.path).read("edgefirst.json"))
    mp = meta["edgeq"]["mixed_precision"]
    assert set(mp["int16"]) >= {SPPF_CV1, *SPPF_SILU} and mp["explicit"] == [SPPF_CV1]
    assert all(np.dtype(details[n]["dtype"]).name == "int16" for n in mp["int16"])
    assert set(promoted.plan.notes["planner"]["int16_tensors"]) == set(mp["int16"])
    outputs = {o["name"]: np.dtype(details[o["name"]]["dtype"]).name for o in _outputs(meta)}
    assert meta["edgeq"]["output_dtype"] == "+".join(sorted(set(outputs.values())))
    # int8 readers of an int16 tensor use its calibrated int8 parameters (SiLU output: asymmetric)
    views = [d for n, d in details.items() if n.endswith("/requant") and n[: -len("/requant")] in mp["int16"]
             and np.dtype(d["dtype"]).name == "int8"]
    assert views and any(d["quantization"][1] != 0 for d in views)
    for n, d in ((n, d) for n, d in details.items() if n.endswith("/requant")):
        src = n[: -len("/requant")]
        if src in promoted.plan.int8_views and np.dtype(d["dtype"]).name == "int8":
            assert d["quantization"][0] == pytest.approx(float(promoted.plan.int8_views[src].scale[0]))


def test_budget_puts_the_outputs_in_int16_first_and_the_artifact_decodes(promoted):
    interp = Interpreter(model_path=str(promoted.path))
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    rng = np.random.default_rng(0)
    interp.set_tensor(inp["index"], rng.integers(0, 256, size=inp["shape"], dtype=np.uint8))
    interp.invoke()
    outs = interp.get_output_details()
    assert all(o["dtype"] == np.int16 for o in outs)  # the budget covers them: they go first
    assert all(o["quantization"][1] == 0 for o in outs)
    assert any(np.ptp(interp.get_tensor(o["index"])) > 255 for o in outs)  # 16-bit codes in use
    meta = json.loads(zipfile.ZipFile(promoted.path).read("edgefirst.json"))
    assert meta["edgeq"]["mixed_precision"]["outputs_int16"] is True
    for o in _outputs(meta):
        assert o["dtype"] == "int16" and o["quantization"]["dtype"] == "int16"
    # int16 outputs decode to the float model's detections (the outputs' own rounding is gone)
    image = shared_path("coco-val-dev", "images", "000000000139.jpg")
    got = load(promoted.path).predict(image, conf=0.25)
    ref = load(shared_path("models", "yolov8n.onnx")).predict(image, conf=0.25)
    assert len(got.scores) > 3 and abs(len(got.scores) - len(ref.scores)) <= 2


def test_budget_selects_within_budget_and_records_it(promoted):
    mp = promoted.meta.edgeq["mixed_precision"]
    assert mp["budget_percent"] == BUDGET and mp["selection"] == "sensitivity" and mp["sensitivity_images"] == 1
    assert mp["budget_unit"] == "activation elements"
    assert 3.1 < mp["elements_percent"] <= BUDGET  # outputs + the explicit closure count against it
    assert mp["units"] and mp["candidates"] >= len(mp["units"])
    assert all(u["name"] in mp["int16"] for u in mp["units"])


def test_choose_int16_respects_budget_and_prefers_noise():
    elements = {"a": 10, "b": 10, "c": 50, "d": 30}
    cands = [
        Candidate(("a",), 1.0, ("a",)),
        Candidate(("b",), 0.5, ("b", "a")),  # shares a with the first: cheaper once a is in
        Candidate(("c",), 3.0, ("c",)),
        Candidate(("d",), 0.1, ("d",)),
    ]
    sel = choose_int16(cands, 25, elements)  # 25 of 100 elements
    assert sel.elements <= 25 and set(sel.tensors) == {"a", "b"}
    assert sel.removed_noise == pytest.approx(1.5)
    sel = choose_int16(cands, 60, elements)
    assert "c" in sel.tensors and sel.elements <= 60
    assert choose_int16(cands, 0, elements).tensors == ()
    with pytest.raises(EdgeqError):
        choose_int16(cands, -1, elements)


def test_closure_and_explicit_names(promoted):
    graph = promoted.graph
    params = promoted.plan.activations
    # plan the int8 graph again to get int8 units
    units = promotion_units(graph, {n: p for n, p in params.items()}, TFLITE)
    unit = next(u for u in units if CONV1 in u)
    assert set(closure(unit, graph, units)) >= {CONV1, *SILU1}
    assert expand_names([CONV1], units, graph)[:3] == [CONV1, *SILU1]
    with pytest.raises(EdgeqError, match="not an activation"):
        expand_names(["/model.1/conv/Conv_output_9"], units, graph)
    with pytest.raises(EdgeqError, match="graph input"):
        expand_names([graph.graph.input[0].name], units, graph)
    assert expand_names(["scores_0"], units, graph) == ["scores_0"]  # outputs may be int16
    # the last head conv's input: its closure is the conv's output, the artifact output itself
    last = next(n.input[0] for n in graph.graph.node if "scores_0" in n.output)
    assert set(expand_names([last], units, graph)) >= {last, "scores_0"}
