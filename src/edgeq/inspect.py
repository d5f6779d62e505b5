"""``edgeq inspect``: what an artifact contains, or what head an ONNX model has."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeq.errors import EdgeqError


def _onnx_report(path: Path) -> dict[str, Any]:
    from edgeq.graph.heads import discover_head
    from edgeq.graph.load import load_model

    loaded = load_model(path)
    report: dict[str, Any] = {
        "path": str(path),
        "kind": "onnx",
        "task": loaded.info.task,
        "classes": loaded.info.nc,
        "input": list(loaded.info.imgsz),
    }
    try:
        head = discover_head(loaded.model, loaded.info)
        report["head"] = f"{head.family}, reg_max {head.reg_max}, strides {list(head.strides)}"
        report["outputs"] = [
            {"name": e.name, "type": e.kind, "shape": list(e.shape), "stride": e.stride, "tensor": e.tensor} for e in head.endpoints
        ]
    except EdgeqError as e:
        report["head"] = f"none found ({e.what}); --split combined still works"
    return report


def _artifact_report(path: Path) -> dict[str, Any]:
    from edgeq.meta.read import read_meta

    meta = read_meta(path)
    outputs = []
    for logical in meta.outputs:
        for p in logical.physical:
            q = p.quantization
            outputs.append({
                "name": p.name, "type": p.type, "shape": p.shape, "dtype": p.dtype, "stride": p.stride,
                "scale": None if q is None else q.scale, "zero_point": None if q is None else q.zero_point,
            })
    return {
        "path": str(path),
        "kind": path.suffix.lstrip(".") or "artifact",
        "task": meta.task,
        "decoder_version": meta.decoder_version,
        "classes": len(meta.labels),
        "input": meta.input_shape,
        "outputs": outputs,
        "provenance": meta.edgeq or None,
    }


def inspect_path(path: str | Path) -> dict[str, Any]:
    """A JSON-able summary of an artifact's metadata or an ONNX model's head."""
    path = Path(path)
    if not path.is_file():
        raise EdgeqError(f"file not found: {path}")
    if path.suffix.lower() == ".onnx":
        try:
            from edgeq.meta.read import read_meta

            meta = read_meta(path)
            if meta.raw.get("edgeq") or meta.raw.get("schema_version"):
                return _artifact_report(path)
        except EdgeqError:
            pass
        return _onnx_report(path)
    return _artifact_report(path)
