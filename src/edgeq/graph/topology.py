"""Read-only views of an ONNX graph: producers, consumers, shapes, constants."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper


@dataclass
class Topology:
    """Index of a graph's data flow, built once and queried by the discovery and cut passes."""

    graph: onnx.GraphProto
    producer: dict[str, onnx.NodeProto]
    consumers: dict[str, list[onnx.NodeProto]]
    shapes: dict[str, tuple[int, ...]]
    constants: dict[str, onnx.TensorProto]

    @classmethod
    def of(cls, model: onnx.ModelProto) -> "Topology":
        g = model.graph
        producer = {o: n for n in g.node for o in n.output if o}
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        shapes: dict[str, tuple[int, ...]] = {}
        for vi in [*g.input, *g.value_info, *g.output]:
            dims = vi.type.tensor_type.shape.dim
            if dims and all(d.HasField("dim_value") for d in dims):
                shapes[vi.name] = tuple(d.dim_value for d in dims)
        constants = {t.name: t for t in g.initializer}
        for n in g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                constants[n.output[0]] = n.attribute[0].t
        return cls(g, producer, consumers, shapes, constants)

    def const(self, name: str) -> np.ndarray | None:
        t = self.constants.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def rank(self, name: str) -> int | None:
        s = self.shapes.get(name)
        return None if s is None else len(s)

    def ancestors(self, tensors: list[str]) -> list[onnx.NodeProto]:
        """Nodes that ``tensors`` depend on, in graph (topological) order."""
        seen: set[str] = set()
        stack = list(tensors)
        keep: set[int] = set()
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            node = self.producer.get(t)
            if node is not None and id(node) not in keep:
                keep.add(id(node))
                stack.extend(i for i in node.input if i)
        return [n for n in self.graph.node if id(n) in keep]
