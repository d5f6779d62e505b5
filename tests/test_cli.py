"""The CLI is a thin layer: help teaches, errors are clear (exit 2, no traceback), commands work."""
from __future__ import annotations

import json

import cv2
import pytest
from typer.testing import CliRunner

from conftest import shared_path
from edgeq.cli import app

runner = CliRunner()


def test_help_lists_commands_and_convert_explains_options():
    out = runner.invoke(app, ["--help"]).output
    for cmd in ("convert", "predict", "validate", "inspect"):
        assert cmd in out
    conv = runner.invoke(app, ["convert", "--help"]).output
    assert "--calib" in conv and "smart" in conv and "combined" in conv


def test_predict_draws_detections(tmp_path, val_dev):
    image = sorted((val_dev / "images").glob("*.jpg"))[0]
    out = tmp_path / "pred.png"
    r = runner.invoke(app, ["predict", str(shared_path("models", "yolov8n.onnx")), str(image), "-o", str(out)])
    assert r.exit_code == 0, r.output
    drawn = cv2.imread(str(out))
    assert drawn is not None and drawn.shape == cv2.imread(str(image)).shape
    assert "person" in r.output or "chair" in r.output


def test_inspect_onnx_and_peer_artifact(edgefirst_seg_smart):
    r = runner.invoke(app, ["inspect", str(shared_path("models", "yolov8n-seg.onnx")), "--json"])
    rep = json.loads(r.output)
    assert r.exit_code == 0 and rep["task"] == "segment"
    assert [o["name"] for o in rep["outputs"]][-1] == "protos"
    r = runner.invoke(app, ["inspect", str(edgefirst_seg_smart), "--json"])
    rep = json.loads(r.output)
    assert rep["decoder_version"] == "yolov8" and len(rep["outputs"]) == 10


def test_validate_runs_a_few_images(val_dev, tmp_path):
    r = runner.invoke(app, ["validate", str(shared_path("models", "yolov8n.onnx")), "--data", str(val_dev / "instances.json"),
                            "--max-images", "3", "-q", "--report", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    assert "mAP50-95" in r.output and (tmp_path / "rep.md").is_file()


@pytest.mark.parametrize("args,needle", [
    (["convert", "{bad}", "--calib", "{calib}"], "not a valid ONNX model"),
    (["convert", "{model}", "--calib", "{tmp}/nowhere"], "calibration path not found"),
    (["convert", "{model}", "--calib", "{calib}", "--split", "diagonal"], "unknown --split 'diagonal'"),
    (["predict", "{tmp}/missing.tflite", "{bad}"], "not found"),
])
def test_errors_are_clear_and_exit_2(tmp_path, calib_dir, args, needle):
    bad = tmp_path / "bad.onnx"
    bad.write_text("not onnx")
    subst = dict(bad=bad, calib=calib_dir, model=shared_path("models", "yolov8n.onnx"), tmp=tmp_path)
    r = runner.invoke(app, [a.format(**subst) for a in args])
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output
    assert not list(tmp_path.glob("*.tflite"))
