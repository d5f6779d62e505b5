"""edgeq: smart INT8 quantization of YOLO models into self-describing edge artifacts."""
from __future__ import annotations

__version__ = "0.1.0"
