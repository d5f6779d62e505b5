"""Cut a graph at the head endpoints: each endpoint becomes its own output, the tail is dropped."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeq.graph.heads import HeadSpec
from edgeq.graph.topology import Topology


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, t in enumerate(node.input):
            if t == old:
                node.input[i] = new
        for i, t in enumerate(node.output):
            if t == old:
                node.output[i] = new


def cut_at_head(model: onnx.ModelProto, head: HeadSpec) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are the head endpoints, named as the endpoints are.

    Everything the endpoints do not depend on (the decode tail: concat, DFL, dist2bbox,
    sigmoid) is removed, along with initializers that only the tail used. Endpoints that take
    some ``channels`` of a Conv output get their own Conv (the matching output-channel rows of
    the weights and bias), which computes exactly those channels of the original.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    topo = Topology.of(out)
    whole = [e for e in head.endpoints if not e.channels]
    parts = [e for e in head.endpoints if e.channels]
    split_convs, split_inits = _split_convs(topo, parts)
    keep = topo.ancestors([e.tensor for e in whole] + [n.input[0] for n in split_convs])
    del g.node[:]
    g.node.extend(keep)
    g.node.extend(split_convs)
    used = {t for n in keep for t in n.input}
    kept_init = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept_init)
    g.initializer.extend(split_inits)
    del g.output[:]
    for e in head.endpoints:
        if e.tensor != e.name and not e.channels:
            _rename(g, e.tensor, e.name)
        g.output.append(helper.make_tensor_value_info(e.name, onnx.TensorProto.FLOAT, list(e.shape)))
    produced = {t for n in keep for t in n.output}
    vis = [v for v in g.value_info if v.name in produced and v.name not in {e.name for e in head.endpoints}]
    del g.value_info[:]
    g.value_info.extend(vis)
    return out


def _split_convs(topo: Topology, parts: list) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """One Conv per channel-selecting endpoint: same input and attributes, weight/bias rows ``channels``."""
    nodes, inits = [], []
    for e in parts:
        conv = topo.producer.get(e.tensor)
        w = topo.const(conv.input[1]) if conv is not None and conv.op_type == "Conv" else None
        if w is None:
            raise ValueError(f"endpoint {e.name!r} selects channels of {e.tensor!r}, which is not a Conv with constant weights")
        rows = np.asarray(e.channels, np.int64)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w[rows]), f"{e.name}/weight"))
        inputs = [conv.input[0], f"{e.name}/weight"]
        if len(conv.input) > 2 and conv.input[2]:
            b = topo.const(conv.input[2])
            inits.append(numpy_helper.from_array(np.ascontiguousarray(b[rows]), f"{e.name}/bias"))
            inputs.append(f"{e.name}/bias")
        node = helper.make_node("Conv", inputs, [e.name], name=f"{e.name}/Conv")
        node.attribute.extend(conv.attribute)
        nodes.append(node)
    return nodes, inits
