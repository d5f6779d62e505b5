"""edgeq: smart INT8 quantization of YOLO models into self-describing edge artifacts.

    import edgeq
    edgeq.convert("yolov8n.onnx", "calib/", "yolov8n.tflite")
    dets = edgeq.load("yolov8n.tflite").predict("bus.jpg")
    edgeq.validate(edgeq.load("yolov8n.tflite"), "val/instances.json", "val/images")
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "convert": ("edgeq.pipeline", "convert"),
    "ConvertConfig": ("edgeq.config", "ConvertConfig"),
    "load": ("edgeq.runtime", "load"),
    "validate": ("edgeq.eval", "validate"),
    "inspect": ("edgeq.inspect", "inspect_path"),
}


def __getattr__(name: str) -> Any:
    """Import the API lazily: `import edgeq` stays fast and pulls no runtime it does not need."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'edgeq' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
