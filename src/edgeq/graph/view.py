"""A read-only view of a static ONNX graph: folded constants, static shapes, producers/consumers.

Both the planner and the TFLite writer need to tell activations from constants and to know every
tensor's static shape; this module does it once. Nodes whose inputs are all constant (``Constant``
nodes, shape arithmetic feeding ``Resize``/``Reshape``) are evaluated with ONNX's reference
evaluator and become constants, so later stages only see real activation nodes.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from edgeq.errors import ModelError

# Ops whose result is not a pure function of their inputs are never folded.
_NON_FOLDABLE = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}


def node_label(node: onnx.NodeProto, index: int) -> str:
    """A readable node identifier for messages: its name, or op type and position."""
    return node.name or f"{node.op_type}#{index}"


class GraphView:
    """Static facts about one ONNX model (the model itself is not modified).

    Attributes:
        nodes: the non-constant nodes, in topological (file) order.
        consts: constant tensor name -> value (initializers and folded node outputs).
        shapes: every tensor name -> static shape.
        dtypes: every tensor name -> numpy dtype.
        inputs / outputs: graph input names (excluding initializers) / graph output names.
        opset: the default-domain opset version.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        self.inputs = [i.name for i in g.input if i.name not in self.consts]
        self.outputs = [o.name for o in g.output]
        self.nodes: list[onnx.NodeProto] = []
        self._labels: dict[int, str] = {}
        for i, node in enumerate(g.node):
            if self._foldable(node):
                self._fold(node, model)
            else:
                self._labels[id(node)] = node_label(node, i)
                self.nodes.append(node)
        self.shapes, self.dtypes = self._infer_shapes(model)
        self.producer: dict[str, onnx.NodeProto] = {o: n for n in self.nodes for o in n.output if o}
        consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in self.nodes:
            for name in dict.fromkeys(i for i in n.input if i):
                consumers[name].append(n)
        self.consumers = dict(consumers)

    # -- queries -----------------------------------------------------------------------------
    def label(self, node: onnx.NodeProto) -> str:
        """The node's name (or op type and index) for messages."""
        return self._labels[id(node)]

    def is_const(self, name: str) -> bool:
        return name in self.consts

    def activations(self) -> list[str]:
        """Graph inputs and every float node output, in topological order."""
        names = list(self.inputs)
        for n in self.nodes:
            names.extend(o for o in n.output if o and np.issubdtype(self.dtypes[o], np.floating))
        return names

    @staticmethod
    def attrs(node: onnx.NodeProto) -> dict[str, Any]:
        """Node attributes as Python values (strings decoded)."""
        out = {}
        for a in node.attribute:
            v = helper.get_attribute_value(a)
            out[a.name] = v.decode() if isinstance(v, bytes) else v
        return out

    # -- construction helpers --------------------------------------------------------------------
    def _foldable(self, node: onnx.NodeProto) -> bool:
        if node.op_type in _NON_FOLDABLE or node.domain not in ("", "ai.onnx"):
            return False
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            return False
        return all(i in self.consts for i in node.input if i)

    def _fold(self, node: onnx.NodeProto, model: onnx.ModelProto) -> None:
        names = [i for i in node.input if i]
        graph = helper.make_graph(
            [node], "fold", [],
            [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o],
            [numpy_helper.from_array(self.consts[n], n) for n in names],
        )
        sub = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
        results = ReferenceEvaluator(sub).run(None, {})
        for name, value in zip([o for o in node.output if o], results):
            self.consts[name] = np.asarray(value)

    def _infer_shapes(self, model: onnx.ModelProto) -> tuple[dict[str, tuple[int, ...]], dict[str, np.dtype]]:
        g = model.graph
        used = {i for n in self.nodes for i in n.input if i} | set(self.outputs)
        init = [numpy_helper.from_array(v, k) for k, v in self.consts.items() if k in used]
        graph = helper.make_graph(
            self.nodes, g.name or "graph", [i for i in g.input if i.name not in self.consts],
            list(g.output), init,
        )
        slim = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
        try:
            inferred = onnx.shape_inference.infer_shapes(slim, strict_mode=True, data_prop=True)
        except Exception as exc:  # onnx raises several exception types here
            raise ModelError(f"ONNX shape inference failed: {exc}", "export the model with static shapes") from exc
        shapes: dict[str, tuple[int, ...]] = {}
        dtypes: dict[str, np.dtype] = {}
        ig = inferred.graph
        for vi in list(ig.input) + list(ig.value_info) + list(ig.output):
            t = vi.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            if t.HasField("shape") and all(d >= 0 for d in dims):
                shapes[vi.name] = tuple(int(d) for d in dims)
            if t.elem_type:
                dtypes[vi.name] = helper.tensor_dtype_to_np_dtype(t.elem_type)
        for k, v in self.consts.items():
            shapes[k], dtypes[k] = tuple(v.shape), v.dtype
        for n in self.nodes:
            for o in n.output:
                if o and (o not in shapes or o not in dtypes):
                    raise ModelError(
                        f"tensor {o!r} (output of {n.op_type} node {self.label(n)!r}) has no static shape",
                        "export the ONNX model with a fixed input size and batch 1",
                    )
        return shapes, dtypes
