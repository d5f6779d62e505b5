"""Direct ONNX -> fully-integer TFLite writer (no TensorFlow).

Public API: :func:`write_tflite`, :func:`validate`, :class:`TFLiteResult`, :class:`TensorInfo`.
The op registry lives in :mod:`edgeq.export.tflite.ops` (one handler class per ONNX op), the
quantization rules it obeys in :mod:`edgeq.quant.constraints`.

Modules: ``onnx_graph`` (constant folding, static shapes), ``layout`` (per-tensor axis
permutations, NHWC for 4-D), ``builder`` (the conversion context: inserts and caches TRANSPOSE
and requantizing QUANTIZE ops), ``ops`` (handlers), ``options`` (builtin-options tables),
``flatbuf`` (in-memory model and deterministic serialization), ``writer`` (entry point).

Not supported (raises :class:`~edgeq.errors.UnsupportedOpError`): ops outside the registry (e.g.
Relu, Clip, HardSwish, Gemm, pooling other than MaxPool, reductions); MatMul of constants only
or of rank-1 / rank > 5 operands; grouped Conv other
than depthwise; ConvTranspose with groups, dilation, output_padding or padding that TFLite's
VALID/SAME cannot express; Resize other than nearest/asymmetric/floor with integer factors on H
and W; Slice with non-positive steps; Div by an activation; Pow other than x**2; broadcasting
between activations of different ranks; MaxPool with dilation, indices or a size-changing
ceil_mode; non-constant Pad modes; plans that leave tensors in float.
"""
from edgeq.export.tflite.writer import TensorInfo, TFLiteResult, validate, write_tflite

__all__ = ["TFLiteResult", "TensorInfo", "validate", "write_tflite"]
