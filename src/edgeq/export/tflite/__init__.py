"""Direct ONNX -> fully-integer TFLite writer (no TensorFlow).

Public API: :func:`write_tflite`, :class:`TFLiteResult`, :class:`TensorInfo`. The op registry
lives in :mod:`edgeq.export.tflite.ops`.
"""
from edgeq.export.tflite.writer import TensorInfo, TFLiteResult, validate, write_tflite

__all__ = ["TFLiteResult", "TensorInfo", "validate", "write_tflite"]
