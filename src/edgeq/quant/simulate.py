"""Fake-quantized execution of a float ONNX graph under a :class:`QuantPlan`, node by node.

Each node runs as its own small onnxruntime session; every activation it produces is rounded
and clipped to its planned integer grid (``dequantize(quantize(x))``) and weights are replaced
by their dequantized per-channel INT8 values. That is what the TFLite integer kernels compute,
up to their fixed-point rounding: a conv accumulates exactly and requantizes once, LOGISTIC is
a table of the dequantized input, a concat requantizes each input to the output's parameters
(equal to fake-quantizing the concatenated result), data movement copies codes.

Running node by node (rather than one session with QuantizeLinear/DequantizeLinear pairs)
lets a caller look at, and change, each node before the next one runs: sequential bias
correction needs exactly that. Values are freed after their last consumer, so memory stays
at the live set of the graph, per image.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from edgeq.graph.view import GraphView
from edgeq.quant.plan import QParams, QuantPlan

#: op type -> index of the weight input whose per-channel INT8 values the kernel uses.
WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1}


def fake_quant(x: np.ndarray, p: QParams) -> np.ndarray:
    """Round ``x`` to the integer grid of ``p`` and back (saturating), in float32."""
    return p.dequantize(p.quantize(x))


class NodeSession:
    """One ONNX node as an onnxruntime session.

    Constant inputs are baked in, except those named in ``fed`` (given at each call, e.g. a
    conv's weights and bias, so the float and quantized runs share one session).
    """

    def __init__(self, view: GraphView, node: onnx.NodeProto, opset: int, fed: Sequence[str] = ()) -> None:
        self.inputs = [i for i in node.input if i and (not view.is_const(i) or i in fed)]
        baked = [numpy_helper.from_array(np.asarray(view.consts[i]), i)
                 for i in dict.fromkeys(node.input) if i and view.is_const(i) and i not in fed]
        graph = helper.make_graph(
            [node], "node",
            [helper.make_tensor_value_info(i, _elem(view, i), None) for i in self.inputs],
            [helper.make_tensor_value_info(o, _elem(view, o), None) for o in node.output if o],
            baked,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        # hundreds of one-node sessions: an arena each would keep every conv's workspace alive
        opts.enable_cpu_mem_arena = False
        opts.enable_mem_pattern = False
        self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self.outputs = [o for o in node.output if o]

    def __call__(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.session.run(self.outputs, {i: values[i] for i in self.inputs})
        return dict(zip(self.outputs, results))


def _elem(view: GraphView, name: str) -> int:
    dtype = view.dtypes.get(name, np.dtype(np.float32))
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def quantized_weights(view: GraphView, plan: QuantPlan) -> dict[str, np.ndarray]:
    """Every planned weight as the dequantized INT8 values the kernels multiply with."""
    return {n: p.dequantize(p.quantize(view.consts[n].astype(np.float32))) for n, p in plan.weights.items()
            if n in view.consts}


class LiveValues:
    """Values of one run (one image), freed after their last consumer.

    With ``grids``, a value on a planned integer grid is stored as its integer codes (a quarter
    of float32) and dequantized when read, which gives back exactly the fake-quantized value;
    ``half`` stores the other values as float16. Both only save memory when many runs are
    kept side by side (bias correction keeps every calibration image at the same node).
    """

    def __init__(self, view: GraphView, grids: Mapping[str, QParams] | None = None, half: bool = False) -> None:
        self._stored: dict[str, Any] = {}
        self.grids = grids or {}
        self.half = half
        self.remaining = {n: len(c) for n, c in view.consumers.items()}
        self.keep = set(view.outputs)

    def __contains__(self, name: str) -> bool:
        return name in self._stored

    def __getitem__(self, name: str) -> np.ndarray:
        v = self._stored[name]
        if isinstance(v, tuple):
            return v[1].dequantize(v[0])
        return v.astype(np.float32) if v.dtype == np.float16 else v

    def __setitem__(self, name: str, value: np.ndarray) -> None:
        grid = self.grids.get(name)
        if grid is not None:
            self._stored[name] = (grid.quantize(value), grid)
        elif self.half and value.dtype == np.float32:
            self._stored[name] = value.astype(np.float16)
        else:
            self._stored[name] = value

    def inputs_of(self, node: onnx.NodeProto) -> dict[str, np.ndarray]:
        return {i: self[i] for i in node.input if i in self}

    def release(self, node: onnx.NodeProto) -> None:
        for i in dict.fromkeys(x for x in node.input if x in self):
            self.remaining[i] -= 1
            if self.remaining[i] == 0 and i not in self.keep:
                del self._stored[i]


def fed_params(node: onnx.NodeProto) -> list[str]:
    """The constant inputs given at each call: a conv's weights and bias."""
    return [i for i in node.input[1:3] if i] if node.op_type in WEIGHT_INPUT else []


def sessions(view: GraphView, opset: int) -> dict[int, NodeSession]:
    """A session per node (keyed by ``id(node)``); conv weights and biases are fed at each call."""
    return {id(node): NodeSession(view, node, opset, fed_params(node)) for node in view.nodes}


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)


def simulate(model: onnx.ModelProto, plan: QuantPlan, inputs: Sequence[np.ndarray],
             keep: Sequence[str] = ()) -> list[dict[str, np.ndarray]]:
    """The fake-quantized graph outputs (and the tensors in ``keep``) for each float NCHW input."""
    view = GraphView(model)
    runs = sessions(view, opset_of(model))
    params = {**view.consts, **quantized_weights(view, plan)}
    results = []
    for x in inputs:
        live = LiveValues(view)
        live.keep.update(keep)
        live[view.inputs[0]] = fake_quant(x, plan.activations[view.inputs[0]])
        for node in view.nodes:
            values = {**live.inputs_of(node), **{i: params[i] for i in fed_params(node)}}
            for name, v in runs[id(node)](values).items():
                live[name] = fake_quant(v, plan.activations[name]) if name in plan.activations else v
            live.release(node)
        results.append({o: live[o] for o in [*view.outputs, *keep]})
    return results


__all__ = ["LiveValues", "NodeSession", "WEIGHT_INPUT", "fake_quant", "fed_params", "opset_of", "quantized_weights", "sessions", "simulate"]
