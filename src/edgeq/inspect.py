"""``edgeq inspect``: what an artifact contains, or what head an ONNX model has."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeq.errors import EdgeqError


def _onnx_report(path: Path) -> dict[str, Any]:
    from edgeq.families import discover_head
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
    from edgeq.meta.verify import verify_tflite

    if path.suffix.lower() == ".tflite":  # the metadata alone says nothing about the model bytes
        verify_tflite(path)
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
    if path.suffix.lower() == ".onnx" and not _has_edgefirst_props(path):
        return _onnx_report(path)
    return _artifact_report(path)


def _has_edgefirst_props(path: Path) -> bool:
    """An ONNX artifact carries schema-v2 metadata in ``metadata_props['edgefirst']``."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # unreadable: let the ONNX path report it clearly
        return False
    return any(p.key == "edgefirst" for p in model.metadata_props)
