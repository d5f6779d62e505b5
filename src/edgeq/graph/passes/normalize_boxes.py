"""Make a monolithic YOLOv8 output carry boxes in [0, 1] instead of input pixels.

With one INT8 scale for ``[1, 4+nc(+32), N]``, pixel boxes (0..640) would leave the class scores
(0..1) a single code; upstream exporters divide the boxes by the input size first. The decode
tail ends with ``Mul(dist2bbox, strides)`` feeding the final Concat; dividing that stride
constant by the input size does exactly that division, with no extra op.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgeq.graph.topology import Topology


def normalize_boxes(model: onnx.ModelProto, imgsz: tuple[int, int]) -> bool:
    """Rescale the stride constant in place; returns True if the pattern was found."""
    topo = Topology.of(model)
    main = model.graph.output[0].name
    final = topo.producer.get(main)
    if final is None or final.op_type != "Concat":
        return False
    mul = topo.producer.get(final.input[0])
    if mul is None or mul.op_type != "Mul":
        return False
    for idx, name in enumerate(mul.input):
        strides = topo.const(name)
        if strides is not None and strides.size > 1 and set(np.unique(strides)) <= {8, 16, 32, 64, 128}:
            scaled = (strides / np.float32(imgsz[0])).astype(np.float32)
            new_name = f"{name}_normalized"
            model.graph.initializer.append(numpy_helper.from_array(scaled, new_name))
            mul.input[idx] = new_name
            return True
    return False
