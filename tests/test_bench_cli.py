"""`edgeq bench` end to end: latency table and per-op profile for an ONNX model and a TFLite artifact."""
from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from edgeq.cli import app

runner = CliRunner()


def _bench(model: Path, tmp_path: Path, *extra: str) -> tuple[str, dict]:
    out = tmp_path / "bench.json"
    res = runner.invoke(app, ["bench", str(model), "--runs", "2", "--warmup", "1", "--threads", "1", "--top", "5", "--json", str(out), *extra])
    assert res.exit_code == 0, res.output
    return res.output, json.loads(out.read_text())


def test_bench_onnx(yolov8n_onnx: Path, tmp_path: Path) -> None:
    text, report = _bench(yolov8n_onnx, tmp_path)
    for word in ("preprocess", "inference", "decode", "total", "per-op profile", "onnxruntime", "Conv"):
        assert word in text
    lat, prof = report["latency"], report["profile"]
    assert lat["backend"] == "onnx" and lat["runs"] == 2
    assert set(lat["stages"]) >= {"preprocess", "inference", "decode", "total"}
    assert prof["by_type"][0]["op_type"] == "Conv"  # convolutions dominate YOLOv8n
    assert len(prof["by_node"]) > 50


def test_bench_tflite(edgefirst_seg_smart: Path, val_dev: Path, tmp_path: Path) -> None:
    text, report = _bench(edgefirst_seg_smart, tmp_path, "--images", str(val_dev / "images"), "--max-images", "2")
    for word in ("masks", "litert-xnnpack", "Convolution"):
        assert word in text
    lat, prof = report["latency"], report["profile"]
    assert lat["backend"] == "tflite" and "masks" in lat["stages"]
    assert lat["images"].startswith("2 from")
    types = {s["op_type"] for s in prof["by_type"]}
    assert "QUANTIZE" in types and any(t.startswith("xnnpack/") for t in types)


def test_bench_no_profile_and_errors(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["bench", str(tmp_path / "nope.tflite"), "--no-profile"])
    assert missing.exit_code == 2 and "not found" in missing.output
    bad = runner.invoke(app, ["bench", str(tmp_path / "x.onnx"), "--kernels", "gpu"])
    assert bad.exit_code == 2
